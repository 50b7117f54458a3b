"""The Kling Image Expansion client: create, query, list, wait, download (docs/kling-api.md).

Safe to point at a paid API:
- retries decide on Kling's `code`, never on the HTTP status alone, and are bounded by attempts
  and a deadline (exponential backoff with jitter, `Retry-After` honoured);
- a create is never re-posted blindly: it always carries a deterministic `external_task_id`,
  and after an ambiguous failure (timeout, reset, 5xx, garbled answer) the task is looked up by
  that id first, and posted again only if it does not exist;
- secrets and tokens appear in no log line, exception message or repr.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import quote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling import limits
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.download import DEFAULT_MAX_BYTES, Downloader
from kling_expand_plugin.kling.errors import (
    AuthError,
    Cancelled,
    ConcurrencyLimitedError,
    InvalidRequestError,
    KlingAPIError,
    KlingError,
    NotFoundError,
    ProtocolError,
    ServerError,
    TaskFailedError,
    TransportError,
    WaitTimeout,
    api_error,
)
from kling_expand_plugin.kling.models import Task
from kling_expand_plugin.kling.retry import (
    DEFAULT_RETRY,
    RetryBudget,
    RetryPolicy,
    retry_after_seconds,
    retrying,
)

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"
EXPAND_PATH = "/v1/images/editing/expand"

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _project_version() -> str:
    try:
        return importlib.metadata.version("kling-expand-plugin")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


USER_AGENT = f"kling-expand-plugin/{_project_version()} (+requests/{requests.__version__})"


@dataclass(frozen=True)
class Timeouts:
    """Connect and read timeouts in seconds; an upload's read timeout grows with its size."""

    connect: float = 10.0
    read: float = 60.0
    upload_bytes_per_second: float = 500_000.0
    """Assumed slowest upload speed: a request body of B bytes adds B / this to `read`."""

    def for_body(self, size: int) -> tuple[float, float]:
        """(connect, read) for a request whose body is `size` bytes."""
        return (self.connect, self.read + size / self.upload_bytes_per_second)


@dataclass(frozen=True)
class PollSchedule:
    """Delays between polls while waiting: `first`, growing by `factor` up to `longest`."""

    first: float = 2.0
    factor: float = 1.5
    longest: float = 30.0
    jitter: float = 0.2
    """Each delay is moved by up to this fraction of itself, either way, at random."""

    def delays(self) -> Iterator[float]:
        """The delays, without end."""
        delay = self.first
        while True:
            yield delay * (1.0 + self.jitter * (2.0 * random.random() - 1.0))
            delay = min(self.longest, delay * self.factor)


@dataclass(frozen=True)
class ExpandRequest:
    """One expansion to create. `image` is raw base64 of the file, or an http(s) URL."""

    image: str = field(repr=False)
    ratios: Ratios
    prompt: str = ""
    n: int = 1
    watermark: bool = False
    callback_url: str | None = None
    external_task_id: str | None = None
    """Left None, a deterministic id is derived from the input (see `external_id_for`)."""

    def __post_init__(self) -> None:
        problems = list(self.ratios.problems())
        if not self.image:
            problems.append("image is empty")
        elif self.image.startswith("data:"):
            problems.append("image must be raw base64, without a data: prefix")
        if len(self.prompt) > limits.MAX_PROMPT_CHARS:
            problems.append(f"prompt is longer than {limits.MAX_PROMPT_CHARS} characters")
        if not limits.MIN_N <= self.n <= limits.MAX_N:
            problems.append(f"n = {self.n} is outside {limits.MIN_N}..{limits.MAX_N}")
        if problems:
            raise ValueError("invalid expand request: " + "; ".join(problems))

    @staticmethod
    def external_id_for(
        image: bytes | str,
        ratios: Ratios,
        prompt: str = "",
        n: int = 1,
        watermark: bool = False,
        *,
        salt: str = "",
    ) -> str:
        """A deterministic id for this input and these parameters: "kep-" + 32 hex digits.

        `image` is the file's bytes, its raw base64, or its URL (bytes and their base64 give the
        same id). The same input always gives the same id, so the API returns the existing
        task instead of running (and charging for) a second one; pass a different `salt` to
        deliberately run the same input again (say, after a failed task).
        """
        digest = hashlib.sha256()
        digest.update(b"kling-expand-plugin/external-id/v1\0")
        digest.update(hashlib.sha256(_image_identity(image)).digest())
        params = {
            "ratios": [f"{value:.6f}" for value in ratios.as_dict().values()],
            "prompt": prompt,
            "n": n,
            "watermark": bool(watermark),
            "salt": salt,
        }
        digest.update(json.dumps(params, sort_keys=True).encode("utf-8"))
        return "kep-" + digest.hexdigest()[:32]

    @property
    def resolved_external_id(self) -> str:
        """`external_task_id` if given, else the id derived from the input."""
        if self.external_task_id:
            return self.external_task_id
        return self.external_id_for(self.image, self.ratios, self.prompt, self.n, self.watermark)

    def body(self) -> dict[str, Any]:
        """The create request's JSON body."""
        body: dict[str, Any] = {
            "image": self.image,
            **self.ratios.as_dict(),
            "n": self.n,
            "external_task_id": self.resolved_external_id,
        }
        if self.prompt:
            body["prompt"] = self.prompt
        if self.watermark:
            body["watermark_info"] = {"enabled": True}
        if self.callback_url:
            body["callback_url"] = self.callback_url
        return body


