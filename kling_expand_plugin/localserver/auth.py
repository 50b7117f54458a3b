"""Checking a request's bearer token: a JWT signed with the secret key, or an API key."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

import jwt

from kling_expand_plugin.localserver.errors import ApiError


class TokenChecker:
    """Accepts the tokens of one account: JWTs (HS256, `iss` = access key) and API keys.

    With no keys at all it is open: any non-empty bearer token passes.
    """

    def __init__(
        self,
        access_key: str | None = None,
        secret_key: str | None = None,
        api_keys: Iterable[str] = (),
    ) -> None:
        if (access_key is None) != (secret_key is None):
            raise ValueError("access_key and secret_key must be given together")
        self._access_key = access_key
        self._secret_key = secret_key
        self._api_keys = tuple(api_keys)

    def __repr__(self) -> str:
        return f"TokenChecker(access_key={self._access_key!r}, api_keys={len(self._api_keys)})"

    @property
    def is_open(self) -> bool:
        """True when no key is configured and any bearer token is accepted."""
        return self._access_key is None and not self._api_keys

    def check(self, authorization: str | None) -> None:
        """Raise ApiError (HTTP 401, code 1000..1004) unless the Authorization header is good."""
        if authorization is None or not authorization.strip():
            raise ApiError(1001, 401, "Authorization header is empty")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(1002, 401, "Authorization header must be 'Bearer <token>'")
        if self.is_open:
            return
        if any(hmac.compare_digest(token.encode(), key.encode()) for key in self._api_keys):
            return
        if self._access_key is None or self._secret_key is None:
            raise ApiError(1002, 401, "token is not a known API key")
        self._check_jwt(token, self._access_key, self._secret_key)

    @staticmethod
    def _check_jwt(token: str, access_key: str, secret_key: str) -> None:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise ApiError(1002, 401, "token is neither a known API key nor a JWT") from None
        if claims.get("iss") != access_key:
            raise ApiError(1000, 401, "authentication failed: iss is not a known access key")
        try:
            jwt.decode(token, secret_key, algorithms=["HS256"], options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise ApiError(1004, 401, "token expired (exp is in the past)") from None
        except jwt.ImmatureSignatureError:
            raise ApiError(1003, 401, "token is not valid yet (nbf is in the future)") from None
        except jwt.InvalidSignatureError:
            raise ApiError(1002, 401, "token signature is invalid") from None
        except jwt.MissingRequiredClaimError:
            raise ApiError(1002, 401, "token has no exp claim") from None
        except jwt.InvalidTokenError as error:
            raise ApiError(1002, 401, f"token is invalid: {error}") from None
