"""CallbackReceiver: an HTTP endpoint that learns from Kling's callbacks when tasks change status.

Each task gets its own callback URL, `/kling/callback/<token>`, where the token is an HMAC of the
task's external_task_id under a random key of this receiver: a delivery is accepted only on the
URL of the task it describes (403 otherwise). With a webhook secret, deliveries must also carry
a valid, fresh Standard Webhooks signature (401 otherwise), and a message id already accepted is
not applied again. Deliveries may repeat, arrive out of order or not at all: a task only ever
moves forward, and the caller keeps polling as the fallback (`wait` returns None on timeout).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from kling_expand_plugin.kling import webhooks
from kling_expand_plugin.kling.errors import ProtocolError
from kling_expand_plugin.kling.models import Task, TaskStatus
from kling_expand_plugin.kling.wire import task_from_json

log = logging.getLogger(__name__)

CALLBACK_PATH = "/kling/callback/"
MAX_BODY_BYTES = 1024 * 1024
"""Largest delivery accepted; a task's JSON is a few hundred bytes per image."""

DRAIN_LIMIT = 8 * 1024 * 1024
"""An oversized body up to this size is read and dropped so the sender sees the 413."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class CallbackReceiver:
    """Receives task callbacks on a background HTTP server; `wait` for a task's next status."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        public_url: str | None = None,
        webhook_secret: str | None = None,
        tolerance: float = 300.0,
        max_tasks: int = 10_000,
        max_message_ids: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Binds at once (port 0: any free port). `public_url` is the base URL Kling can reach
        when it is not http://host:port (a tunnel or a reverse proxy); `tolerance` is how many
        seconds a signed delivery's timestamp may be away from now. At most `max_tasks` tasks
        and `max_message_ids` webhook ids are remembered; the oldest go first. `clock` gives the
        Unix time signatures are checked against (tests inject one).
        """
        if webhook_secret is not None:
            webhooks.sign(webhook_secret, "check", 0, b"")  # fail early on a malformed secret
        self._secret = webhook_secret
        self._tolerance = tolerance
        self._clock = clock
        self._max_tasks = max_tasks
        self._max_message_ids = max_message_ids
        self._key = secrets.token_bytes(32)
        self._changed = threading.Condition()
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._message_ids: OrderedDict[str, int] = OrderedDict()  # webhook-id -> its timestamp
        self._counts: Counter[str] = Counter(accepted=0, duplicates=0, stale=0)
        self._rejected: Counter[str] = Counter()
        self._httpd = _HTTPServer(host, port, self)
        self._thread: threading.Thread | None = None
        self._stopped = False
        if public_url:
            self._base_url = public_url.rstrip("/")
        else:
            shown_host = f"[{host}]" if ":" in host else host
            self._base_url = f"http://{shown_host}:{self._httpd.server_address[1]}"
        # Behind a proxy that keeps public_url's path, deliveries arrive under that path too.
        public_path = urlsplit(self._base_url).path
        self._path_prefixes = {CALLBACK_PATH, public_path + CALLBACK_PATH}

    def __repr__(self) -> str:
        return f"CallbackReceiver(url={self._base_url!r}, signed={self._secret is not None})"

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> CallbackReceiver:
        """Serve on a daemon thread; returns self."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("receiver already started (or stopped)")
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="kling-callbacks", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._httpd.server_address[1])

    @property
    def verifies_signatures(self) -> bool:
        """Whether deliveries must carry a valid Standard Webhooks signature."""
        return self._secret is not None

    def url_for(self, external_task_id: str) -> str:
        """The callback_url to create the task `external_task_id` with."""
        return f"{self._base_url}{CALLBACK_PATH}{self._token(external_task_id)}"

    def latest(self, external_task_id: str) -> Task | None:
        """The most advanced status delivered so far for this task, or None."""
        with self._changed:
            return self._tasks.get(external_task_id)

    def wait(
        self, external_task_id: str, timeout: float, *, after: TaskStatus | None = None
    ) -> Task | None:
        """The task once a delivery ranked above `after` (any, if None) is known; None on timeout.

        Returns at once when such a delivery has already arrived.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                task = self._tasks.get(external_task_id)
                if task is not None and (after is None or task.status.rank > after.rank):
                    return task
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def forget(self, external_task_id: str) -> None:
        """Drop what is known of this task (the caller is done with it)."""
        with self._changed:
            self._tasks.pop(external_task_id, None)

    @property
    def stats(self) -> dict[str, Any]:
        """Deliveries accepted, duplicates (same status again), stale (older status than known),
        and rejected, by reason."""
        with self._changed:
            return {**self._counts, "rejected": dict(self._rejected)}

    # Judging one delivery

    def _token(self, external_task_id: str) -> str:
        digest = hmac.new(self._key, external_task_id.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")

    def _token_in(self, path: str) -> str | None:
        """The token of a callback path, or None when `path` is not one."""
        for prefix in self._path_prefixes:
            if path.startswith(prefix) and _TOKEN.fullmatch(path[len(prefix) :]):
                return path[len(prefix) :]
        return None

    def _deliver(self, token: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
        """Judge one delivery to `token`'s URL: the HTTP status to answer and the outcome.

        `headers` have lower-case names.
        """
        signed: tuple[str, int] | None = None
        if self._secret is not None:
            checked = self._check_signature(self._secret, headers, body)
            if isinstance(checked, str):
                return self._reject(401, checked)
            signed = checked
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # includes bad UTF-8; absurdly deep nesting
            return self._reject(400, "malformed")
        external_id = _external_id(payload)
        if external_id is None:
            return self._reject(400, "malformed")
        if not hmac.compare_digest(token.encode(), self._token(external_id).encode()):
            return self._reject(403, "wrong_token", external_id)
        try:
            task = task_from_json(payload)
        except ProtocolError as error:
            log.warning("callback for %.100r is malformed: %s", external_id, error)
            return self._reject(400, "malformed")
        return 200, self._record(external_id, task, signed)

    def _check_signature(
        self, secret: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[str, int] | str:
        """(webhook-id, timestamp) of a validly signed, fresh delivery, else why it is not."""
        try:
            return webhooks.verify(
                secret, headers, body, now=self._clock(), tolerance=self._tolerance
            )
        except webhooks.WebhookVerificationError as error:
            return error.reason

    def _record(self, external_id: str, task: Task, signed: tuple[str, int] | None) -> str:
        """Apply a verified delivery unless it is a replay or older news; returns the outcome."""
        with self._changed:
            if signed is not None:
                self._forget_old_message_ids()
                msg_id, timestamp = signed
                if msg_id in self._message_ids:
                    # A sender's retry of a message already applied: answered 2xx, not applied.
                    self._rejected["replayed"] += 1
                    log.info("callback for %.100r: webhook-id seen before, ignored", external_id)
                    return "replayed"
                self._message_ids[msg_id] = timestamp
            known = self._tasks.get(external_id)
            if known is None or task.status.rank > known.status.rank:
                outcome = "accepted"
                self._tasks[external_id] = task
                self._tasks.move_to_end(external_id)
                while len(self._tasks) > self._max_tasks:
                    self._tasks.popitem(last=False)
                self._changed.notify_all()
            elif task.status.rank == known.status.rank:
                outcome = "duplicates"  # a final status never changes to the other final one
            else:
                outcome = "stale"
            self._counts[outcome] += 1
        log.info("callback for %.100r: %s (%s)", external_id, task.status.value, outcome)
        return outcome

    def _forget_old_message_ids(self) -> None:
        """Drop ids whose timestamps are too old to pass verification again, and any over the cap.

        Call with the lock held. Ids come in roughly timestamp order, so the oldest are first.
        """
        oldest_fresh = self._clock() - self._tolerance
        while self._message_ids:
            timestamp = next(iter(self._message_ids.values()))
            if timestamp >= oldest_fresh and len(self._message_ids) < self._max_message_ids:
                break
            self._message_ids.popitem(last=False)

    def _reject(self, status: int, reason: str, external_id: str | None = None) -> tuple[int, str]:
        with self._changed:
            self._rejected[reason] += 1
        if external_id is None:
            log.warning("callback rejected: %s", reason)
        else:
            log.warning("callback for %.100r rejected: %s", external_id, reason)
        return status, reason


def _external_id(payload: Any) -> str | None:
    """task_info.external_task_id of a delivered task, when it has one."""
    info = payload.get("task_info") if isinstance(payload, dict) else None
    value = info.get("external_task_id") if isinstance(info, dict) else None
    return value if isinstance(value, str) and value else None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, receiver: CallbackReceiver) -> None:
        self.receiver = receiver
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("callback receiver: unexpected error serving a request")


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = 10  # seconds a sender may stall mid-request
    server_version = "KlingCallbackReceiver/1"
    sys_version = ""

    def do_POST(self) -> None:
        receiver = self.server.receiver
        token = receiver._token_in(urlsplit(self.path).path)
        if token is None:
            self._refuse(404, "not_found")
            return
        length = self._content_length()
        if length is None:
            self._refuse(411, "no_length")
            return
        if length > MAX_BODY_BYTES:
            self._discard(length)
            self._refuse(413, "too_large")
            return
        try:
            body = self.rfile.read(length)
        except OSError:  # includes a timeout: the sender stalled
            self.close_connection = True
            return
        if len(body) < length:
            return  # the sender hung up mid-body; nobody is left to answer
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            status, outcome = receiver._deliver(token, headers, body)
        except Exception:
            log.exception("callback receiver: unexpected error judging a delivery")
            status, outcome = 500, "internal_error"
        self._answer(status, outcome)

    def do_GET(self) -> None:
        self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: http.server's lines carry the request path, hence the token.

        Each delivery's outcome is logged by the receiver, with the external id instead.
        """

    def _content_length(self) -> int | None:
        """The declared body size; None when absent or not a plain non-negative number."""
        value = (self.headers.get("Content-Length") or "").strip()
        return int(value) if value.isascii() and value.isdigit() else None

    def _discard(self, length: int) -> None:
        """Read and drop an oversized body (up to a limit), so the sender gets to see the answer."""
        left = length if length <= DRAIN_LIMIT else 0
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return

    def _not_allowed(self) -> None:
        self._refuse(405, "method_not_allowed", allow="POST")

    def _refuse(self, status: int, reason: str, *, allow: str | None = None) -> None:
        self.server.receiver._reject(status, reason)
        self._answer(status, reason, allow=allow)

    def _answer(self, status: int, outcome: str, *, allow: str | None = None) -> None:
        body = json.dumps({"outcome": outcome}).encode()
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(body)
