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
auth and Content-Length are checked before a body is read, and a refused body is dropped as it
comes for at most `drain_timeout` seconds; a request's line and headers must come within
`header_timeout` seconds; results are streamed from files.

This module holds the server's settings, start and stop, and stats; `routes` answers the
requests, `http_io` reads their bodies and writes the answers, `connections` bounds the
connections, `tasks` keeps the tasks and their result files.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from kling_expand_plugin.imaging.fill import METHODS
from kling_expand_plugin.imaging.memory import return_large_buffers
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.localserver.auth import TokenChecker
from kling_expand_plugin.localserver.budget import ByteBudget
from kling_expand_plugin.localserver.callbacks import CallbackSender
from kling_expand_plugin.localserver.connections import BoundedHTTPServer
from kling_expand_plugin.localserver.faults import Faults
from kling_expand_plugin.localserver.ratelimit import RateLimiter
from kling_expand_plugin.localserver.routes import ENDPOINTS, KlingHandler
from kling_expand_plugin.localserver.scheduler import Scheduler
from kling_expand_plugin.localserver.tasks import Latency, TaskStore

MAX_BODY_BYTES = 15 * 1024 * 1024
"""Largest request body: a 10 MB image in base64 (13.4 MiB) plus the other fields."""

MAX_CONNECTIONS = 64
"""Connections served at once by default, one handler thread each."""

CONNECTION_WAIT = 1.0
"""Seconds a connection beyond the limit waits for a free one before it is answered 5001."""

MAX_BUFFERED_BYTES = 4 * MAX_BODY_BYTES
"""Request body bytes held in memory at once by default, over all connections."""

QUERY_SHAPES = ("object", "list")
"""How the single-task query answers `data`: the task (what clients read) or a list of one."""


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
        connection_wait: float = CONNECTION_WAIT,
        drain_timeout: float = 5.0,
        header_timeout: float = 10.0,
    ) -> None:
        """`accept_reused_ids`: a create whose external_task_id is already used makes a new
        paid task (the contract does not promise Kling refuses it) instead of answering 1201,
        so that a test can witness a double payment.

        `query_shape`: "object" (default) answers the single-task query with the task as
        `data`, as real clients read it; "list" answers a list of one task, as the
        documentation's example shows. `body_wait`: seconds a create waits for room among
        `max_buffered_bytes` before answering 5001 (HTTP 503); `connection_wait`: seconds a
        connection beyond `max_connections` waits for a free one before the same answer;
        `drain_timeout`: seconds the rest of a refused body may take to come (it is read and
        dropped, so that the client sees the answer) before the connection is closed;
        `header_timeout`: seconds a request's line and headers may take to come, from their
        first byte, before the connection is closed."""
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
        self.connection_wait = connection_wait
        self.drain_timeout = drain_timeout
        self.header_timeout = header_timeout
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
        self._httpd: BoundedHTTPServer | None = None
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
        return_large_buffers()  # each render's canvases go back to the system, as the stage's do
        self._httpd = BoundedHTTPServer(self, (self.host, self._requested_port), KlingHandler)
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


def with_own_keys(**options: Any) -> tuple[LocalServer, Credentials]:
    """A LocalServer (not started) with random keys of its own, and the credentials it takes."""
    access_key, secret_key = secrets.token_hex(8), secrets.token_hex(16)
    server = LocalServer(access_key=access_key, secret_key=secret_key, **options)
    return server, Credentials(access_key=access_key, secret_key=secret_key)
