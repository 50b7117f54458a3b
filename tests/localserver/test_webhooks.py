"""Standard Webhooks signing and verification, starting with the contract's test vector."""

from __future__ import annotations

import pytest

from kling_expand_plugin.kling.webhooks import WebhookVerificationError, sign, verify

SECRET = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI="
MSG_ID = "9876543210"
TIMESTAMP = 1781080794
BODY = (
    b'{"id":"1234567890","status":"succeeded","message":"",'
    b'"create_time":1781080778802,"update_time":1781080794151}'
)
SIGNATURE = "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4="


def _headers(signature: str = SIGNATURE, timestamp: int = TIMESTAMP) -> dict[str, str]:
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_contract_test_vector_signs():
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE


def test_contract_test_vector_verifies():
    verify(SECRET, _headers(), BODY, now=TIMESTAMP + 10)


def test_header_names_are_case_insensitive():
    headers = {name.title(): value for name, value in _headers().items()}
    verify(SECRET, headers, BODY, now=TIMESTAMP)


def test_one_matching_signature_among_several_suffices():
    other = sign("whsec_" + "b3RoZXJzZWNyZXQ=", MSG_ID, TIMESTAMP, BODY)
    verify(SECRET, _headers(f"{other} {SIGNATURE}"), BODY, now=TIMESTAMP)


def test_secret_without_prefix_works_alike():
    assert sign(SECRET.removeprefix("whsec_"), MSG_ID, TIMESTAMP, BODY) == SIGNATURE


@pytest.mark.parametrize(
    ("headers", "body", "now", "reason"),
    [
        (_headers(), BODY + b" ", TIMESTAMP, "no webhook-signature matches"),
        (_headers("v1,AAAA"), BODY, TIMESTAMP, "no webhook-signature matches"),
        (_headers(SIGNATURE.replace("v1,", "v2,")), BODY, TIMESTAMP, "no webhook-signature"),
        (_headers(), BODY, TIMESTAMP + 301, "away from now"),
        (_headers(), BODY, TIMESTAMP - 301, "away from now"),
        ({"webhook-id": MSG_ID, "webhook-signature": SIGNATURE}, BODY, TIMESTAMP, "timestamp"),
        ({**_headers(), "webhook-id": ""}, BODY, TIMESTAMP, "webhook-id"),
        ({**_headers(), "webhook-timestamp": "soon"}, BODY, TIMESTAMP, "not an integer"),
    ],
)
def test_verification_failures(headers, body, now, reason):
    with pytest.raises(WebhookVerificationError, match=reason) as caught:
        verify(SECRET, headers, body, now=now)
    assert SECRET.removeprefix("whsec_") not in str(caught.value)


def test_tolerance_is_configurable():
    verify(SECRET, _headers(), BODY, now=TIMESTAMP + 299)
    with pytest.raises(WebhookVerificationError, match="away from now"):
        verify(SECRET, _headers(), BODY, now=TIMESTAMP + 20, tolerance=10)


def test_malformed_secret_is_a_clear_error_without_the_secret():
    with pytest.raises(ValueError, match="not valid base64") as caught:
        sign("whsec_not*base64!", MSG_ID, TIMESTAMP, BODY)
    assert "not*base64!" not in str(caught.value)
