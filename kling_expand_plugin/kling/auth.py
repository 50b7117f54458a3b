"""Kling credentials and the bearer tokens made from them.

Two forms: an access key + secret key, from which a short-lived JWT is signed (HS256, `iss` the
access key, `exp` now + 1800 s, `nbf` now - 5 s), or an API key that is itself the token.
A signed token is reused until shortly before it expires. Secrets never appear in a repr, and
credentials refuse to be pickled.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import NoReturn

import jwt

from kling_expand_plugin.kling.errors import CredentialsError

TOKEN_LIFETIME = 1800.0
"""Seconds a signed token is valid for (`exp` = now + this)."""

NOT_BEFORE_SLACK = 5.0
"""`nbf` = now - this, so that a server clock slightly behind ours still accepts the token."""

REFRESH_MARGIN = 60.0
"""A cached token is re-signed this many seconds before it expires."""

ENV_ACCESS_KEY = "KLING_ACCESS_KEY"
ENV_SECRET_KEY = "KLING_SECRET_KEY"
ENV_API_KEY = "KLING_API_KEY"

_REDACTED = "***"
SHORT_SECRET = 8

# The keys are Kling's to choose: a short test key ("sk") needs no warning on every request.
if hasattr(jwt, "InsecureKeyLengthWarning"):
    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)


class Credentials:
    """An access key + secret key, or an API key; hands out bearer tokens."""

    def __init__(
        self,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        api_key: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` gives the Unix time used for the token's claims (tests inject one)."""
        access_key = (access_key or "").strip()
        secret_key = (secret_key or "").strip()
        api_key = (api_key or "").strip()
        if api_key and (access_key or secret_key):
            raise CredentialsError("give either an access key and secret key, or an API key")
        if not api_key:
            missing = [
                name
                for name, value in (("access_key", access_key), ("secret_key", secret_key))
                if not value
            ]
            if missing:
                raise CredentialsError(
                    f"Kling credentials incomplete: missing {' and '.join(missing)} "
                    "(or give an API key instead)"
                )
        self._access_key = access_key
        self._secret_key = secret_key
        self._api_key = api_key
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Credentials from KLING_ACCESS_KEY + KLING_SECRET_KEY, or else KLING_API_KEY."""
        env = os.environ if environ is None else environ
        access_key = env.get(ENV_ACCESS_KEY, "").strip()
        secret_key = env.get(ENV_SECRET_KEY, "").strip()
        api_key = env.get(ENV_API_KEY, "").strip()
        if access_key and secret_key:
            return cls(access_key, secret_key)
        if api_key:
            return cls(api_key=api_key)
        if access_key or secret_key:
            missing = ENV_SECRET_KEY if access_key else ENV_ACCESS_KEY
            raise CredentialsError(
                f"{missing} is not set ({ENV_ACCESS_KEY} and {ENV_SECRET_KEY} go together)"
            )
        raise CredentialsError(
            f"no Kling credentials: set {ENV_ACCESS_KEY} and {ENV_SECRET_KEY}, or {ENV_API_KEY}"
        )

    @property
    def access_key(self) -> str | None:
        """The access key (an identifier, not a secret); None in the API-key form."""
        return self._access_key or None

    @property
    def can_refresh(self) -> bool:
        """True when a fresh token can be signed (the access-key form)."""
        return not self._api_key

    def bearer_token(self) -> str:
        """The token for `Authorization: Bearer`, signed anew shortly before it expires."""
        if self._api_key:
            return self._api_key
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - REFRESH_MARGIN:
                self._sign(now)
            assert self._token is not None
            return self._token

    def refresh(self) -> str:
        """Sign a new token now, whatever the cached one's age (after a 1003/1004 answer)."""
        if self._api_key:
            return self._api_key
        with self._lock:
            self._sign(self._clock())
            assert self._token is not None
            return self._token

    def redact(self, text: str) -> str:
        """`text` with the secret key, the API key and the current token replaced by ***.

        A secret shorter than 8 characters (a test key such as "sk") is replaced only where it
        stands alone, not inside words: replacing "x" everywhere would garble every message.
        """
        for secret in (self._secret_key, self._api_key, self._token):
            if secret and len(secret) >= SHORT_SECRET:
                text = text.replace(secret, _REDACTED)
            elif secret:
                alone = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
                text = re.sub(alone, _REDACTED, text)
        return text

    def _sign(self, now: float) -> None:
        claims = {
            "iss": self._access_key,
            "exp": int(now + TOKEN_LIFETIME),
            "nbf": int(now - NOT_BEFORE_SLACK),
        }
        headers = {"alg": "HS256", "typ": "JWT"}
        self._token = jwt.encode(claims, self._secret_key, algorithm="HS256", headers=headers)
        self._expires_at = now + TOKEN_LIFETIME

    def __repr__(self) -> str:
        if self._api_key:
            return f"Credentials(api_key={_REDACTED})"
        return f"Credentials(access_key={self._access_key!r}, secret_key={_REDACTED})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Credentials hold a secret and cannot be pickled")
