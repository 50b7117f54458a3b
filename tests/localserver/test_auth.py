"""Token checking: JWT (signature, iss, nbf, exp) and API keys; every failure is HTTP 401."""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
import pytest
import requests

from .conftest import ACCESS_KEY, EXPAND, SECRET_KEY, auth_headers, make_token


def _code(api, headers):
    response = api.get(f"{EXPAND}?pageNum=1&pageSize=1", headers=headers)
    payload = response.json()
    assert set(payload) == {"code", "message", "request_id", "data"}
    return response.status_code, payload["code"], payload["message"]


def test_valid_jwt_is_accepted(api):
    assert _code(api, auth_headers()) == (200, 0, "SUCCEED")


def _bearer(**token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(**token)}"}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (lambda: {}, 1001),
        (lambda: {"Authorization": ""}, 1001),
        (lambda: {"Authorization": "Bearer"}, 1002),
        (lambda: {"Authorization": "Basic abc"}, 1002),
        (lambda: {"Authorization": "Bearer not-a-jwt"}, 1002),
        (lambda: _bearer(secret="wrong-secret-0123456789abcdef0123"), 1002),
        (lambda: _bearer(iss="someone-else"), 1000),
        (lambda: _bearer(exp_in=-10, nbf_in=-100), 1004),
        (lambda: _bearer(nbf_in=120, exp_in=1800), 1003),
    ],
    ids=[
        "no-header",
        "empty",
        "bearer-without-token",
        "other-scheme",
        "garbage",
        "wrong-secret",
        "unknown-iss",
        "expired",
        "not-yet-valid",
    ],
)
def test_bad_tokens_answer_401_with_their_code(api, headers, code):
    # Headers are made in the test, not at collection: a token's times count from now.
    status, answered, message = _code(api, headers())
    assert (status, answered) == (401, code)
    assert SECRET_KEY not in message


def test_jwt_without_exp_is_invalid(api):
    token = make_token(claims={"iss": ACCESS_KEY, "nbf": int(time.time()) - 5})
    assert _code(api, auth_headers(token))[:2] == (401, 1002)


def test_alg_none_is_refused(api):
    now = int(time.time())
    token = jwt.encode({"iss": ACCESS_KEY, "exp": now + 60}, None, algorithm="none")
    assert _code(api, auth_headers(token))[:2] == (401, 1002)


def test_auth_applies_to_create_and_query(api):
    assert api.create({}, headers={}).status_code == 401
    assert api.get(f"{EXPAND}/123", headers={}).json()["code"] == 1001


def test_api_key_mode(make_api):
    api = make_api(access_key=None, secret_key=None, api_keys=("key-one", "key-two"))
    assert _code(api, {"Authorization": "Bearer key-two"})[:2] == (200, 0)
    assert _code(api, {"Authorization": "Bearer key-three"})[:2] == (401, 1002)
    assert _code(api, auth_headers())[:2] == (401, 1002)  # a JWT with no JWT keys configured


def test_api_keys_beside_jwt(make_api):
    api = make_api(api_keys=("key-one",))
    assert _code(api, {"Authorization": "Bearer key-one"})[:2] == (200, 0)
    assert _code(api, auth_headers())[:2] == (200, 0)


def test_open_mode_takes_any_token_but_not_none(make_api):
    api = make_api(access_key=None, secret_key=None)
    assert _code(api, {"Authorization": "Bearer anything"})[:2] == (200, 0)
    assert _code(api, {})[:2] == (401, 1001)


def test_repr_hides_the_secret(start_server):
    server = start_server()
    assert SECRET_KEY not in repr(server)
    assert SECRET_KEY not in repr(server.auth)


def test_a_server_with_its_own_keys_opens_only_to_the_credentials_it_hands_back():
    from kling_expand_plugin.localserver import with_own_keys

    (first, credentials), (second, _) = with_own_keys(), with_own_keys()
    with first, second, requests.Session() as session:
        listing = f"{EXPAND}?pageNum=1&pageSize=1"
        token = {"Authorization": f"Bearer {credentials.bearer_token()}"}
        assert session.get(first.url + listing, headers=token).json()["code"] == 0
        refused = session.get(second.url + listing, headers=token)
        assert (refused.status_code, refused.json()["code"]) == (401, 1000)  # each its own keys
    assert not re.search(r"[0-9a-f]{32}", repr(first) + repr(credentials))  # the secret key
