"""The HTTP transport to a Kling-compatible server: one pooled session, tokens, one request
function, retries through the one retry engine (kling/retry.py), and the envelope's mapping to
the typed errors of kling/errors.py, keyed on Kling's `code`.

Secrets and tokens appear in no log line, exception message or repr.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.errors import (
    AuthError,
    ConcurrencyLimitedError,
    KlingAPIError,
    KlingError,
    ProtocolError,
    TransportError,
    api_error,
)
from kling_expand_plugin.kling.retry import RetryBudget, RetryPolicy, retry_after_seconds, retrying

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"

log = logging.getLogger(__name__)

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


DEFAULT_TIMEOUTS = Timeouts()


class Transport:
    """Requests to one server over one pooled requests.Session; thread-safe."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        timeouts: Timeouts,
        pool_size: int,
        retry: RetryPolicy,
    ) -> None:
        self.base_url = _checked_base_url(base_url)
        self.timeouts = timeouts
        self.retry = retry
        self._credentials = credentials
        self.session = _Session()
        self.session.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def retried(self, call: Callable[[], T], *, what: str = "request") -> T:
        """`call()`, retried under the policy while it raises retryable errors."""
        return retrying(call, self.retry, self.retry_delay, what=what)

    def retry_delay(self, error: Exception, budget: RetryBudget) -> float | None:
        """How long to wait before retrying after `error`; None when it must not be retried."""
        if not isinstance(error, KlingError) or not error.retryable:
            return None
        minimum = 0.0
        if isinstance(error, ConcurrencyLimitedError):
            if not self.retry.retry_concurrency:
                return None
            minimum = self.retry.concurrency_delay
        retry_after = error.retry_after if isinstance(error, KlingAPIError) else None
        return budget.next_delay(retry_after=retry_after, minimum=minimum)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """One request (plus one re-signed retry on 1003/1004); the envelope's `data`."""
        payload = None if body is None else json.dumps(body).encode("utf-8")
        timeout = self.timeouts.for_body(len(payload or b""))
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
                log.info("%s %s: token refused (code %s); re-signing", method, path, error.code)
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
            response = self.session.request(
                method,
                self.base_url + path,
                params=params,
                data=payload,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            never_sent = _never_sent(exc)
            reason = self._credentials.redact(str(exc))
            log.debug("%s %s failed: %s: %s", method, path, type(exc).__name__, reason)
            raise TransportError(
                f"{method} {path}: {type(exc).__name__}: {reason}", maybe_sent=not never_sent
            ) from None
        log.debug(
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
        log.debug("%s %s: code %d request_id %s", method, path, code, request_id)
        if code != 0:
            message = self._credentials.redact(str(envelope.get("message") or "")) or "no message"
            raise api_error(  # raised, not kept in a local: that would be a reference cycle
                f"{method} {path}: {message}",
                http_status=status,
                code=code,
                request_id=request_id,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
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
        log.warning("tokens will travel unencrypted to %s (plain http)", parts.hostname)
    return base_url.rstrip("/")


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the connection was never made, so the server cannot have seen the request."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False
