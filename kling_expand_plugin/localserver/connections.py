"""The listening socket: one thread per connection, at most `max_connections` at once.

A connection beyond the limit waits up to `connection_wait` seconds for a free thread, then is
answered 5001 (HTTP 503) and closed. It waits in a queue that one thread serves in turn, each
connection until its own deadline, so the accepting thread never waits: a queue of them does
not make the last wait for all the others.
"""

from __future__ import annotations

import json
import logging
import queue
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
    request_queue_size = 128  # connections waiting in the kernel while every slot is busy

    def __init__(
        self, app: LocalServer, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]
    ) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(app.max_connections)
        self._waiting: queue.Queue[tuple[Any, Any, float]] = queue.Queue(self.request_queue_size)
        self._closed = threading.Event()
        self._counts_lock = threading.Lock()
        self._open = 0
        self._most_open = 0
        self._refused = 0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        threading.Thread(target=self._serve_waiting, name="kling-local-wait", daemon=True).start()

    def connection_counts(self) -> dict[str, int]:
        with self._counts_lock:
            return {
                "open": self._open,
                "max_open": self._most_open,
                "limit": self.app.max_connections,
                "refused": self._refused,
            }

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._waiting.empty() and self._slots.acquire(blocking=False):
            self._start(request, client_address)
            return
        deadline = time.monotonic() + self.app.connection_wait
        try:
            self._waiting.put_nowait((request, client_address, deadline))
        except queue.Full:
            self._refuse(request)

    def _serve_waiting(self) -> None:
        """Each waiting connection in turn: served when a thread comes free before its deadline,
        refused after it."""
        while not self._closed.is_set():
            try:
                request, client_address, deadline = self._waiting.get(timeout=0.5)
            except queue.Empty:
                continue
            if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self._refuse(request)
            elif self._closed.is_set():
                self._slots.release()
                self.shutdown_request(request)
            else:
                self._start(request, client_address)

    def _start(self, request: Any, client_address: Any) -> None:
        """Serve a connection on a thread of its own; its slot is already taken."""
        with self._counts_lock:
            self._open += 1
            self._most_open = max(self._most_open, self._open)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def _refuse(self, request: Any) -> None:
        with self._counts_lock:
            self._refused += 1
        _refuse_busy(request, self.app.max_connections)
        self.shutdown_request(request)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()
        while True:
            try:
                request, _, _ = self._waiting.get_nowait()
            except queue.Empty:
                return
            self.shutdown_request(request)

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
