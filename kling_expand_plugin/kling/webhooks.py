"""Standard Webhooks signing: `sign` a callback body, `verify` a received one.

Signature: base64(HMAC-SHA256(key = base64decode(secret without "whsec_"),
"{id}.{timestamp}.{raw body}")), sent as `webhook-signature: v1,<base64>` (several
space-separated during a secret rotation; one match suffices).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(ValueError):
    """A received webhook failed verification; the message says why (never the secret), and
    `reason` in a word: unsigned, bad_timestamp, stale_timestamp or bad_signature."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not valid base64 (after the whsec_ prefix)") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message: "v1,<base64>"."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = 300,
) -> tuple[str, int]:
    """(webhook-id, timestamp) of a delivery whose headers carry a valid, fresh signature of
    `body`; WebhookVerificationError otherwise."""
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        if not lowered.get(name):
            raise WebhookVerificationError(f"missing {name} header", "unsigned")
    msg_id = lowered["webhook-id"]
    try:
        timestamp = int(lowered["webhook-timestamp"])
    except ValueError:
        raise WebhookVerificationError(
            "webhook-timestamp is not an integer", "bad_timestamp"
        ) from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - timestamp:+.0f} s away from now "
            f"(more than {tolerance:g} s)",
            "stale_timestamp",
        )
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in lowered["webhook-signature"].split():
        if hmac.compare_digest(candidate.encode(), expected):
            return msg_id, timestamp
    raise WebhookVerificationError("no webhook-signature matches the body", "bad_signature")
