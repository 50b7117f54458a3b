"""Which request goes where, and the Kling endpoints' answers.

Every Kling call is authenticated, rate limited and exposed to the faults before its body is
read; the local routes (result files, stats) need no token.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from kling_expand_plugin.kling import limits
from kling_expand_plugin.localserver.errors import ApiError, invalid_parameter
from kling_expand_plugin.localserver.http_io import Dropped, EnvelopeHandler, envelope
from kling_expand_plugin.localserver.validation import (
    fetch_image_url,
    parse_json_object,
    validate_create,
)

log = logging.getLogger(__name__)

COLLECTION = "/v1/images/editing/expand"
RESULTS = "/local/results/"
STATS = "/local/stats"

ENDPOINTS = ("create", "query", "list", "results", "stats", "other")
"""The names requests are counted under in the stats."""

_HOST_HEADER = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class KlingHandler(EnvelopeHandler):
    """Answers one connection's requests for the LocalServer at `self.app`."""

    def _any_method(self) -> None:
        self._dispatch(self.command)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _any_method

    def do_HEAD(self) -> None:
        self.close_connection = True
        self._dispatch("HEAD")

    # Routing

    def _dispatch(self, method: str) -> None:
        try:
            self._unread = self._body_length()
            self._route(method)
        except Dropped:
            self.close_connection = True
        except ApiError as error:
            self._send_envelope(error.status, error.code, error.message, None)
        except Exception:
            log.exception("unexpected error answering %s %s", method, self.path)
            self.close_connection = True
            self._send_envelope(500, 5000, "internal error", None)
        finally:
            self._discard_unread()

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query, keep_blank_values=True)
        if path == STATS:
            self._local("stats", method, lambda: self._send_json(200, self.app.stats()))
        elif path.startswith(RESULTS):
            self._local("results", method, lambda: self._serve_result(path[len(RESULTS) :]))
        elif path == COLLECTION and method == "POST":
            self._kling("create", self._create)
        elif path == COLLECTION and method == "GET" and "external_task_id" in query:
            external = query["external_task_id"][0]
            self._kling("query", lambda _: self._query_external(external))
        elif path == COLLECTION and method == "GET":
            self._kling("list", lambda _: self._list(query))
        elif path.startswith(COLLECTION + "/") and "/" not in path[len(COLLECTION) + 1 :]:
            if method != "GET":
                self._refuse_method(method)
            task_id = unquote(path[len(COLLECTION) + 1 :])
            self._kling("query", lambda _: self._query_one(task_id))
        elif path == COLLECTION:
            self._refuse_method(method)
        else:
            self.app.count_request("other")
            raise ApiError(1202, 404, f"unknown path {parts.path!r}")

    def _refuse_method(self, method: str) -> None:
        self.app.count_request("other")
        raise ApiError(1202, 404, f"invalid method {method} for {urlsplit(self.path).path}")

    def _local(self, endpoint: str, method: str, answer: Callable[[], None]) -> None:
        if method not in ("GET", "HEAD"):
            self._refuse_method(method)
        self.app.count_request(endpoint)
        answer()

    # The Kling endpoints, with authentication, rate limit and faults

    def _kling(self, endpoint: str, action: Callable[[bytes], Any]) -> None:
        """Answer a Kling call; everything that can refuse it is checked before the body is read."""
        app = self.app
        app.count_request(endpoint)
        app.auth.check(self.headers.get("Authorization"))
        if not app.rate_limiter.allow() or app.faults.fires("throttle"):
            raise ApiError(1302, 429, "requests too fast: rate limit exceeded")
        server_error = app.faults.choose("server-error", (5000, 5001, 5002))
        if server_error == 5001:
            raise ApiError(5001, 503, "service under maintenance")
        if app.faults.fires("drop-before"):
            raise Dropped
        length = self._unread
        if not app.body_budget.reserve(length, app.body_wait):
            raise ApiError(5001, 503, "server busy: too many request bodies in memory; retry")
        try:
            body = self._read_body(length)
            try:
                status, code, message, data = 200, 0, "SUCCEED", action(body)
            except ApiError as error:
                status, code, message, data = error.status, error.code, error.message, None
        finally:
            app.body_budget.release(length)
        if server_error == 5000:
            status, code, message, data = 500, 5000, "internal error", None
        elif server_error == 5002:
            status, code, message, data = 504, 5002, "internal timeout", None
        if app.faults.fires("drop-after"):
            raise Dropped
        if endpoint == "create" and app.faults.fires("slow-create"):
            app.stopping.wait(app.slow_create_delay)
        if app.faults.fires("bad-json"):
            text = json.dumps(envelope(code, message, data)).encode()
            self._send_bytes(200, "application/json", text[: len(text) // 2])
            return
        self._send_envelope(status, code, message, data)

    def _create(self, body: bytes) -> dict[str, Any]:
        payload = parse_json_object(body)
        request = validate_create(
            payload, lambda url: fetch_image_url(url, timeout=self.app.fetch_timeout)
        )
        return self.app.store.create(request, self._base_url())

    def _query_one(self, task_or_external_id: str) -> Any:
        task = self.app.store.find(task_or_external_id)
        if task is None:
            raise ApiError(1203, 404, f"task {task_or_external_id!r} does not exist")
        return self._one_task(self.app.store.snapshot(task))

    def _query_external(self, external_task_id: str) -> Any:
        task = self.app.store.find_external(external_task_id)
        if task is None:
            raise ApiError(
                1203, 404, f"task with external_task_id {external_task_id!r} does not exist"
            )
        return self._one_task(self.app.store.snapshot(task))

    def _one_task(self, task: dict[str, Any]) -> Any:
        return [task] if self.app.query_shape == "list" else task

    def _list(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        page_num = _int_param(query, "pageNum", 1, limits.PAGE_NUM_RANGE)
        page_size = _int_param(query, "pageSize", 30, limits.PAGE_SIZE_RANGE)
        store = self.app.store
        return [store.snapshot(task) for task in store.page(page_num, page_size)]

    def _serve_result(self, rest: str) -> None:
        """Stream a result file; the broken-download fault announces it whole, sends half."""
        task_id, _, name = rest.partition("/")
        file = self.app.store.open_result(task_id, name)
        if file is None:
            raise ApiError(1203, 404, "result image does not exist or has expired")
        with file:
            size = os.fstat(file.fileno()).st_size
            send = size
            if self.app.faults.fires("broken-download"):
                self.close_connection = True
                send = size // 2
            self._send_file(file, "image/png", size, send)

    def _base_url(self) -> str:
        """The URL clients reach this server at: the Host header when it is well formed."""
        host = self.headers.get("Host", "")
        return f"http://{host}" if _HOST_HEADER.match(host) else self.app.url


def _int_param(
    query: dict[str, list[str]], name: str, default: int, bounds: tuple[int, int]
) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise invalid_parameter(f"{name} must be an integer") from None
    low, high = bounds
    if not low <= value <= high:
        raise invalid_parameter(f"{name} = {value} is outside {low}..{high}")
    return value
