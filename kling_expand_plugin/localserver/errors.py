"""The error a request handler raises to answer with a Kling error code."""

from __future__ import annotations


class ApiError(Exception):
    """A Kling error answer: `code` in the envelope, `status` as the HTTP status."""

    def __init__(self, code: int, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


def invalid_parameter(message: str) -> ApiError:
    """1201, HTTP 400: a field breaks a rule; `message` names the field."""
    return ApiError(1201, 400, message)


def invalid_request(message: str, status: int = 400) -> ApiError:
    """1200: the request as a whole is unusable (not JSON, too large, ...)."""
    return ApiError(1200, status, message)
