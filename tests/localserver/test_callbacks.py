"""Callbacks: the task POSTed on each status change, signed when asked; drop/repeat/reorder."""

from __future__ import annotations

import pytest

from kling_expand_plugin.kling.webhooks import verify
from tests.helpers import wait_until

from .conftest import create_body

SECRET = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI="


def _run_task(api, recorder, *, deliveries, **override):
    body = create_body(callback_url=recorder.url + "/hook", external_task_id="cb-1", **override)
    task_id = api.create(body).json()["data"]["task_id"]
    api.wait_final(task_id)
    wait_until(lambda: len(recorder.received) >= deliveries)
    return task_id


def _statuses(recorder):
    return [body["task_status"] for body in recorder.bodies()]


def test_each_status_change_is_posted_in_order_and_signed(make_api, recorder):
    api = make_api(webhook_secret=SECRET)
    task_id = _run_task(api, recorder, deliveries=3, n=2)
    assert _statuses(recorder) == ["submitted", "processing", "succeed"]
    for item in recorder.received:
        assert item.path == "/hook"
        verify(SECRET, item.headers, item.body)
        task = item.json()
        assert task["task_id"] == task_id
        assert task["task_info"] == {"external_task_id": "cb-1"}
    final = recorder.bodies()[-1]
    assert [image["index"] for image in final["task_result"]["images"]] == [0, 1]
    ids = {item.headers["webhook-id"] for item in recorder.received}
    assert len(ids) == 3
    # The server counts a delivery once its answer is back, just after the recorder stored it.
    wait_until(lambda: api.server.stats()["callbacks"]["sent"] >= 3)
    assert api.server.stats()["callbacks"]["sent"] == 3


def test_unsigned_without_a_secret(make_api, recorder):
    api = make_api()
    _run_task(api, recorder, deliveries=3)
    assert all("webhook-signature" not in item.headers for item in recorder.received)


def test_failed_task_callback_carries_the_reason(make_api, recorder):
    api = make_api(faults={"task-failed": 1.0})
    _run_task(api, recorder, deliveries=3)
    final = recorder.bodies()[-1]
    assert final["task_status"] == "failed" and final["task_status_msg"]


def test_callback_drop(make_api, recorder):
    api = make_api(faults={"callback-drop": 1.0})
    _run_task(api, recorder, deliveries=0)
    wait_until(lambda: api.server.stats()["callbacks"]["dropped"] == 3)
    assert recorder.received == []


def test_callback_repeat(make_api, recorder):
    api = make_api(faults={"callback-repeat": 1.0}, webhook_secret=SECRET)
    _run_task(api, recorder, deliveries=6)
    assert _statuses(recorder) == ["submitted"] * 2 + ["processing"] * 2 + ["succeed"] * 2
    ids = [item.headers["webhook-id"] for item in recorder.received]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[4] == ids[5]  # same message, twice


def test_callback_reorder(make_api, recorder):
    api = make_api(faults={"callback-reorder": 1.0})
    _run_task(api, recorder, deliveries=3)
    assert _statuses(recorder) == ["processing", "submitted", "succeed"]


def test_unreachable_callback_url_does_not_hurt_the_task(make_api):
    api = make_api(callback_timeout=0.5)
    body = create_body(callback_url="http://127.0.0.1:9/hook")
    task = api.wait_final(api.create(body).json()["data"]["task_id"])
    assert task["task_status"] == "succeed"
    wait_until(lambda: api.server.stats()["callbacks"]["failed"] == 3)


def test_malformed_webhook_secret_is_refused_up_front():
    from kling_expand_plugin.localserver import LocalServer

    with pytest.raises(ValueError, match="base64"):
        LocalServer(webhook_secret="whsec_***")
