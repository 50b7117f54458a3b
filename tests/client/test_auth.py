"""Credentials and tokens: JWT claims, reuse, re-signing, the environment, no leaks."""

from __future__ import annotations

import copy
import pickle
import time

import jwt
import pytest

from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import KlingClient
from kling_expand_plugin.kling.errors import AuthError, CredentialsError

from .conftest import ACCESS_KEY, API_KEY, SECRET_KEY


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_is_the_documented_jwt():
    clock = FakeClock(1_700_000_000.0)
    token = Credentials(ACCESS_KEY, SECRET_KEY, clock=clock).bearer_token()
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(
        token, SECRET_KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False}
    )
    assert claims == {"iss": ACCESS_KEY, "exp": 1_700_001_800, "nbf": 1_699_999_995}


def test_token_is_reused_until_shortly_before_expiry():
    clock = FakeClock(1_700_000_000.0)
    creds = Credentials(ACCESS_KEY, SECRET_KEY, clock=clock)
    first = creds.bearer_token()
    clock.now += 1700
    assert creds.bearer_token() == first
    clock.now += 50  # 50 s before exp: inside the refresh margin
    second = creds.bearer_token()
    assert second != first
    assert creds.bearer_token() == second
    clock.now += 1
    assert creds.refresh() != second


def test_api_key_is_the_token():
    creds = Credentials(api_key=API_KEY)
    assert creds.bearer_token() == API_KEY
    assert creds.refresh() == API_KEY
    assert not creds.can_refresh


def test_incomplete_credentials_name_what_is_missing():
    with pytest.raises(CredentialsError, match="missing secret_key"):
        Credentials(ACCESS_KEY)
    with pytest.raises(CredentialsError, match="missing access_key and secret_key"):
        Credentials()
    with pytest.raises(CredentialsError, match="either"):
        Credentials(ACCESS_KEY, SECRET_KEY, api_key=API_KEY)


def test_from_env():
    both = Credentials.from_env({"KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": SECRET_KEY})
    assert both.access_key == ACCESS_KEY and both.can_refresh
    assert Credentials.from_env({"KLING_API_KEY": API_KEY}).bearer_token() == API_KEY
    with pytest.raises(CredentialsError, match="KLING_SECRET_KEY is not set"):
        Credentials.from_env({"KLING_ACCESS_KEY": ACCESS_KEY})
    with pytest.raises(CredentialsError, match="KLING_ACCESS_KEY is not set"):
        Credentials.from_env({"KLING_SECRET_KEY": SECRET_KEY})
    with pytest.raises(CredentialsError, match="KLING_API_KEY"):
        Credentials.from_env({})


def test_secrets_stay_out_of_repr_pickle_and_copies():
    creds = Credentials(ACCESS_KEY, SECRET_KEY)
    token = creds.bearer_token()
    for text in (repr(creds), str(creds)):
        assert SECRET_KEY not in text and token not in text
    assert API_KEY not in repr(Credentials(api_key=API_KEY))
    with pytest.raises(TypeError):
        pickle.dumps(creds)
    with pytest.raises(TypeError):
        copy.deepcopy(creds)
    assert creds.redact(f"a {SECRET_KEY} b {token}") == "a *** b ***"


def test_token_refresh_across_expiry(local_server, make_client):
    """A token that expires between calls is re-signed before use; the server accepts both."""
    server = local_server()
    clock = FakeClock(time.time() - 1790)  # the first token expires 10 s from real now
    creds = Credentials(ACCESS_KEY, SECRET_KEY, clock=clock)
    client = make_client(server.url, credentials=creds)
    list(client.list())
    first = creds.bearer_token()
    clock.now = time.time()  # 30 minutes later, by the client's clock: past the margin
    list(client.list())
    assert creds.bearer_token() != first
    assert server.stats()["requests"]["list"] == 2


def test_token_rejected_as_expired_is_resigned_and_retried(local_server, make_client):
    """The server says 1004 for a token our clock thought fresh: re-sign once, then succeed."""
    server = local_server()
    readings = [time.time() - 4000]  # the first token is signed by a clock far behind

    def clock() -> float:
        return readings.pop(0) if readings else time.time()

    creds = Credentials(ACCESS_KEY, SECRET_KEY, clock=clock)
    client = make_client(server.url, credentials=creds)
    assert list(client.list()) == []
    assert server.stats()["requests"]["list"] == 2  # refused with 1004, then accepted


def test_token_refused_twice_is_not_retried_again(local_server, make_client):
    server = local_server()
    creds = Credentials(ACCESS_KEY, SECRET_KEY, clock=lambda: time.time() - 4000)
    client = make_client(server.url, credentials=creds)
    with pytest.raises(AuthError) as caught:
        list(client.list())
    assert caught.value.code == 1004 and caught.value.http_status == 401
    assert server.stats()["requests"]["list"] == 2


def test_api_key_against_the_server(local_server, make_client):
    server = local_server()
    assert list(make_client(server.url, credentials=Credentials(api_key=API_KEY)).list()) == []
    with pytest.raises(AuthError) as caught:
        list(make_client(server.url, credentials=Credentials(api_key="wrong")).list())
    assert not caught.value.retryable


def test_client_takes_credentials_from_the_environment(monkeypatch):
    for name in ("KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CredentialsError, match="KLING_ACCESS_KEY"):
        KlingClient("http://127.0.0.1:9")
    monkeypatch.setenv("KLING_API_KEY", API_KEY)
    with KlingClient("http://127.0.0.1:9") as client:
        assert API_KEY not in repr(client)


@pytest.mark.parametrize("url", ["ftp://host", "127.0.0.1:8000", "file:///x"])
def test_client_wants_an_http_base_url(url):
    with pytest.raises(ValueError, match="http"):
        KlingClient(url, Credentials(api_key=API_KEY))
