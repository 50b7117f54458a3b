"""Waiting: a schedule that starts fast and backs off, a deadline, cancellation."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling.client import ExpandRequest, PollSchedule, RetryPolicy
from kling_expand_plugin.kling.errors import Cancelled, NotFoundError, TaskFailedError, WaitTimeout
from kling_expand_plugin.localserver.tasks import FAILURE_MESSAGES

from .conftest import FAST_POLL
from .scripted import envelope, scripted_server, sequence, task_json

RATIOS = Ratios(0.1, 0.1, 0.2, 0.2)


def test_schedule_starts_fast_backs_off_with_jitter():
    delays = list(itertools.islice(PollSchedule(first=2, factor=1.5, longest=30).delays(), 12))
    nominal = [min(30.0, 2 * 1.5**k) for k in range(12)]
    for delay, expected in zip(delays, nominal, strict=True):
        assert expected * 0.8 <= delay <= expected * 1.2
    assert delays[0] < 3 and delays[-1] > 20
    assert len(set(delays)) == 12  # jittered


def test_failed_task_raises_with_its_reason(local_server, make_client, image_b64):
    server = local_server(faults={"task-failed": 1.0})
    client = make_client(server.url)
    task = client.create(ExpandRequest(image=image_b64, ratios=RATIOS))
    with pytest.raises(TaskFailedError) as caught:
        client.wait(task.task_id, schedule=FAST_POLL, timeout=10)
    assert caught.value.task_status_msg in FAILURE_MESSAGES
    assert caught.value.task.failed
    assert caught.value.task_status_msg in str(caught.value)


def test_wait_times_out_with_the_last_state(local_server, make_client, image_b64):
    server = local_server(latency=600.0)  # a wait past its timeout would outlive the test
    client = make_client(server.url)
    task = client.create(ExpandRequest(image=image_b64, ratios=RATIOS))
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        client.wait(task, schedule=FAST_POLL, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert caught.value.task is not None and not caught.value.task.finished


def test_wait_is_cancelled_promptly(local_server, make_client, image_b64):
    server = local_server(latency=600.0)
    client = make_client(server.url)
    task = client.create(ExpandRequest(image=image_b64, ratios=RATIOS))
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    # Polls 600 s apart: only a cancel that cuts the pause short ends the wait this soon.
    started = time.monotonic()
    with pytest.raises(Cancelled):
        client.wait(task, cancel=cancel, schedule=PollSchedule(first=600, longest=600))
    assert time.monotonic() - started < 5


def test_transient_errors_while_polling_do_not_end_the_wait(make_client):
    answers = sequence(
        envelope(5000, status=500),
        envelope(1302, status=429),
        envelope(0, [task_json("t1", status="processing")]),
        envelope(0, [task_json("t1", status="succeeded")]),
    )
    with scripted_server(answers) as (url, server):
        client = make_client(url, retry=RetryPolicy(attempts=1))
        assert client.wait("t1", schedule=FAST_POLL, timeout=5).succeeded
    assert len(server.seen) == 4


def test_other_errors_end_the_wait(make_client):
    not_found = sequence(envelope(1203, status=404))
    with scripted_server(not_found) as (url, _), pytest.raises(NotFoundError):
        make_client(url).wait("t1", schedule=FAST_POLL, timeout=5)
