"""The listening socket: one thread per connection, at most `max_connections` at once.

A connection beyond the limit waits up to `connection_wait` seconds for a free thread, then is
answered 5001 (HTTP 503) and closed. It waits in a queue (of at most `request_queue_size`;
beyond that it is refused at once) that one thread serves in turn, each connection until its
own deadline, so the accepting thread never waits: a queue of them does not make the last wait
for all the others, and none jumps the queue.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from kling_expand_plugin.localserver.http_io import envelope

if TYPE_CHECKING:
    from kling_expand_plugin.localserver.server import LocalServer

log = logging.getLogger(__name__)


class BoundedHTTPServer(ThreadingHTTPServer):
    """Serves `app` with `handler`; counts open, most open and refused connections."""

    daemon_threads = True
    request_queue_size = 128  # connections waiting (in the kernel, then in `_waiting`) at most

    def __init__(
        self, app: LocalServer, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]
    ) -> None:
        self.app = app
        self._changed = threading.Condition()  # guards what follows; notified when it changes
        self._waiting: collections.deque[tuple[Any, Any, float]] = collections.deque()
        self._closed = False
        self._open = 0
        self._most_open = 0
        self._refused = 0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._waiter = threading.Thread(
            target=self._serve_waiting, name="kling-local-wait", daemon=True
        )
        self._waiter.start()

    def connection_counts(self) -> dict[str, int]:
        with self._changed:
            return {
                "open": self._open,
                "max_open": self._most_open,
                "limit": self.app.max_connections,
                "refused": self._refused,
            }

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._changed:
            serve = not self._waiting and self._take_slot()
            queued = not serve and len(self._waiting) < self.request_queue_size
            if queued:
                deadline = time.monotonic() + self.app.connection_wait
                self._waiting.append((request, client_address, deadline))
                self._changed.notify_all()
        if serve:
            self._start(request, client_address)
        elif not queued:
            self._refuse(request)

    def _serve_waiting(self) -> None:
        """Each waiting connection in turn: served when a thread comes free before its deadline,
        refused after it."""
        while True:
            with self._changed:
                while not self._closed and not self._next_is_due():
                    wait = self._waiting[0][2] - time.monotonic() if self._waiting else None
                    self._changed.wait(wait)
                if self._closed:
                    return
                request, client_address, _ = self._waiting.popleft()
                serve = self._take_slot()
            try:
                if serve:
                    self._start(request, client_address)
                else:
                    self._refuse(request)
            except Exception:  # say, no thread could be started: this connection alone fails
                self.handle_error(request, client_address)
                self.shutdown_request(request)

    def _next_is_due(self) -> bool:
        """Whether the first waiting connection can be served, or its wait is over."""
        return bool(self._waiting) and (
            self._open < self.app.max_connections or self._waiting[0][2] <= time.monotonic()
        )

    def _take_slot(self) -> bool:
        """Take a free handler thread, if there is one (`_changed` held)."""
        if self._open == self.app.max_connections:
            return False
        self._open += 1
        self._most_open = max(self._most_open, self._open)
        return True

    def _start(self, request: Any, client_address: Any) -> None:
        """Serve a connection on a thread of its own; its slot is already taken."""
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def _refuse(self, request: Any) -> None:
        with self._changed:
            self._refused += 1
        _refuse_busy(request, self.app.max_connections)
        self.shutdown_request(request)

    def server_close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            waiting, self._waiting = list(self._waiting), collections.deque()
        super().server_close()
        self._waiter.join(timeout=5)
        for request, _, _ in waiting:
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._changed:
            self._open -= 1
            self._changed.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request is routine; anything else is logged, not printed."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address, type(error).__name__)
        else:
            log.exception("unexpected error serving a request from %s", client_address)


def _refuse_busy(connection: socket.socket, limit: int) -> None:
    """Answer 5001 (HTTP 503) on a connection beyond the limit.

    It must not hold up the thread that refuses (the one serving the queue, or the accepting
    one when the queue is full): a short timeout, and what the client already sent is
    read (without waiting) so that closing does not reset the connection under the answer.
    """
    message = f"server busy: all {limit} connections are in use; retry"
    body = json.dumps(envelope(5001, message, None)).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        connection.settimeout(0.5)
        connection.sendall(head + body)
        connection.setblocking(False)
        connection.recv(64 * 1024)
    except OSError:
        pass
