"""The client's errors: one hierarchy, keyed on Kling's `code` (see docs/kling-api.md).

Every error says whether retrying can help (`retryable`). API errors carry the HTTP status, the
code, the server's message and its `request_id`. No error ever holds a secret or a token.
"""

from __future__ import annotations

from typing import Any

from kling_expand_plugin.kling.models import Task


class KlingError(Exception):
    """Base of every error this package raises about Kling."""

    retryable: bool = False


class CredentialsError(KlingError):
    """Credentials are missing or incomplete."""


class TransportError(KlingError):
    """The request did not get an answer: connection refused or reset, or a timeout.

    `maybe_sent` is False only when the request certainly never reached the server (the
    connection was not made); a create that fails with `maybe_sent` may have been accepted.
    """

    retryable = True

    def __init__(self, message: str, *, maybe_sent: bool = True) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (str(self),), {"maybe_sent": self.maybe_sent}))


class ProtocolError(KlingError):
    """The server answered something that is not the documented envelope or task."""

    def __init__(self, message: str, *, http_status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.http_status = http_status
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {"http_status": self.http_status, "retryable": self.retryable}
        return (_rebuild, (type(self), (str(self),), kwargs))


class KlingAPIError(KlingError):
    """The API answered with a non-zero `code` (or an error status without one)."""

    retry_after: float | None = None
    """The answer's `Retry-After`, in seconds, when it had one."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        return (
            f"{self.message} (code {self.code}, HTTP {self.http_status}, "
            f"request_id {self.request_id})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {"http_status": self.http_status, "code": self.code, "request_id": self.request_id}
        return (_rebuild, (type(self), (self.message,), kwargs))


class AuthError(KlingAPIError):
    """1000-1004: the token or key was refused."""

    @property
    def token_expired(self) -> bool:
        """1003/1004: the token is not yet valid or has expired; re-signing it may help."""
        return self.code in (1003, 1004)


class AccountError(KlingAPIError):
    """1100-1102: the account has a problem, is in arrears, or its resource pack is used up."""


class PermissionDeniedError(KlingAPIError):
    """1103 (no permission for this API or model) and 1304 (IP allow-list policy)."""


class InvalidRequestError(KlingAPIError):
    """1200-1201: the request or one of its parameters is invalid; `message` says which."""


class NotFoundError(KlingAPIError):
    """1202-1203: the method, or the resource (such as the task), does not exist."""


class ContentPolicyError(KlingAPIError):
    """1300-1301: the platform policy or content safety was triggered."""


class RateLimitedError(KlingAPIError):
    """1302: requests too fast; retry with backoff."""

    retryable = True


class ConcurrencyLimitedError(KlingAPIError):
    """1303: too many tasks running at once for the account; back off (at least 1 s), resubmit."""

    retryable = True


class ServerError(KlingAPIError):
    """5000-5002 (or a 5xx without a code): internal error, maintenance, internal timeout."""

    retryable = True


_BY_CODE: dict[int, type[KlingAPIError]] = {
    **dict.fromkeys((1000, 1001, 1002, 1003, 1004), AuthError),
    **dict.fromkeys((1100, 1101, 1102), AccountError),
    **dict.fromkeys((1103, 1304), PermissionDeniedError),
    **dict.fromkeys((1200, 1201), InvalidRequestError),
    **dict.fromkeys((1202, 1203), NotFoundError),
    **dict.fromkeys((1300, 1301), ContentPolicyError),
    1302: RateLimitedError,
    1303: ConcurrencyLimitedError,
    **dict.fromkeys((5000, 5001, 5002), ServerError),
}

# Undocumented codes fall back on their family (the code's thousands and hundreds).
_BY_FAMILY: dict[int, type[KlingAPIError]] = {
    10: AuthError,
    11: AccountError,
    12: InvalidRequestError,
    50: ServerError,
}


def error_class_for(code: int | None, http_status: int | None) -> type[KlingAPIError]:
    """The error class for a `code`; the HTTP status is consulted only when there is no code."""
    if code is not None:
        if code in _BY_CODE:
            return _BY_CODE[code]
        return _BY_FAMILY.get(code // 100, KlingAPIError)
    if http_status == 404:
        return NotFoundError
    if http_status is not None and http_status >= 500:
        return ServerError
    return KlingAPIError


def api_error(
    message: str,
    *,
    http_status: int | None,
    code: int | None,
    request_id: str | None,
    retry_after: float | None = None,
) -> KlingAPIError:
    """The typed error for an answer with a non-zero `code`."""
    error = error_class_for(code, http_status)(
        message, http_status=http_status, code=code, request_id=request_id
    )
    error.retry_after = retry_after
    return error


class TaskFailedError(KlingError):
    """The task ended `failed`; the reason is the task's `task_status_msg`."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.task_id} failed: {task.status_msg or 'no reason given'}")
        self.task = task
        self.task_status_msg = task.status_msg

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task,))


class WaitTimeout(KlingError):
    """The task did not finish before the wait's deadline; `task` is the last state seen."""

    def __init__(self, task_id: str, timeout: float, task: Task | None = None) -> None:
        super().__init__(f"task {task_id} not finished after {timeout:g} s")
        self.task_id = task_id
        self.timeout = timeout
        self.task = task

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_id, self.timeout, self.task))


class Cancelled(KlingError):
    """The caller cancelled the wait."""


class DownloadError(KlingError):
    """A result could not be downloaded, or what arrived is not a usable image."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (str(self),), {"retryable": self.retryable}))


def _rebuild(cls: type[KlingError], args: tuple[Any, ...], kwargs: dict[str, Any]) -> KlingError:
    """Unpickle an error whose constructor takes keyword arguments."""
    return cls(*args, **kwargs)