def _image_identity(image: bytes | str) -> bytes:
    """The bytes that identify an image: the file for bytes or base64, the URL for a URL."""
    if isinstance(image, bytes):
        return b"bytes:" + image
    if image.startswith(("http://", "https://")):
        return b"url:" + image.encode("utf-8")
    try:
        return b"bytes:" + base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        return b"text:" + image.encode("utf-8")


def _is_ambiguous(error: KlingError) -> bool:
    """True when a create that failed this way may nevertheless have been accepted."""
    if isinstance(error, TransportError):
        return error.maybe_sent
    return isinstance(error, ProtocolError | ServerError)


def _describe_image(image: str) -> str:
    if image.startswith(("http://", "https://")):
        return f"URL on {urlsplit(image).hostname}"
    return f"base64, {len(image)} chars"


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
        timeout: Timeouts | float = Timeouts(),
        pool_size: int = 10,
        retry: RetryPolicy = DEFAULT_RETRY,
        download_timeout: float = 300.0,
        max_download_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        """`credentials` default to the environment (Credentials.from_env).

        `timeout` is a Timeouts, or one number of seconds used for reading (connect at most
        10 s). `download_timeout` bounds each download attempt as a whole.
        """
        self._base_url = _checked_base_url(base_url)
        self._credentials = credentials if credentials is not None else Credentials.from_env()
        if isinstance(timeout, Timeouts):
            self._timeouts = timeout
        else:
            self._timeouts = Timeouts(connect=min(10.0, timeout), read=timeout)
        self._retry = retry
        self._session = _Session()
        self._session.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._downloader = Downloader(
            self._session,
            timeouts=(self._timeouts.connect, self._timeouts.read),
            total_timeout=download_timeout,
            retry=retry,
        )
        self._max_download_bytes = max_download_bytes
        # "path" or "query": which form of query by external_task_id the server answered.
        self._external_id_form: str | None = None

    def __repr__(self) -> str:
        return f"KlingClient(base_url={self._base_url!r})"

    def __enter__(self) -> KlingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    # -- calls ---------------------------------------------------------------------------------

    def create(self, request: ExpandRequest) -> Task:
        """Create the task, or return the one that already exists under its external_task_id.

        After an ambiguous failure (timeout, connection reset, 5xx, garbled answer) the task is
        looked up by its external_task_id before anything is posted again; an answer 1200/1201
        (such as "external_task_id already used") is also checked against that lookup.
        """
        body = request.body()
        external_id = body["external_task_id"]
        logger.debug(
            "create external_task_id=%s image=%s n=%d",
            external_id,
            _describe_image(request.image),
            request.n,
        )
        maybe_created = False

        def attempt() -> Task:
            nonlocal maybe_created
            if maybe_created:
                existing = self._find_by_external_id(external_id)
                if existing is not None:
                    logger.info("create %s: found the task already created", external_id)
                    return existing
            try:
                return self._post_create(body, external_id)
            except KlingError as error:
                maybe_created = maybe_created or _is_ambiguous(error)
                raise

        return retrying(attempt, self._retry, self._retry_delay, what=f"create {external_id}")

    def get(self, task_id: str) -> Task:
        """The task with this `task_id`."""
        path = f"{EXPAND_PATH}/{quote(task_id, safe='')}"
        data = self._with_retries(functools.partial(self._request_once, "GET", path))
        tasks = _tasks_in(data)
        matching = [task for task in tasks if task.task_id == task_id]
        if matching:
            return matching[0]
        if len(tasks) == 1:
            return tasks[0]
        raise NotFoundError(f"no task {task_id} in the answer")

    def get_by_external_id(self, external_task_id: str) -> Task:
        """The task created with this `external_task_id`.

        Tries the path form first, then the query-string form, and remembers which one the
        server answered for the next calls.
        """

        def lookup() -> Task:
            task = self._find_by_external_id(external_task_id)
            if task is None:
                raise NotFoundError(f"no task with external_task_id {external_task_id}")
            return task

        return self._with_retries(lookup)

    def list(self, page_size: int = 30) -> Iterator[Task]:
        """Every task, newest first, walking the pages until a short or empty one."""
        low, high = limits.PAGE_SIZE_RANGE
        if not low <= page_size <= high:
            raise ValueError(f"page_size {page_size} is outside {low}..{high}")
        seen: set[str] = set()
        first_page, last_page = limits.PAGE_NUM_RANGE
        for page in range(first_page, last_page + 1):
            params = {"pageNum": page, "pageSize": page_size}
            fetch = functools.partial(self._request_once, "GET", EXPAND_PATH, params=params)
            tasks = _tasks_in(self._with_retries(fetch))
            for task in tasks:
                # Tasks created while walking shift the pages; do not yield one twice.
                if task.task_id not in seen:
                    seen.add(task.task_id)
                    yield task
            if len(tasks) < page_size:
                return

    def wait(
        self,
        task: Task | str,
        *,
        timeout: float = 6 * 3600.0,
        cancel: threading.Event | None = None,
        schedule: PollSchedule = PollSchedule(),
    ) -> Task:
        """Poll until the task finishes, and return it if it succeeded.

        Raises TaskFailedError (carrying `task_status_msg`) if it failed, WaitTimeout after
        `timeout` seconds, Cancelled as soon as `cancel` is set. Transient errors while polling
        are logged and polling goes on; others are raised.
        """
        last = task if isinstance(task, Task) else None
        task_id = task.task_id if isinstance(task, Task) else task
        deadline = time.monotonic() + timeout
        delays = schedule.delays()
        poll_now = last is None
        while True:
            if last is not None and last.finished:
                if last.failed:
                    raise TaskFailedError(last)
                return last
            if not poll_now:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(task_id, timeout, last)
                delay = min(next(delays), remaining)
                if cancel is not None:
                    if cancel.wait(delay):
                        raise Cancelled(f"waiting for task {task_id} was cancelled")
                else:
                    time.sleep(delay)
            poll_now = False
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"waiting for task {task_id} was cancelled")
            try:
                last = self.get(task_id)
            except KlingError as error:
                if not error.retryable:
                    raise
                logger.warning("polling task %s: %s; polling on", task_id, error)

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

    # -- internals -----------------------------------------------------------------------------

    def _post_create(self, body: dict[str, Any], external_id: str) -> Task:
        """Post the create once; on 1200/1201, return the task if it already exists."""
        try:
            data = self._request_once("POST", EXPAND_PATH, body=body)
        except InvalidRequestError:
            existing = self._find_by_external_id(external_id)
            if existing is None:
                raise
            logger.info("create %s: the external_task_id is taken by the same task", external_id)
            return existing
        tasks = _tasks_in(data)
        if len(tasks) != 1:
            # Accepted (code 0) but unreadable: the task may exist, so look it up on the retry.
            raise ProtocolError(
                f"create answered {len(tasks)} tasks instead of one", retryable=True
            )
        return tasks[0]

    def _find_by_external_id(self, external_id: str) -> Task | None:
        """One lookup by external_task_id (no retries); None when the task does not exist."""
        forms = [self._external_id_form] if self._external_id_form else ["path", "query"]
        for form in forms:
            try:
                task = self._query_external_id(form, external_id)
            except (NotFoundError, InvalidRequestError):
                continue
            if self._external_id_form != form:
                logger.debug("the server answers queries by external_task_id in %s form", form)
                self._external_id_form = form
            return task
        return None

    def _query_external_id(self, form: str, external_id: str) -> Task:
        if form == "path":
            data = self._request_once("GET", f"{EXPAND_PATH}/{quote(external_id, safe='')}")
            tasks = _tasks_in(data)
            # A server that does not echo task_info still answered for this id.
            if len(tasks) == 1 and tasks[0].external_task_id is None:
                return tasks[0]
        else:
            data = self._request_once("GET", EXPAND_PATH, params={"external_task_id": external_id})
            tasks = _tasks_in(data)
        # A server that ignores the query parameter answers a page of other tasks: filter.
        for task in tasks:
            if task.external_task_id == external_id:
                return task
        raise NotFoundError(f"no task with external_task_id {external_id}")

    def _with_retries(self, call: Callable[[], T]) -> T:
        """`call()`, retried under the policy while it raises retryable errors."""
        return retrying(call, self._retry, self._retry_delay, what="request")

    def _retry_delay(self, error: Exception, budget: RetryBudget) -> float | None:
        """How long to wait before retrying after `error`; None when it must not be retried."""
        if not isinstance(error, KlingError) or not error.retryable:
            return None
        minimum = 0.0
        if isinstance(error, ConcurrencyLimitedError):
            if not self._retry.retry_concurrency:
                return None
            minimum = self._retry.concurrency_delay
        retry_after = error.retry_after if isinstance(error, KlingAPIError) else None
        return budget.next_delay(retry_after=retry_after, minimum=minimum)

    def _request_once(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """One request (plus one re-signed retry on 1003/1004); the envelope's `data`."""
        payload = None if body is None else json.dumps(body).encode("utf-8")
        timeout = self._timeouts.for_body(len(payload or b""))
        resigned = False
        while True:
            headers = {"Authorization": f"Bearer {self._credentials.bearer_token()}"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            response = self._send(method, path, params, payload, headers, timeout)
            try:
                return self._parse(method, path, response)
            except AuthError as error:
                if resigned or not error.token_expired or not self._credentials.can_refresh:
                    raise
                logger.info("%s %s: token refused (code %s); re-signing", method, path, error.code)
                self._credentials.refresh()
                resigned = True

    def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        payload: bytes | None,
        headers: dict[str, str],
        timeout: tuple[float, float],
    ) -> requests.Response:
        started = time.monotonic()
        try:
            response = self._session.request(
                method,
                self._base_url + path,
                params=params,
                data=payload,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            never_sent = _never_sent(exc)
            reason = self._credentials.redact(str(exc))
            logger.debug("%s %s failed: %s: %s", method, path, type(exc).__name__, reason)
            raise TransportError(
                f"{method} {path}: {type(exc).__name__}: {reason}", maybe_sent=not never_sent
            ) from None
        logger.debug(
            "%s %s -> HTTP %d in %.3f s",
            method,
            path,
            response.status_code,
            time.monotonic() - started,
        )
        return response

    def _parse(self, method: str, path: str, response: requests.Response) -> Any:
        """The `data` of a success envelope; the typed error for anything else."""
        status = response.status_code
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        code = envelope.get("code") if isinstance(envelope, dict) else None
        if not isinstance(envelope, dict) or not isinstance(code, int) or isinstance(code, bool):
            if status == 404 or status >= 500:
                raise api_error(
                    f"{method} {path}: HTTP {status} without a Kling answer",
                    http_status=status,
                    code=None,
                    request_id=None,
                )
            raise ProtocolError(
                f"{method} {path}: HTTP {status}, the answer is not Kling's JSON envelope",
                http_status=status,
                retryable=200 <= status < 300,
            )
        request_id = envelope.get("request_id")
        request_id = None if request_id is None else str(request_id)
        logger.debug("%s %s: code %d request_id %s", method, path, code, request_id)
        if code != 0:
            message = self._credentials.redact(str(envelope.get("message") or "")) or "no message"
            error = api_error(
                f"{method} {path}: {message}",
                http_status=status,
                code=code,
                request_id=request_id,
            )
            error.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise error
        if not 200 <= status < 300:
            raise ProtocolError(
                f"{method} {path}: HTTP {status} with code 0", http_status=status, retryable=True
            )
        return envelope.get("data")


class _Session(requests.Session):
    """A requests session that reads the proxy and CA settings of the environment once per
    host, not on every call (polling makes many, and each scanned the whole environment)."""

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], Any] = {}

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        parts = urlsplit(url.decode() if isinstance(url, bytes) else url or "")
        key = (parts.scheme, parts.netloc, repr(proxies), stream, verify, cert)
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(
                url, proxies, stream, verify, cert
            )
        return dict(self._environment[key])


def _checked_base_url(base_url: str) -> str:
    """`base_url` without a trailing slash; ValueError unless it is http(s)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("tokens will travel unencrypted to %s (plain http)", parts.hostname)
    return base_url.rstrip("/")


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the connection was never made, so the server cannot have seen the request."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


def _tasks_in(data: Any) -> list[Task]:
    """The tasks in an envelope's `data`: an object, a list of them, or nothing."""
    if data is None:
        return []
    if isinstance(data, dict):
        return [Task.from_json(data)]
    if isinstance(data, list):
        return [Task.from_json(item) for item in data]
    raise ProtocolError(f"data is a {type(data).__name__}, not a task or a list of tasks")
