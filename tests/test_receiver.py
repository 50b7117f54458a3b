"""CallbackReceiver: callbacks from the LocalServer and crafted deliveries, over loopback HTTP."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from kling_expand_plugin.batch.receiver import MAX_BODY_BYTES, CallbackReceiver
from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling import webhooks
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import ExpandRequest, KlingClient, PollSchedule, Timeouts
from kling_expand_plugin.kling.models import Task, TaskStatus
from kling_expand_plugin.localserver import LocalServer
from tests.helpers import wait_until

from .client.conftest import ACCESS_KEY, FAST_RETRY, SECRET_KEY, png_bytes

# The contract's published test vector.
VECTOR_SECRET = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI="
VECTOR_ID = "9876543210"
VECTOR_TIMESTAMP = 1781080794
VECTOR_BODY = (
    b'{"id":"1234567890","status":"succeeded","message":"",'
    b'"create_time":1781080778802,"update_time":1781080794151}'
)
VECTOR_SIGNATURE = "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4="

SECRET = "whsec_" + base64.b64encode(b"receiver-test-secret-0123456789ab").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-secret-0123456789abcd").decode()
IMAGE_B64 = base64.b64encode(png_bytes()).decode()
RATIOS = Ratios(up=0.1, down=0.1, left=0.2, right=0.2)


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., CallbackReceiver]]:
    """Started receivers on 127.0.0.1, all stopped after the test."""
    receivers: list[CallbackReceiver] = []

    def make(**options: Any) -> CallbackReceiver:
        receivers.append(CallbackReceiver("127.0.0.1", 0, **options).start())
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.stop()


@pytest.fixture
def make_server(start_server: Callable[..., LocalServer]) -> Callable[..., LocalServer]:
    """Started LocalServers with the client's keys, 0.05 s tasks and the fast fill."""
    keys = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "callback_timeout": 2.0}
    return lambda **options: start_server(**{**keys, **options})


@pytest.fixture
def client_for() -> Iterator[Callable[[LocalServer], KlingClient]]:
    clients: list[KlingClient] = []

    def make(server: LocalServer) -> KlingClient:
        credentials = Credentials(ACCESS_KEY, SECRET_KEY)
        timeouts = Timeouts(connect=2.0, read=5.0)
        clients.append(KlingClient(server.url, credentials, timeout=timeouts, retry=FAST_RETRY))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def create(client: KlingClient, receiver: CallbackReceiver, external_id: str) -> Task:
    """Create a task on the local server whose callbacks go to `receiver`."""
    request = ExpandRequest(
        image=IMAGE_B64,
        ratios=RATIOS,
        external_task_id=external_id,
        callback_url=receiver.url_for(external_id),
    )
    return client.create(request)


def task_json(external_id: str, status: str = "succeed", task_id: str = "t-1") -> dict[str, Any]:
    images = [{"index": 0, "url": "http://127.0.0.1:9/r/0.png"}] if status == "succeed" else []
    return {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": "",
        "task_info": {"external_task_id": external_id},
        "final_unit_deduction": "1" if status == "succeed" else "0",
        "watermark_info": {"enabled": False},
        "created_at": 1781080778802,
        "updated_at": 1781080794151,
        "task_result": {"images": images},
    }


def post(
    url: str,
    body: bytes | dict[str, Any],
    *,
    secret: str | None = None,
    msg_id: str | None = None,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST a delivery as the API would, signed with `secret` when given."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"}
    if secret is not None:
        msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
        timestamp = int(time.time()) if timestamp is None else timestamp
        sent["webhook-id"] = msg_id
        sent["webhook-timestamp"] = str(timestamp)
        sent["webhook-signature"] = webhooks.sign(secret, msg_id, timestamp, data)
    sent.update(headers or {})
    return requests.post(url, data=data, headers=sent, timeout=5)


# Callbacks from the LocalServer


