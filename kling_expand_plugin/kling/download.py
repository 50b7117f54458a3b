"""Downloading result images: http(s) only, streamed, capped, retried, and checked to be images.

Result URLs are often pre-signed (their query string is a credential), so messages and logs
name a URL by scheme, host and path only. No Authorization header is ever sent here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import requests
from PIL import Image

from kling_expand_plugin.kling.errors import DownloadError
from kling_expand_plugin.kling.retry import RetryBudget, RetryPolicy, retrying

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Default size cap of one downloaded image."""

CHUNK_BYTES = 256 * 1024
"""Bytes read at a time: under glibc's mmap threshold (see `imaging.memory`), so each chunk's
buffer is used again instead of being mapped, faulted in and given back."""

log = logging.getLogger(__name__)


def safe_url(url: str) -> str:
    """`url` without its query string and fragment, fit for a log line or an error message."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class Downloader:
    """Fetches images over a shared requests.Session."""

    def __init__(
        self,
        session: requests.Session,
        *,
        timeouts: tuple[float, float],
        total_timeout: float,
        retry: RetryPolicy,
    ) -> None:
        """`timeouts` is (connect, read) per socket operation; `total_timeout` bounds a try."""
        self._session = session
        self._timeouts = timeouts
        self._total_timeout = total_timeout
        self._retry = retry

    def fetch(self, url: str, *, max_bytes: int) -> bytes:
        """The image at `url`, as bytes."""
        buffer = io.BytesIO()
        self.fetch_into(url, buffer, max_bytes=max_bytes)
        return buffer.getvalue()

    def fetch_to(self, url: str, dest: Path, *, max_bytes: int) -> Path:
        """Write the image at `url` to `dest`, atomically (nothing is left there on failure)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, part_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        part = Path(part_name)
        try:
            with os.fdopen(fd, "w+b") as sink:
                self.fetch_into(url, sink, max_bytes=max_bytes)
            os.replace(part, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        return dest

    def fetch_into(self, url: str, sink: BinaryIO, *, max_bytes: int) -> None:
        """Write the image at `url` into `sink` (a seekable file object open for reading and
        writing), replacing what it held: streamed, never whole in memory."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(f"refusing to download {scheme or 'a relative'} URL: http(s) only")

        def attempt() -> None:
            self._fetch_once(url, max_bytes, sink)
            _check_image(sink, safe_url(url))

        retrying(attempt, self._retry, _retry_delay, what="download")

    def _fetch_once(self, url: str, max_bytes: int, sink: BinaryIO) -> None:
        shown = safe_url(url)
        sink.seek(0)
        sink.truncate()
        started = time.monotonic()
        try:
            with self._session.get(url, stream=True, timeout=self._timeouts) as response:
                status = response.status_code
                if status != 200:
                    raise DownloadError(
                        f"{shown}: HTTP {status}", retryable=status >= 500 or status in (408, 429)
                    )
                declared = _content_length(response)
                if declared is not None and declared > max_bytes:
                    raise DownloadError(f"{shown}: {declared} bytes is over the {max_bytes} cap")
                received = 0
                for chunk in response.iter_content(CHUNK_BYTES):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DownloadError(f"{shown}: more than the {max_bytes}-byte cap")
                    if time.monotonic() - started > self._total_timeout:
                        raise DownloadError(
                            f"{shown}: not done after {self._total_timeout:g} s", retryable=True
                        )
                    sink.write(chunk)
        except requests.RequestException as exc:
            raise DownloadError(f"{shown}: {type(exc).__name__}", retryable=True) from None
        encoded = response.headers.get("Content-Encoding", "identity") != "identity"
        if declared is not None and not encoded and received != declared:
            raise DownloadError(
                f"{shown}: cut off after {received} of {declared} bytes", retryable=True
            )
        log.debug("downloaded %s: %d bytes in %.3f s", shown, received, time.monotonic() - started)


def _retry_delay(error: Exception, budget: RetryBudget) -> float | None:
    retryable = isinstance(error, DownloadError) and error.retryable
    return budget.next_delay() if retryable else None


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def check_whole(image_file: BinaryIO | Path) -> None:
    """Raise (OSError, SyntaxError, ValueError, DecompressionBombError) unless `image_file` is a
    whole image: every chunk's checksum for a PNG, a JPEG decoded at an eighth of its size (each
    cheap next to a full decode, which the stitching does once), anything else decoded."""
    with Image.open(image_file) as image:
        if image.format == "PNG":
            image.verify()
            return
        if image.format == "JPEG":
            image.draft(image.mode, (image.width // 8, image.height // 8))
        image.load()


def _check_image(sink: BinaryIO, shown: str) -> None:
    """Raise DownloadError unless the bytes in `sink` are a whole image (`check_whole`)."""
    sink.seek(0)
    try:
        check_whole(sink)
    except Image.DecompressionBombError:
        raise DownloadError(f"{shown}: the image has too many pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # A cut-off or garbled transfer can look like this too, so one more try may help.
        raise DownloadError(f"{shown}: not a readable image ({exc})", retryable=True) from None
