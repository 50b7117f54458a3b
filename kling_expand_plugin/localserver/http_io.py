"""Reading request bodies within their limits and writing answers as Kling envelopes."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, BinaryIO

from kling_expand_plugin.localserver.errors import invalid_request

if TYPE_CHECKING:
    from kling_expand_plugin.localserver.connections import BoundedHTTPServer
    from kling_expand_plugin.localserver.server import LocalServer

log = logging.getLogger(__name__)

DRAIN_LIMIT = 64 * 1024 * 1024
"""An oversized body up to this size is read and discarded so the client sees the answer."""

CHUNK = 64 * 1024


def envelope(code: int, message: str, data: Any) -> dict[str, Any]:
    """The API's answer: its code, message, a fresh request id and its data."""
    return {"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": data}


class Dropped(Exception):
    """Close the connection without an answer (the drop faults, a client that stalled)."""


class EnvelopeHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with Content-Length bodies only; every answer but a result file is an envelope."""

    server: BoundedHTTPServer
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # answer even a garbled request line with a status line
    timeout = 30  # seconds a client may stall mid-request, or keep an idle connection
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server_version = "KlingLocal/1"
    _unread = 0  # body bytes announced and not read yet

    @property
    def app(self) -> LocalServer:
        return self.server.app

    def setup(self) -> None:
        super().setup()
        self._reader = _HeaderDeadline(self.connection, self.app.header_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.next_request()
        super().handle_one_request()

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:  # the headers are in: what follows has the usual timeout
            self._reader.headers_done()
            self.connection.settimeout(self.timeout)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by http.server itself (bad request line, unknown method), as envelopes."""
        self.close_connection = True
        if code == 501:
            self._send_envelope(404, 1202, f"invalid method {self.command!r}", None)
        else:
            self._send_envelope(code, 1200, message or "invalid request", None)

    # Reading

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
            raise Dropped from None
        if len(body) < length:
            raise Dropped
        return body

    def _discard_unread(self) -> None:
        """After the answer: read and drop a body nobody needed, a piece at a time.

        So the client, which may still be sending it, gets the answer rather than a reset. A
        body that has not all come within `drain_timeout` seconds (a client sending it a byte
        at a time would hold a connection for good) is cut off: the connection closes.
        """
        length, self._unread = self._unread, 0
        if not length:
            return
        deadline = time.monotonic() + self.app.drain_timeout
        try:
            while length > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close_connection = True
                    return
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(length, CHUNK))  # one read: bounded by `left`
                if not chunk:
                    self.close_connection = True
                    return
                length -= len(chunk)
        except OSError:
            self.close_connection = True
        finally:
            self.connection.settimeout(self.timeout)

    # Writing

    def _send_envelope(self, status: int, code: int, message: str, data: Any) -> None:
        self._send_json(status, envelope(code, message, data))

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_bytes(status, "application/json", json.dumps(payload).encode())

    def _send_bytes(self, status: int, content_type: str, body: bytes) -> None:
        try:
            self._send_head(status, content_type, len(body))
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _send_file(self, file: BinaryIO, content_type: str, size: int, send: int) -> None:
        """Announce `size` bytes of `file` and stream the first `send` of them."""
        try:
            self._send_head(200, content_type, size)
            if self.command != "HEAD":
                _copy(file, self.wfile, send)
        except OSError:
            self.close_connection = True

    def _send_head(self, status: int, content_type: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()


class _HeaderDeadline(io.RawIOBase):
    """The connection's bytes, with a deadline for each request's line and headers: once its
    first byte has come, they must all come within `limit` seconds. A client sending them a byte
    at a time would otherwise hold a thread for good (each read has a timeout, the whole none);
    an idle connection between requests is left to the handler's timeout."""

    def __init__(self, connection: socket.socket, limit: float) -> None:
        self._connection = connection
        self._limit = limit
        self._in_headers = True
        self._deadline: float | None = None

    def readable(self) -> bool:
        return True

    def next_request(self) -> None:
        self._in_headers, self._deadline = True, None

    def headers_done(self) -> None:
        self._in_headers = False

    def readinto(self, buffer: Any) -> int:
        if self._in_headers and self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"request line and headers not all in within {self._limit:g} s")
            self._connection.settimeout(left)
        count = self._connection.recv_into(buffer)
        if self._in_headers and self._deadline is None and count:
            self._deadline = time.monotonic() + self._limit
        return count


def _copy(source: BinaryIO, target: io.BufferedIOBase, length: int) -> None:
    """Copy `length` bytes, a chunk at a time."""
    while length > 0:
        chunk = source.read(min(length, CHUNK))
        if not chunk:
            return
        target.write(chunk)
        length -= len(chunk)
