"""Secret keys and tokens never reach logs (DEBUG included), exception texts, reprs or pickles."""

from __future__ import annotations

import logging
import pickle
import traceback

import pytest

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import ExpandRequest, RetryPolicy, Timeouts
from kling_expand_plugin.kling.errors import KlingError

from .conftest import ACCESS_KEY, FAST_POLL, SECRET_KEY
from .scripted import Seen, envelope, scripted_server


class RecordingCredentials(Credentials):
    """Credentials that remember every token they handed out, for the test to look for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tokens: set[str] = set()

    def bearer_token(self) -> str:
        token = super().bearer_token()
        self.tokens.add(token)
        return token

    def refresh(self) -> str:
        token = super().refresh()
        self.tokens.add(token)
        return token


def exception_texts(error: BaseException) -> list[str]:
    return [str(error), repr(error), *traceback.format_exception(error)]


def assert_no_secret(texts: list[str], secrets: set[str]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_nothing_secret_in_debug_logs_or_errors(local_server, make_client, image_b64, caplog):
    faults = dict.fromkeys(
        ["server-error", "drop-before", "drop-after", "bad-json", "throttle", "slow-create"], 0.2
    )
    server = local_server(faults={**faults, "task-failed": 0.3}, seed=5, slow_create_delay=0.5)
    creds = RecordingCredentials(ACCESS_KEY, SECRET_KEY)
    client = make_client(
        server.url,
        credentials=creds,
        retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01),
        timeout=Timeouts(connect=1.0, read=0.25),
    )
    errors: list[KlingError] = []
    caplog.set_level(logging.DEBUG)  # every logger: ours, urllib3's, the local server's
    for i in range(12):
        try:
            task = client.create(
                ExpandRequest(image=image_b64, ratios=Ratios(0.1, 0.1, i / 50, 0.1))
            )
            task = client.wait(task, schedule=FAST_POLL, timeout=10)
            client.download(task.images[0].url)
        except KlingError as error:
            errors.append(error)
    assert errors, "the faults should have made some calls fail"
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    secrets = {SECRET_KEY, *creds.tokens}
    assert creds.tokens
    assert_no_secret([caplog.text, repr(client), repr(creds)], secrets)
    for failure in errors:
        assert_no_secret(exception_texts(failure), secrets)
        assert_no_secret([repr(pickle.loads(pickle.dumps(failure)))], secrets)
    with pytest.raises(TypeError):
        pickle.dumps(client)


def test_a_server_echoing_the_token_is_redacted(make_client, caplog):
    def route(seen: Seen):
        token = seen.headers["Authorization"].removeprefix("Bearer ")
        return envelope(1002, status=401, message=f"bad token {token} for {SECRET_KEY}")

    creds = RecordingCredentials(ACCESS_KEY, SECRET_KEY)
    caplog.set_level(logging.DEBUG)
    with scripted_server(route) as (url, _), pytest.raises(KlingError) as caught:
        make_client(url, credentials=creds).get("t1")
    assert "bad token *** for ***" in str(caught.value)
    assert_no_secret([*exception_texts(caught.value), caplog.text], {SECRET_KEY, *creds.tokens})


def test_a_short_secret_is_hidden_without_garbling_the_text():
    from kling_expand_plugin.kling.auth import Credentials

    credentials = Credentials("ak", "x")
    text = credentials.redact("Max retries exceeded with url: /expand (secret x, key=x)")
    assert text == "Max retries exceeded with url: /expand (secret ***, key=***)"
    long = Credentials("ak", "a-long-secret-0123456789")
    assert long.redact("id=a-long-secret-0123456789!") == "id=***!"


def test_a_short_test_key_signs_without_a_warning():
    import subprocess
    import sys

    code = (
        "from kling_expand_plugin.kling.auth import Credentials as C; C('ak', 'sk').bearer_token()"
    )
    ran = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0 and ran.stderr == ""
