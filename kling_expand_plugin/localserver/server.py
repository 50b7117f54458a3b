"""LocalServer: a Kling-compatible HTTP server on loopback, for offline use and for tests.

Routes:
- `POST /v1/images/editing/expand`: create a task.
- `GET /v1/images/editing/expand/{id}`: query one task by task_id or external_task_id; `data`
  is the task object (`query_shape="list"`: a list of one task, as the documentation shows).
- `GET /v1/images/editing/expand?external_task_id=X`: the same, by query string.
- `GET /v1/images/editing/expand?pageNum=&pageSize=`: list tasks, newest first.
- `GET /local/results/{task_id}/{name}.png`: result images (no token, like a CDN).
- `GET /local/stats`: counters for tests (no token).

Resources are bounded: at most `max_connections` connections are served at once (each on its
own thread; one more waits up to `connection_wait` seconds for a free one, then is answered
5001, HTTP 503, and closed); request bodies held in memory total at most `max_buffered_bytes`;
auth and Content-Length are checked before a body is read; results are streamed from files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from kling_expand_plugin.imaging.fill import METHODS
from kling_expand_plugin.kling import limits
from kling_expand_plugin.localserver.auth import TokenChecker
from kling_expand_plugin.localserver.budget import ByteBudget
from kling_expand_plugin.localserver.callbacks import CallbackSender
from kling_expand_plugin.localserver.errors import ApiError, invalid_parameter, invalid_request
from kling_expand_plugin.localserver.faults import Faults
from kling_expand_plugin.localserver.ratelimit import RateLimiter
from kling_expand_plugin.localserver.scheduler import Scheduler
from kling_expand_plugin.localserver.tasks import Latency, TaskStore
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

MAX_BODY_BYTES = 15 * 1024 * 1024
"""Largest request body: a 10 MB image in base64 (13.4 MiB) plus the other fields."""

DRAIN_LIMIT = 64 * 1024 * 1024
"""An oversized body up to this size is read and discarded so the client sees the answer."""

MAX_CONNECTIONS = 64
"""Connections served at once by default, one handler thread each."""

CONNECTION_WAIT = 1.0
"""Seconds a connection beyond the limit waits for a free one before it is answered 5001."""

MAX_BUFFERED_BYTES = 4 * MAX_BODY_BYTES
"""Request body bytes held in memory at once by default, over all connections."""

QUERY_SHAPES = ("object", "list")
"""How the single-task query answers `data`: the task (what clients read) or a list of one."""

CHUNK = 64 * 1024

_HOST_HEADER = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class _Dropped(Exception):
    """The drop-before/drop-after fault: close the connection without an answer."""


class LocalServer:
    """A Kling-compatible server on a background thread; `start()` it, `stop()` it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        api_keys: Iterable[str] = (),
        latency: Latency = 1.0,
        concurrency: int = 10,
        seed: int = 0,
        fill_method: str = "mirror-fade",
        result_ttl: float = 3600.0,
        faults: Mapping[str, float] | None = None,
        webhook_secret: str | None = None,
        rate_limit: int | None = None,
        slow_create_delay: float = 30.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        fetch_timeout: float = 10.0,
        callback_timeout: float = 5.0,
        accept_reused_ids: bool = False,
        query_shape: str = "object",
        max_connections: int = MAX_CONNECTIONS,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        body_wait: float = 5.0,
    ) -> None:
        """`accept_reused_ids`: a create whose external_task_id is already used makes a new
        paid task (the contract does not promise Kling refuses it) instead of answering 1201,
        so that a test can witness a double payment.

        `query_shape`: "object" (default) answers the single-task query with the task as
        `data`, as real clients read it; "list" answers a list of one task, as the
        documentation's example shows. `body_wait`: seconds a create waits for room among
        `max_buffered_bytes` before answering 5001 (HTTP 503)."""
        if fill_method not in METHODS:
            raise ValueError(f"unknown fill method {fill_method!r}; known: {', '.join(METHODS)}")
        if query_shape not in QUERY_SHAPES:
            raise ValueError(f"query_shape must be one of {', '.join(QUERY_SHAPES)}")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if max_buffered_bytes < max_body_bytes:
            raise ValueError(
                f"max_buffered_bytes ({max_buffered_bytes}) must hold at least one body "
                f"of max_body_bytes ({max_body_bytes})"
            )
        self.host = host
        self._requested_port = port
        self.auth = TokenChecker(access_key, secret_key, api_keys)
        self.faults = Faults(faults or {}, seed)
        self.rate_limiter = RateLimiter(rate_limit)
        self.slow_create_delay = slow_create_delay
        self.max_body_bytes = max_body_bytes
        self.fetch_timeout = fetch_timeout
        self.query_shape = query_shape
        self.max_connections = max_connections
        self.connection_wait = CONNECTION_WAIT
        self.body_budget = ByteBudget(max_buffered_bytes)
        self.body_wait = body_wait
        self._scheduler = Scheduler()
        self._callbacks = CallbackSender(
            self.faults, webhook_secret=webhook_secret, timeout=callback_timeout
        )
        self.store = TaskStore(
            concurrency=concurrency,
            latency=latency,
            seed=seed,
            fill_method=fill_method,
            result_ttl=result_ttl,
            faults=self.faults,
            callbacks=self._callbacks,
            scheduler=self._scheduler,
            accept_reused_ids=accept_reused_ids,
        )
        self.stopping = threading.Event()
        self._requests: Counter[str] = Counter(dict.fromkeys(ENDPOINTS, 0))
        self._requests_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"LocalServer(host={self.host!r}, port={self.port}, auth={self.auth!r})"

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._httpd.server_address[1] if self._httpd else self._requested_port

    @property
    def url(self) -> str:
        """The base URL, e.g. "http://127.0.0.1:8123"."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> LocalServer:
        """Bind and serve on a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _HTTPServer(self)
        self._scheduler.start()
        self._callbacks.start()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="kling-local-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and the background threads; safe to call twice."""
        if self._httpd is None or self.stopping.is_set():
            return
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._scheduler.stop()
        self._callbacks.stop()
        self.store.stop()

    def stats(self) -> dict[str, Any]:
        """The counters served at GET /local/stats."""
        with self._requests_lock:
            requests = dict(self._requests)
        connections = self._httpd.connection_counts() if self._httpd else {}
        return {
            "requests": requests,
            "connections": connections,
            "buffered_body_bytes": self.body_budget.in_use,
            **self.store.stats(),
            "faults_fired": self.faults.fired(),
            "callbacks": self._callbacks.counts(),
        }

    def count_request(self, endpoint: str) -> None:
        with self._requests_lock:
            self._requests[endpoint] += 1


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most `app.max_connections` of them at once."""

    daemon_threads = True
    request_queue_size = 128  # connections waiting in the kernel while every slot is busy

    def __init__(self, app: LocalServer) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(app.max_connections)
        self._counts_lock = threading.Lock()
        self._open = 0
        self._most_open = 0
        self._refused = 0
        if ":" in app.host:
            self.address_family = socket.AF_INET6
        super().__init__((app.host, app._requested_port), _Handler)

    def connection_counts(self) -> dict[str, int]:
        with self._counts_lock:
            return {
                "open": self._open,
                "max_open": self._most_open,
                "limit": self.app.max_connections,
                "refused": self._refused,
            }

    def process_request(self, request: Any, client_address: Any) -> None:
        # Waiting here holds up accepting, which is the point: the next connections wait in
        # the kernel's queue until a handler thread is free.
        if not self._slots.acquire(timeout=self.app.connection_wait):
            with self._counts_lock:
                self._refused += 1
            _refuse_busy(request, self.app.max_connections)
            self.shutdown_request(request)
            return
        with self._counts_lock:
            self._open += 1
            self._most_open = max(self._most_open, self._open)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._counts_lock:
            self._open -= 1
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request is routine; anything else is logged, not printed."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address, type(error).__name__)
        else:
            log.exception("unexpected error serving a request from %s", client_address)


def _refuse_busy(connection: socket.socket, limit: int) -> None:
    """Answer 5001 (HTTP 503) on a connection beyond the limit, from the accepting thread.

    It must not block that thread: a short timeout, and what the client already sent is
    read (without waiting) so that closing does not reset the connection under the answer.
    """
    body = json.dumps(
        {
            "code": 5001,
            "message": f"server busy: all {limit} connections are in use; retry",
            "request_id": uuid.uuid4().hex,
            "data": None,
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        connection.settimeout(0.5)
        connection.sendall(head + body)
        connection.setblocking(False)
        connection.recv(CHUNK)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # answer even a garbled request line with a status line
    timeout = 30  # seconds a client may stall mid-request
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server_version = "KlingLocal/1"
    _unread = 0  # body bytes announced and not read yet

    @property
    def app(self) -> LocalServer:
        return self.server.app

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_HEAD(self) -> None:
        self.close_connection = True
        self._dispatch("HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by http.server itself (bad request line, unknown method), as envelopes."""
        self.close_connection = True
        if code == 501:
            self._send_envelope(404, 1202, f"invalid method {self.command!r}", None)
        else:
            self._send_envelope(code, 1200, message or "invalid request", None)

    # Routing

    def _dispatch(self, method: str) -> None:
        self._unread = 0
        try:
            self._unread = self._body_length()
            self._route(method)
        except _Dropped:
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
            raise _Dropped
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
            raise _Dropped
        if endpoint == "create" and app.faults.fires("slow-create"):
            app.stopping.wait(app.slow_create_delay)
        if app.faults.fires("bad-json"):
            text = json.dumps(self._envelope(code, message, data)).encode()
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
            try:
                self._send_head(200, "image/png", size)
                if self.command != "HEAD":
                    _copy(file, self.wfile, send)
            except OSError:
                self.close_connection = True

    # Reading and writing

    def _body_length(self) -> int:
        """The request's Content-Length, checked against the cap before any body byte is read.

        ApiError 1200 (HTTP 400, or 413 over the cap) when unusable; the connection then closes.
        """
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise invalid_request("chunked request bodies are not supported; send Content-Length")
        header = self.headers.get("Content-Length")
        if header is None:
            return 0
        try:
            length = int(header)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise invalid_request("Content-Length is not a valid length") from None
        if length > self.app.max_body_bytes:
            self.close_connection = True
            self._unread = length if length <= DRAIN_LIMIT else 0
            raise invalid_request(
                f"request body is {length} bytes, more than {self.app.max_body_bytes}", 413
            )
        return length

    def _read_body(self, length: int) -> bytes:
        """The whole body (its length already checked and reserved in the byte budget)."""
        self._unread = 0
        try:
            body = self.rfile.read(length)
        except OSError:  # the client stalled past the handler's timeout, or went away
            raise _Dropped from None
        if len(body) < length:
            raise _Dropped
        return body

    def _discard_unread(self) -> None:
        """After the answer: read and drop a body nobody needed, a piece at a time.

        So the client, which may still be sending it, gets the answer rather than a reset.
        """
        length, self._unread = self._unread, 0
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, CHUNK))
                if not chunk:
                    self.close_connection = True
                    return
                length -= len(chunk)
        except OSError:
            self.close_connection = True

    def _base_url(self) -> str:
        """The URL clients reach this server at: the Host header when it is well formed."""
        host = self.headers.get("Host", "")
        return f"http://{host}" if _HOST_HEADER.match(host) else self.app.url

    @staticmethod
    def _envelope(code: int, message: str, data: Any) -> dict[str, Any]:
        return {"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": data}

    def _send_envelope(self, status: int, code: int, message: str, data: Any) -> None:
        self._send_json(status, self._envelope(code, message, data))

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_bytes(status, "application/json", json.dumps(payload).encode())

    def _send_bytes(self, status: int, content_type: str, body: bytes) -> None:
        try:
            self._send_head(status, content_type, len(body))
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _send_head(self, status: int, content_type: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()


def _copy(source: BinaryIO, target: io.BufferedIOBase, length: int) -> None:
    """Copy `length` bytes, a chunk at a time."""
    while length > 0:
        chunk = source.read(min(length, CHUNK))
        if not chunk:
            return
        target.write(chunk)
        length -= len(chunk)


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
