"""URL inputs: fetching one within its limits (time and size), and showing it redacted."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests
import urllib3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UrlLimits:
    """How long and how large a URL input's fetch may be."""

    deadline: float = 60.0
    """Seconds for the whole fetch: connecting, the answer's headers and its body."""
    max_bytes: int = 64 * 1024 * 1024
    """The body is refused past this size (an image file, not a stream)."""
    connect_timeout: float = 10.0


DEFAULT_URL_LIMITS = UrlLimits()


class FetchError(OSError):
    """A URL input that could not be fetched; the message names the URL with its query redacted."""


def is_url(text: str) -> bool:
    """Whether `text` is an http(s) URL (an input to fetch, not a path)."""
    return text.startswith(("http://", "https://"))


def redact_url(url: str) -> str:
    """`url` fit for logs and messages: each query value and the user info replaced by "..."
    (a pre-signed URL's signature is a credential), the fragment dropped."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1": not parsed, but still shown without its secrets
        head = url.split("?", 1)[0].split("#", 1)[0]
        if "@" in head:
            head = head.split("://", 1)[0] + "://...@" + head.rsplit("@", 1)[1]
        return head + ("?..." if "?" in url else "")
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "...@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}=..." for name, _ in parse_qsl(parts.query, keep_blank_values=True)
    ) or ("..." if parts.query else "")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def fetch(url: str, limits: UrlLimits = DEFAULT_URL_LIMITS) -> bytes:
    """The body of `url`, within the `limits`' deadline in all and its size cap; FetchError,
    naming the URL redacted, otherwise."""
    deadline, max_bytes, connect_timeout = limits.deadline, limits.max_bytes, limits.connect_timeout
    shown = redact_url(url)
    started = time.monotonic()

    def too_slow() -> FetchError:  # made anew each time: one kept in a cell would be a cycle
        return FetchError(f"{shown}: not fetched within {deadline:g} s (the deadline for a URL)")

    def remaining() -> float:
        left = deadline - (time.monotonic() - started)
        if left <= 0:
            raise too_slow()
        return left

    try:
        # Connecting and waiting for the headers share the deadline; the body's reads below
        # get what is left of it.
        connect = min(connect_timeout, deadline / 2)
        with requests.get(url, stream=True, timeout=(connect, deadline - connect)) as response:
            if response.status_code >= 400:
                raise FetchError(f"{shown}: the server answered HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"{shown}: {declared} bytes, more than {max_bytes} (the limit)")
            chunks, size = [], 0
            while True:
                left = remaining()
                sock = _socket_of(response.raw)
                if sock is not None:  # so that no wait for the next bytes outlasts the deadline
                    sock.settimeout(left)
                chunk = response.raw.read1(1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{shown}: more than {max_bytes} bytes (the limit)")
                chunks.append(chunk)
            remaining()
            return b"".join(chunks)
    except FetchError:
        raise
    except Exception as error:  # requests', urllib3's and the socket's: their texts hold the URL
        log.debug("fetching %s: %s", shown, type(error).__name__)
        if isinstance(error, requests.ConnectTimeout):
            raise FetchError(f"{shown}: no connection within {connect_timeout:g} s") from None
        timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
        if isinstance(error, timeouts) or time.monotonic() - started >= deadline:
            raise too_slow() from None
        if isinstance(error, requests.TooManyRedirects):
            raise FetchError(f"{shown}: too many redirects") from None
        if isinstance(error, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema):
            raise FetchError(f"{shown}: not a URL that can be fetched") from None
        broken = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
        if isinstance(error, broken):
            raise FetchError(f"{shown}: the connection failed, or broke off") from None
        raise FetchError(f"{shown}: could not be fetched") from None


def _socket_of(raw: Any) -> socket.socket | None:
    """The socket under a urllib3 response: its connection's, or, for a body that ends when
    the connection closes (urllib3 has let go of the connection), the one its reader holds."""
    connection = raw.connection
    if connection is not None and connection.sock is not None:
        return connection.sock
    reader = getattr(getattr(raw, "_fp", None), "fp", None)
    sock = getattr(getattr(reader, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _redact_request_lines(record: logging.LogRecord) -> bool:
    """A logging filter for urllib3's request lines ("GET /a.png?X-Amz-Signature=..."): the
    URLs in them redacted, whatever level the log is read at."""
    if isinstance(record.args, tuple):
        record.args = tuple(
            redact_url(arg) if isinstance(arg, str) and "?" in arg else arg for arg in record.args
        )
    return True


for _name in ("urllib3.connectionpool", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_redact_request_lines)