def test_signed_callbacks_deliver_the_succeeded_task(make_server, client_for, make_receiver):
    receiver = make_receiver(webhook_secret=SECRET)
    server = make_server(webhook_secret=SECRET)
    created = create(client_for(server), receiver, "ext-ok")

    task = receiver.wait("ext-ok", 5.0, after=TaskStatus.PROCESSING)

    assert task is not None and task.succeeded
    assert task.task_id == created.task_id and task.external_task_id == "ext-ok"
    assert task.images == client_for(server).get(created.task_id).images
    assert receiver.latest("ext-ok") == task
    wait_until(lambda: server.stats()["callbacks"]["sent"] == 3)
    assert receiver.stats == {"accepted": 3, "duplicates": 0, "stale": 0, "rejected": {}}


def test_a_failed_task_arrives_with_its_reason(make_server, client_for, make_receiver):
    receiver = make_receiver()
    create(client_for(make_server(faults={"task-failed": 1.0})), receiver, "ext-fail")
    task = receiver.wait("ext-fail", 5.0, after=TaskStatus.PROCESSING)
    assert task is not None and task.failed and task.status_msg


def test_repeated_signed_deliveries_are_answered_but_applied_once(
    make_server, client_for, make_receiver
):
    receiver = make_receiver(webhook_secret=SECRET)
    server = make_server(webhook_secret=SECRET, faults={"callback-repeat": 1.0})
    create(client_for(server), receiver, "ext-rep")
    assert receiver.wait("ext-rep", 5.0, after=TaskStatus.PROCESSING) is not None
    wait_until(lambda: server.stats()["callbacks"]["sent"] == 6)  # every one answered 2xx
    assert server.stats()["callbacks"]["failed"] == 0
    stats = receiver.stats
    assert stats["accepted"] == 3 and stats["rejected"] == {"replayed": 3}


def test_repeated_unsigned_deliveries_count_as_duplicates(make_server, client_for, make_receiver):
    receiver = make_receiver()
    server = make_server(faults={"callback-repeat": 1.0})
    create(client_for(server), receiver, "ext-dup")
    assert receiver.wait("ext-dup", 5.0, after=TaskStatus.PROCESSING) is not None
    wait_until(lambda: server.stats()["callbacks"]["sent"] == 6)
    assert receiver.stats == {"accepted": 3, "duplicates": 3, "stale": 0, "rejected": {}}


def test_an_older_status_after_a_newer_one_is_ignored(make_server, client_for, make_receiver):
    receiver = make_receiver()
    server = make_server(faults={"callback-reorder": 1.0})
    create(client_for(server), receiver, "ext-ord")
    # The server sends processing, then the held-back submitted, then succeed.
    wait_until(lambda: server.stats()["callbacks"]["sent"] >= 2)
    latest = receiver.latest("ext-ord")
    assert latest is not None and latest.status is not TaskStatus.SUBMITTED
    task = receiver.wait("ext-ord", 5.0, after=TaskStatus.PROCESSING)
    assert task is not None and task.succeeded
    assert receiver.stats == {"accepted": 2, "duplicates": 0, "stale": 1, "rejected": {}}


def test_dropped_deliveries_time_out_and_polling_finds_the_task(
    make_server, client_for, make_receiver
):
    receiver = make_receiver()
    server = make_server(faults={"callback-drop": 1.0})
    client = client_for(server)
    created = create(client, receiver, "ext-drop")
    started = time.monotonic()
    assert receiver.wait("ext-drop", 0.3) is None
    assert time.monotonic() - started >= 0.25  # waited its time out (no upper bound: load)
    polled = client.wait(created, timeout=5.0, schedule=PollSchedule(first=0.02, longest=0.1))
    assert polled.succeeded and receiver.latest("ext-drop") is None


def test_a_secret_mismatch_rejects_every_server_delivery(make_server, client_for, make_receiver):
    receiver = make_receiver(webhook_secret=SECRET)
    server = make_server(webhook_secret=OTHER_SECRET)
    client = client_for(server)
    client.wait(create(client, receiver, "ext-x"), timeout=5.0, schedule=PollSchedule(0.02))
    wait_until(lambda: server.stats()["callbacks"]["failed"] == 3)
    assert receiver.latest("ext-x") is None
    assert receiver.stats["rejected"] == {"bad_signature": 3}


