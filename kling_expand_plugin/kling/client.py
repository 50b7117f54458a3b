"""The Kling Image Expansion client: create, query, list, wait, download (docs/kling-api.md).

Safe to point at a paid API:
- retries decide on Kling's `code`, never on the HTTP status alone, and are bounded by attempts
  and a deadline (exponential backoff with jitter, `Retry-After` honoured);
- a create is never re-posted blindly (kling/expansion.py);
- secrets and tokens appear in no log line, exception message or repr.

`KlingClient` puts together the transport (kling/transport.py), the expansion endpoints
(kling/expansion.py), waiting (kling/polling.py) and downloads (kling/download.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, overload

from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.download import DEFAULT_MAX_BYTES, Downloader
from kling_expand_plugin.kling.expansion import EXPAND_PATH, ExpandRequest, ImageExpansion
from kling_expand_plugin.kling.models import Task
from kling_expand_plugin.kling.polling import DEFAULT_SCHEDULE, PollSchedule, wait_for
from kling_expand_plugin.kling.retry import DEFAULT_RETRY, RetryPolicy
from kling_expand_plugin.kling.transport import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUTS,
    USER_AGENT,
    Timeouts,
    Transport,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "EXPAND_PATH",
    "USER_AGENT",
    "ExpandRequest",
    "KlingClient",
    "PollSchedule",
    "RetryPolicy",
    "Timeouts",
]


class KlingClient:
    """A client of the Kling Image Expansion API over one pooled requests.Session.

    Thread-safe: share one client between the threads of a batch, and size `pool_size` to how
    many of them call at once.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        credentials: Credentials | None = None,
        *,
        timeout: Timeouts | float = DEFAULT_TIMEOUTS,
        pool_size: int = 10,
        retry: RetryPolicy = DEFAULT_RETRY,
        download_timeout: float = 300.0,
        max_download_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        """`credentials` default to the environment (Credentials.from_env).

        `timeout` is a Timeouts, or one number of seconds used for reading (connect at most
        10 s). `download_timeout` bounds each download attempt as a whole.
        """
        if not isinstance(timeout, Timeouts):
            timeout = Timeouts(connect=min(10.0, timeout), read=timeout)
        self._transport = Transport(
            base_url,
            credentials if credentials is not None else Credentials.from_env(),
            timeouts=timeout,
            pool_size=pool_size,
            retry=retry,
        )
        self._expansion = ImageExpansion(self._transport)
        self._downloader = Downloader(
            self._transport.session,
            timeouts=(timeout.connect, timeout.read),
            total_timeout=download_timeout,
            retry=retry,
        )
        self._max_download_bytes = max_download_bytes

    def __repr__(self) -> str:
        return f"KlingClient(base_url={self._transport.base_url!r})"

    def __enter__(self) -> KlingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._transport.close()

    def create(self, request: ExpandRequest) -> Task:
        """Create the task, or return the one that already exists under its external_task_id.

        After an ambiguous failure (timeout, connection reset, 5xx, garbled answer) the task is
        looked up by its external_task_id before anything is posted again; an answer 1200/1201
        (such as "external_task_id already used") is also checked against that lookup.
        """
        return self._expansion.create(request)

    def get(self, task_id: str) -> Task:
        """The task with this `task_id`."""
        return self._expansion.get(task_id)

    def get_by_external_id(self, external_task_id: str) -> Task:
        """The task created with this `external_task_id` (the path form of the query first,
        then the query string; the form the server answered is remembered)."""
        return self._expansion.get_by_external_id(external_task_id)

    def list(self, page_size: int = 30) -> Iterator[Task]:
        """Every task, newest first, walking the pages until a short or empty one."""
        return self._expansion.list(page_size)

    def wait(
        self,
        task: Task | str,
        *,
        timeout: float = 6 * 3600.0,
        cancel: threading.Event | None = None,
        schedule: PollSchedule = DEFAULT_SCHEDULE,
    ) -> Task:
        """Poll until the task finishes, and return it if it succeeded.

        Raises TaskFailedError (carrying `task_status_msg`) if it failed, WaitTimeout after
        `timeout` seconds, Cancelled as soon as `cancel` is set. Transient errors while polling
        are logged and polling goes on; others are raised.
        """
        return wait_for(self.get, task, timeout=timeout, cancel=cancel, schedule=schedule)

    @overload
    def download(self, url: str, *, max_bytes: int | None = None, dest: None = None) -> bytes: ...

    @overload
    def download(
        self, url: str, *, max_bytes: int | None = None, dest: str | os.PathLike[str]
    ) -> Path: ...

    def download(
        self,
        url: str,
        *,
        max_bytes: int | None = None,
        dest: str | os.PathLike[str] | None = None,
    ) -> bytes | Path:
        """A result image: its bytes, or, given `dest`, written there (atomically) and its path.

        http(s) only, streamed, at most `max_bytes`, retried on transient failures, and checked
        to be an image that Pillow can decode. Raises DownloadError.
        """
        cap = self._max_download_bytes if max_bytes is None else max_bytes
        if dest is None:
            return self._downloader.fetch(url, max_bytes=cap)
        return self._downloader.fetch_to(url, Path(dest), max_bytes=cap)

    def download_into(self, url: str, sink: BinaryIO, *, max_bytes: int | None = None) -> None:
        """A result image written into `sink`, a seekable file object open for reading and
        writing (say, a file the caller syncs), replacing what it held; checked as `download`
        checks, and never whole in memory. Raises DownloadError."""
        cap = self._max_download_bytes if max_bytes is None else max_bytes
        self._downloader.fetch_into(url, sink, max_bytes=cap)
