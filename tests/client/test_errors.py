"""Each Kling code maps to its error type and retry decision, over real HTTP."""

from __future__ import annotations

import email.utils
import gc
import pickle
import time
import weakref

import pytest

from kling_expand_plugin.kling import errors
from kling_expand_plugin.kling.client import RetryPolicy
from kling_expand_plugin.kling.models import TaskStatus
from kling_expand_plugin.kling.wire import task_from_json

from .scripted import Answer, envelope, scripted_server, sequence, task_json

TWO_TRIES = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01, concurrency_delay=0.01)

# (HTTP status, code, error type, retried by the client)
TABLE = [
    (401, 1000, errors.AuthError, False),
    (401, 1001, errors.AuthError, False),
    (401, 1002, errors.AuthError, False),
    (429, 1100, errors.AccountError, False),
    (429, 1101, errors.AccountError, False),
    (429, 1102, errors.AccountError, False),
    (403, 1103, errors.PermissionDeniedError, False),
    (400, 1200, errors.InvalidRequestError, False),
    (400, 1201, errors.InvalidRequestError, False),
    (404, 1202, errors.NotFoundError, False),
    (404, 1203, errors.NotFoundError, False),
    (400, 1300, errors.ContentPolicyError, False),
    (400, 1301, errors.ContentPolicyError, False),
    (429, 1302, errors.RateLimitedError, True),
    (429, 1303, errors.ConcurrencyLimitedError, True),
    (429, 1304, errors.PermissionDeniedError, False),
    (500, 5000, errors.ServerError, True),
    (503, 5001, errors.ServerError, True),
    (504, 5002, errors.ServerError, True),
]


@pytest.mark.parametrize(("status", "code", "error_type", "retried"), TABLE)
def test_code_maps_to_type_and_retry_decision(make_client, status, code, error_type, retried):
    with scripted_server(sequence(envelope(code, message=f"says {code}", status=status))) as (
        url,
        server,
    ):
        client = make_client(url, retry=TWO_TRIES)
        with pytest.raises(error_type) as caught:
            client.get("task-1")
    error = caught.value
    assert type(error) is error_type
    assert (error.code, error.http_status, error.request_id) == (code, status, f"req-{code}")
    assert f"says {code}" in str(error)
    assert error.retryable is retried
    assert len(server.seen) == (2 if retried else 1)


@pytest.mark.parametrize("code", [1003, 1004])
def test_token_not_valid_is_resigned_once(make_client, code):
    with scripted_server(sequence(envelope(code, status=401))) as (url, server):
        client = make_client(url, retry=TWO_TRIES)
        with pytest.raises(errors.AuthError) as caught:
            client.get("task-1")
    assert caught.value.token_expired
    assert len(server.seen) == 2  # the first try, and one with a freshly signed token


def test_same_http_status_different_decision(make_client):
    """429 is a throttle (retried) or an empty account (not): the code decides."""
    throttled = sequence(envelope(1302, status=429), envelope(0, task_json()))
    with scripted_server(throttled) as (url, server):
        assert make_client(url).get("t1").task_id == "t1"
        assert len(server.seen) == 2
    with scripted_server(sequence(envelope(1102, status=429))) as (url, server):
        with pytest.raises(errors.AccountError):
            make_client(url).get("t1")
        assert len(server.seen) == 1


def test_undocumented_code_falls_back_on_its_family():
    assert errors.error_class_for(1005, 401) is errors.AuthError
    assert errors.error_class_for(5003, 200) is errors.ServerError
    assert errors.error_class_for(9999, 500) is errors.KlingAPIError
    assert errors.error_class_for(None, 502) is errors.ServerError
    assert errors.error_class_for(None, 404) is errors.NotFoundError


def test_non_json_5xx_is_a_retryable_server_error(make_client):
    answers = sequence(Answer(502, b"<html>bad gateway</html>"), envelope(0, task_json()))
    with scripted_server(answers) as (url, server):
        assert make_client(url).get("t1").task_id == "t1"
    assert len(server.seen) == 2


def test_retry_after_is_honoured(make_client):
    answers = sequence(
        Answer(429, envelope(1302).body, {"Retry-After": "0.3"}), envelope(0, task_json())
    )
    with scripted_server(answers) as (url, _server):
        started = time.monotonic()
        make_client(url).get("t1")
    assert time.monotonic() - started >= 0.3


@pytest.mark.slow
def test_retry_after_as_an_http_date_is_honoured(make_client):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s
    answers = sequence(
        Answer(429, envelope(1302).body, {"Retry-After": when}), envelope(0, task_json())
    )
    with scripted_server(answers) as (url, _server):
        started = time.monotonic()
        make_client(url).get("t1")
    assert time.monotonic() - started >= 0.9


def test_retry_after_forms():
    from kling_expand_plugin.kling.retry import retry_after_seconds

    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds("-3") is None


def test_retry_after_beyond_the_deadline_gives_up_at_once(make_client):
    policy = RetryPolicy(attempts=5, base_delay=0.01, deadline=10.0)
    # Honouring the wait of 600 s, or sleeping to the deadline, takes 10 s or more.
    answers = sequence(Answer(429, envelope(1302).body, {"Retry-After": "600"}))
    started = time.monotonic()
    with scripted_server(answers) as (url, server), pytest.raises(errors.RateLimitedError):
        make_client(url, retry=policy).get("t1")
    assert len(server.seen) == 1 and time.monotonic() - started < 5


def test_attempts_bound_the_retries(make_client):
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01)
    with (
        scripted_server(sequence(envelope(5000, status=500))) as (url, server),
        pytest.raises(errors.ServerError),
    ):
        make_client(url, retry=policy).get("t1")
    assert len(server.seen) == 3


def test_failed_task_error_carries_the_reason():
    task = task_from_json(task_json(status="failed", msg="Image pixel is invalid"))
    error = errors.TaskFailedError(task)
    assert error.task_status_msg == "Image pixel is invalid"
    assert "Image pixel is invalid" in str(error)
    assert task.status is TaskStatus.FAILED


@pytest.mark.parametrize(
    "error",
    [
        errors.ServerError("boom", http_status=500, code=5000, request_id="r"),
        errors.TransportError("reset", maybe_sent=False),
        errors.ProtocolError("garbled", http_status=200, retryable=True),
        errors.DownloadError("cut", retryable=True),
        errors.TaskFailedError(task_from_json(task_json(status="failed", msg="no"))),
        errors.WaitTimeout("t1", 5.0),
    ],
)
def test_errors_survive_pickling(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.retryable == error.retryable


class Held:
    """Stands for what a caller's frame holds (a decoded photo) while it makes a call."""


def test_an_api_error_does_not_keep_the_frames_it_went_through(make_client):
    # An error kept in a local of the frame that raised it is a reference cycle; the cycle held
    # every frame under it, with their locals, until Python's cycle collector ran.
    def caller(client) -> weakref.ref[Held]:
        held = Held()
        with pytest.raises(errors.InvalidRequestError):
            client.get("task-1")
        return weakref.ref(held)

    with scripted_server(sequence(envelope(1201, status=400))) as (url, _server):
        client = make_client(url, retry=TWO_TRIES)
        gc.collect()
        gc.disable()
        try:
            held = caller(client)
            assert held() is None
        finally:
            gc.enable()