def test_no_token_or_secret_in_logs_or_repr(make_server, client_for, make_receiver, caplog):
    caplog.set_level(logging.DEBUG)
    receiver = make_receiver(webhook_secret=SECRET)
    server = make_server(webhook_secret=SECRET)
    create(client_for(server), receiver, "ext-log")
    assert receiver.wait("ext-log", 5.0, after=TaskStatus.PROCESSING) is not None
    url = receiver.url_for("ext-log")
    assert post(url + "/extra", task_json("ext-log")).status_code == 404
    assert post(url, task_json("ext-log"), secret=OTHER_SECRET).status_code == 401
    token = url.rsplit("/", 1)[1]
    # Only the receiver's own lines: a sender's HTTP library may log the URL it posts to.
    logged = "\n".join(
        record.getMessage() for record in caplog.records if record.name.endswith(".receiver")
    )
    assert "ext-log" in logged and "rejected: not_found" in logged
    for secret in (token, SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in logged and secret not in repr(receiver)


# Crafted deliveries: authentication


def test_forged_and_wrong_task_tokens_are_403(make_receiver):
    receiver = make_receiver()
    base = receiver.url_for("ext-a").rsplit("/", 1)[0]
    assert post(base + "/AAAAAAAAAAAAAAAAAAAAAA", task_json("ext-a")).status_code == 403
    wrong = post(receiver.url_for("ext-b"), task_json("ext-a"))
    assert wrong.status_code == 403 and wrong.json() == {"outcome": "wrong_token"}
    assert receiver.latest("ext-a") is None
    assert receiver.stats["rejected"] == {"wrong_token": 2}
    assert post(receiver.url_for("ext-a"), task_json("ext-a")).status_code == 200


def test_tokens_are_per_task_and_per_receiver(make_receiver):
    first, second = make_receiver(), make_receiver()
    token = first.url_for("ext-1").rsplit("/", 1)[1]
    assert token == first.url_for("ext-1").rsplit("/", 1)[1]  # stateless, stable
    assert token != first.url_for("ext-2").rsplit("/", 1)[1]
    assert token != second.url_for("ext-1").rsplit("/", 1)[1]
    assert len(token) >= 22 and token.replace("-", "").replace("_", "").isalnum()
    assert "ext-1" not in first.url_for("ext-1")


def test_signature_problems_are_401(make_receiver):
    receiver = make_receiver(webhook_secret=SECRET)
    url = receiver.url_for("ext-s")
    body = task_json("ext-s")
    now = int(time.time())
    cases = {
        "bad_signature": post(url, body, secret=OTHER_SECRET),
        "stale_timestamp": post(url, body, secret=SECRET, timestamp=now - 301),
        "unsigned": post(url, body),
        "bad_timestamp": post(url, body, secret=SECRET, headers={"webhook-timestamp": "soon"}),
    }
    future = post(url, body, secret=SECRET, timestamp=now + 400)
    assert future.json() == {"outcome": "stale_timestamp"}
    for reason, response in cases.items():
        assert (response.status_code, response.json()) == (401, {"outcome": reason})
    assert receiver.stats["rejected"] == {
        "bad_signature": 1,
        "stale_timestamp": 2,
        "unsigned": 1,
        "bad_timestamp": 1,
    }
    assert receiver.latest("ext-s") is None
    assert post(url, body, secret=SECRET, timestamp=now - 250).status_code == 200


def test_a_tampered_body_fails_its_signature(make_receiver):
    receiver = make_receiver(webhook_secret=SECRET)
    url = receiver.url_for("ext-t")
    data = json.dumps(task_json("ext-t", "processing")).encode()
    msg_id, timestamp = "msg_1", int(time.time())
    signature = webhooks.sign(SECRET, msg_id, timestamp, data)
    tampered = data.replace(b"processing", b"succeed")
    headers = {"webhook-signature": signature}
    response = post(url, tampered, secret=SECRET, msg_id=msg_id, headers=headers)
    assert response.status_code == 401 and receiver.latest("ext-t") is None
    assert post(url, data, secret=SECRET, msg_id=msg_id, headers=headers).status_code == 200


def test_one_matching_signature_of_several_suffices(make_receiver):
    receiver = make_receiver(webhook_secret=SECRET)
    data = json.dumps(task_json("ext-r")).encode()
    timestamp = int(time.time())
    signatures = " ".join(
        webhooks.sign(secret, "msg_r", timestamp, data) for secret in (OTHER_SECRET, SECRET)
    )
    response = post(
        receiver.url_for("ext-r"),
        data,
        headers={
            "webhook-id": "msg_r",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures,
        },
    )
    assert response.status_code == 200 and receiver.latest("ext-r") is not None


def test_a_replayed_webhook_id_is_not_applied(make_receiver):
    receiver = make_receiver(webhook_secret=SECRET)
    url = receiver.url_for("ext-p")
    first = post(url, task_json("ext-p", "processing"), secret=SECRET, msg_id="msg_p")
    assert first.json() == {"outcome": "accepted"}
    replay = post(url, task_json("ext-p", "succeed"), secret=SECRET, msg_id="msg_p")
    assert (replay.status_code, replay.json()) == (200, {"outcome": "replayed"})
    latest = receiver.latest("ext-p")
    assert latest is not None and latest.status is TaskStatus.PROCESSING
    assert receiver.stats["rejected"] == {"replayed": 1}


def test_the_contract_test_vector_verifies_through_the_receiver(make_receiver):
    assert webhooks.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == (
        VECTOR_SIGNATURE
    )
    receiver = make_receiver(webhook_secret=VECTOR_SECRET, clock=lambda: VECTOR_TIMESTAMP + 10)
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    url = receiver.url_for("ext-v")
    # The signature passes; the vector's body is not a task, so it is refused as malformed.
    assert post(url, VECTOR_BODY, headers=headers).json() == {"outcome": "malformed"}
    tampered = VECTOR_BODY.replace(b"1234567890", b"1234567891")
    assert post(url, tampered, headers=headers).json() == {"outcome": "bad_signature"}
    accepted = post(url, task_json("ext-v"), secret=VECTOR_SECRET, timestamp=VECTOR_TIMESTAMP)
    assert accepted.json() == {"outcome": "accepted"}
    assert receiver.stats["rejected"] == {"malformed": 1, "bad_signature": 1}


# Crafted deliveries: the HTTP surface and the task's JSON


def test_malformed_deliveries_are_400(make_receiver):
    receiver = make_receiver()
    url = receiver.url_for("ext-m")
    assert post(url, task_json("ext-m", "exploded")).status_code == 400
    assert post(url, b"{not json").status_code == 400
    assert post(url, b"").status_code == 400
    assert post(url, b"[1, 2]").status_code == 400
    assert post(url, {**task_json("ext-m"), "task_id": ""}).status_code == 400
    assert receiver.stats["rejected"] == {"malformed": 5}
    assert receiver.latest("ext-m") is None
    succeeded = post(url, task_json("ext-m", "succeeded"))  # the newer APIs' spelling
    assert succeeded.status_code == 200
    assert receiver.latest("ext-m").status is TaskStatus.SUCCEEDED


def test_only_post_with_a_bounded_length_to_a_callback_path(make_receiver):
    receiver = make_receiver()
    url = receiver.url_for("ext-h")
    base = url.split("/kling/")[0]
    assert requests.get(url, timeout=5).status_code == 405
    assert post(base + "/other/path", task_json("ext-h")).status_code == 404
    assert post(url + "/more", task_json("ext-h")).status_code == 404
    chunked = requests.post(url, data=iter([json.dumps(task_json("ext-h")).encode()]), timeout=5)
    assert chunked.status_code == 411
    assert post(url, b" " * (MAX_BODY_BYTES + 1)).status_code == 413
    assert receiver.stats["rejected"] == {
        "method_not_allowed": 1,
        "not_found": 2,
        "no_length": 1,
        "too_large": 1,
    }
    assert post(url + "?x=1", task_json("ext-h")).status_code == 200


def test_public_url_is_used_and_its_path_accepted(make_receiver):
    receiver = make_receiver(public_url="https://hooks.example.com/relay/")
    url = receiver.url_for("ext-u")
    assert url.startswith("https://hooks.example.com/relay/kling/callback/")
    local = f"http://127.0.0.1:{receiver.port}"
    path = url.removeprefix("https://hooks.example.com")
    assert post(local + path, task_json("ext-u", "processing")).status_code == 200
    stripped = path.removeprefix("/relay")
    assert post(local + stripped, task_json("ext-u")).status_code == 200
    assert receiver.latest("ext-u").succeeded


# State: ordering, waiting, forgetting


def test_a_task_never_moves_backwards(make_receiver):
    receiver = make_receiver()
    url = receiver.url_for("ext-o")
    outcomes = [
        post(url, task_json("ext-o", status)).json()["outcome"]
        for status in ("processing", "submitted", "succeed", "processing", "failed", "succeed")
    ]
    assert outcomes == ["accepted", "stale", "accepted", "stale", "duplicates", "duplicates"]
    assert receiver.latest("ext-o").succeeded


def test_wait_returns_at_once_when_known_and_respects_after(make_receiver):
    receiver = make_receiver()
    post(receiver.url_for("ext-w"), task_json("ext-w", "processing"))
    # Waits of 600 s: only returning at once ends them within the bound.
    started = time.monotonic()
    task = receiver.wait("ext-w", 600.0)
    assert task is not None and task.status is TaskStatus.PROCESSING
    assert receiver.wait("ext-w", 600.0, after=TaskStatus.SUBMITTED) == task
    assert time.monotonic() - started < 5
    assert receiver.wait("ext-w", 0.05, after=TaskStatus.PROCESSING) is None
    assert receiver.wait("ext-unknown", 0.0) is None


def test_many_waiters_are_woken_by_one_delivery(make_receiver):
    receiver = make_receiver()
    results: list[Task | None] = []
    lock = threading.Lock()

    def waiter(external_id: str) -> None:
        task = receiver.wait(external_id, 600.0, after=TaskStatus.PROCESSING)
        with lock:
            results.append(task)

    threads = [
        threading.Thread(target=waiter, args=(f"ext-{i % 2}",), daemon=True) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    post(receiver.url_for("ext-0"), task_json("ext-0", "processing"))  # not enough for them
    post(receiver.url_for("ext-0"), task_json("ext-0", "succeed"))
    post(receiver.url_for("ext-1"), task_json("ext-1", "failed"))
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)  # woken: their timeout is 600 s
    assert sorted(task.status.value for task in results if task) == ["failed"] * 4 + ["succeed"] * 4


def test_forget_and_the_task_cap_bound_memory(make_receiver):
    receiver = make_receiver(max_tasks=2)
    for name in ("ext-1", "ext-2", "ext-3"):
        assert post(receiver.url_for(name), task_json(name)).status_code == 200
    assert receiver.latest("ext-1") is None  # the oldest went first
    assert receiver.latest("ext-3") is not None
    receiver.forget("ext-3")
    receiver.forget("never-seen")
    assert receiver.latest("ext-3") is None and receiver.latest("ext-2") is not None


def test_webhook_ids_are_remembered_only_while_they_could_verify(make_receiver):
    now = [1_800_000_000.0]
    receiver = make_receiver(webhook_secret=SECRET, tolerance=60, clock=lambda: now[0])
    url = receiver.url_for("ext-i")

    def send(msg_id: str, status: str) -> str:
        body = task_json("ext-i", status)
        return post(url, body, secret=SECRET, msg_id=msg_id, timestamp=int(now[0])).json()[
            "outcome"
        ]

    assert send("a", "submitted") == "accepted"
    now[0] += 30
    assert send("a", "submitted") == "replayed"
    now[0] += 31  # "a" as first sent can no longer pass the timestamp check: forgotten
    assert send("b", "processing") == "accepted"
    assert send("a", "submitted") == "stale"


def test_a_malformed_secret_is_refused_up_front():
    with pytest.raises(ValueError, match="base64"):
        CallbackReceiver(webhook_secret="whsec_***")


def test_stop_is_idempotent_and_the_port_is_freed():
    with CallbackReceiver() as receiver:
        url = receiver.url_for("ext-z")
        assert post(url, task_json("ext-z")).status_code == 200
        with pytest.raises(RuntimeError):
            receiver.start()
    receiver.stop()
    with pytest.raises(requests.ConnectionError):
        requests.post(url, json=task_json("ext-z"), timeout=2)
    CallbackReceiver().stop()  # never started
