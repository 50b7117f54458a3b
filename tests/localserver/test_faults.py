"""Each fault's switch, its effect on the wire, and its determinism given the seed."""

from __future__ import annotations

import json
import re

import pytest
import requests

from kling_expand_plugin.localserver import LocalServer
from kling_expand_plugin.localserver.tasks import FAILURE_MESSAGES
from tests.helpers import wait_until

from .conftest import EXPAND, create_body

HTTP_STATUS = {5000: 500, 5001: 503, 5002: 504}


def _created(server, external_task_id):
    return external_task_id in server.stats()["creates_by_external_id"]


def test_server_error_codes_and_whether_the_create_happened(make_api):
    api = make_api(faults={"server-error": 1.0}, concurrency=100)
    codes = []
    for index in range(12):
        response = api.create(create_body(external_task_id=f"job-{index}"))
        code = response.json()["code"]
        assert response.status_code == HTTP_STATUS[code]
        # 5001 (maintenance) is refused up front; 5000 and 5002 come after the task exists.
        assert _created(api.server, f"job-{index}") == (code != 5001)
        codes.append(code)
    assert set(codes) == {5000, 5001, 5002}
    assert api.get(f"{EXPAND}?pageSize=1").json()["code"] in HTTP_STATUS


def _list_codes(api, count):
    return [api.get(f"{EXPAND}?pageSize=1").json()["code"] for _ in range(count)]


def test_faults_are_deterministic_given_the_seed(make_api):
    first = _list_codes(make_api(faults={"server-error": 0.5}, seed=3), 16)
    again = _list_codes(make_api(faults={"server-error": 0.5}, seed=3), 16)
    other = _list_codes(make_api(faults={"server-error": 0.5}, seed=4), 16)
    assert first == again
    assert first != other
    assert 0 in first and set(first) - {0}


def test_throttle_is_1302_429(make_api):
    api = make_api(faults={"throttle": 1.0})
    for response in (api.create(create_body()), api.get(f"{EXPAND}/x"), api.get(EXPAND)):
        assert (response.status_code, response.json()["code"]) == (429, 1302)
    assert api.server.stats()["faults_fired"]["throttle"] == 3


def test_request_rate_limit_is_1302(make_api):
    api = make_api(rate_limit=3)
    codes = _list_codes(api, 4)
    assert codes == [0, 0, 0, 1302]


def test_slow_create_answers_after_the_client_gave_up_but_creates(make_api):
    api = make_api(faults={"slow-create": 1.0}, slow_create_delay=1.0)
    with pytest.raises(requests.Timeout):
        api.create(create_body(external_task_id="slow"), timeout=0.3)
    assert _created(api.server, "slow")
    assert api.one(f"{EXPAND}/slow")["task_info"]["external_task_id"] == "slow"


def test_drop_before_closes_without_creating(make_api):
    api = make_api(faults={"drop-before": 1.0})
    with pytest.raises(requests.ConnectionError):
        api.create(create_body(external_task_id="dropped"))
    with pytest.raises(requests.ConnectionError):
        api.get(f"{EXPAND}/dropped")
    assert not _created(api.server, "dropped")
    assert api.server.stats()["requests"]["create"] == 1


def test_drop_after_closes_after_creating(make_api):
    api = make_api(faults={"drop-after": 1.0})
    with pytest.raises(requests.ConnectionError):
        api.create(create_body(external_task_id="made"))
    assert _created(api.server, "made")


def test_bad_json_answers_a_malformed_body_after_creating(make_api):
    api = make_api(faults={"bad-json": 1.0})
    response = api.create(create_body(external_task_id="garbled"))
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    assert response.content.startswith(b'{"code": 0')
    assert _created(api.server, "garbled")


def test_task_failed_ends_failed_with_a_realistic_message(make_api):
    api = make_api(faults={"task-failed": 1.0}, concurrency=2)
    response = api.create(create_body(n=2))
    assert response.json()["code"] == 0
    task = api.wait_final(response.json()["data"]["task_id"])
    assert task["task_status"] == "failed"
    assert task["task_status_msg"] in FAILURE_MESSAGES
    assert task["task_result"] == {"images": []}
    assert task["final_unit_deduction"] == "0"
    wait_until(lambda: api.server.stats()["slots_in_use"] == 0)
    assert api.server.stats()["tasks"]["failed"] == 1
    # The failed task's slots are free again.
    assert api.create(create_body(n=2)).json()["code"] == 0


def test_broken_download_is_cut_midway(make_api):
    api = make_api(faults={"broken-download": 1.0})
    task = api.wait_final(api.create(create_body()).json()["data"]["task_id"])
    url = task["task_result"]["images"][0]["url"]
    with pytest.raises(requests.RequestException):
        requests.get(url, timeout=5)
    assert api.server.stats()["faults_fired"]["broken-download"] == 1


def test_broken_download_at_half_rate_lets_some_through(make_api):
    api = make_api(faults={"broken-download": 0.5}, seed=1)
    task = api.wait_final(api.create(create_body()).json()["data"]["task_id"])
    url = task["task_result"]["images"][0]["url"]
    outcomes: list[int | str] = []
    for _ in range(10):
        try:
            outcomes.append(requests.get(url, timeout=5).status_code)
        except requests.RequestException:
            outcomes.append("cut")
    assert "cut" in outcomes and 200 in outcomes


@pytest.mark.parametrize(
    ("faults", "words"),
    [
        ({"no-such-fault": 1.0}, "unknown fault 'no-such-fault'; known: "),
        ({"throttle": 1.5}, "fault throttle rate 1.5 is outside 0..1"),
        ({"throttle": -0.1}, "fault throttle rate -0.1 is outside 0..1"),
    ],
)
def test_bad_fault_settings_are_refused(faults, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        LocalServer(faults=faults)


def test_stop_is_prompt_during_a_slow_create(make_api):
    import threading

    # Longer than the test's timeout: only stop() cutting the delay short lets the test end.
    api = make_api(faults={"slow-create": 1.0}, slow_create_delay=600.0)
    outcome = []

    def create():
        try:
            outcome.append(api.create(create_body(), timeout=60).status_code)
        except requests.RequestException as error:
            outcome.append(error)

    thread = threading.Thread(target=create, daemon=True)
    thread.start()
    wait_until(lambda: api.server.stats()["faults_fired"]["slow-create"] == 1)
    api.server.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert outcome  # answered (stop cut the delay short) or closed, but not left hanging
