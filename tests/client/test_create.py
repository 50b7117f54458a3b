"""Creating tasks: idempotent under every fault, never paying twice."""

from __future__ import annotations

import base64
import importlib.metadata
import json

import pytest

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling import errors
from kling_expand_plugin.kling.client import ExpandRequest, RetryPolicy, Timeouts
from kling_expand_plugin.kling.models import TaskStatus

from .conftest import FAST_POLL, png_bytes, total_tasks
from .scripted import envelope, scripted_server, sequence, task_json

RATIOS = Ratios(0.1, 0.1, 0.2, 0.2)


def request(image_b64: str, i: int = 0, **kwargs) -> ExpandRequest:
    return ExpandRequest(image=image_b64, ratios=Ratios(0.1, 0.1, 0.2 + i / 100, 0.2), **kwargs)


def test_external_id_is_deterministic_and_depends_on_every_input(image_b64):
    raw = base64.b64decode(image_b64)
    first = ExpandRequest.external_id_for(raw, RATIOS, "sky", 2, True)
    assert first == ExpandRequest.external_id_for(image_b64, RATIOS, "sky", 2, True)
    assert first.startswith("kep-") and len(first) == 4 + 32
    variants = {
        ExpandRequest.external_id_for(png_bytes(color=(1, 2, 3)), RATIOS, "sky", 2, True),
        ExpandRequest.external_id_for(raw, Ratios(0.1, 0.1, 0.2, 0.3), "sky", 2, True),
        ExpandRequest.external_id_for(raw, RATIOS, "sea", 2, True),
        ExpandRequest.external_id_for(raw, RATIOS, "sky", 3, True),
        ExpandRequest.external_id_for(raw, RATIOS, "sky", 2, False),
        ExpandRequest.external_id_for(raw, RATIOS, "sky", 2, True, salt="again"),
        ExpandRequest.external_id_for("https://example.com/a.png", RATIOS, "sky", 2, True),
    }
    assert first not in variants and len(variants) == 7


def test_request_validation_and_body(image_b64):
    with pytest.raises(ValueError, match="data: prefix"):
        ExpandRequest(image="data:image/png;base64,AAAA", ratios=RATIOS)
    with pytest.raises(ValueError, match="n = 10"):
        ExpandRequest(image=image_b64, ratios=RATIOS, n=10)
    with pytest.raises(ValueError, match="exceeds"):
        ExpandRequest(image=image_b64, ratios=Ratios(1, 1, 1, 1))
    req = ExpandRequest(image=image_b64, ratios=RATIOS, external_task_id="mine", watermark=True)
    body = req.body()
    assert body["external_task_id"] == "mine"
    assert body["watermark_info"] == {"enabled": True}
    assert body["left_expansion_ratio"] == 0.2
    assert image_b64 not in repr(req)


def test_create_wait_download(local_server, make_client, image_b64):
    server = local_server()
    client = make_client(server.url)
    req = request(image_b64, n=2, watermark=True)
    task = client.create(req)
    assert task.status in (TaskStatus.SUBMITTED, TaskStatus.PROCESSING)
    assert task.external_task_id == req.resolved_external_id
    done = client.wait(task, schedule=FAST_POLL, timeout=10)
    assert done.succeeded and len(done.images) == 2
    assert done.watermark_enabled is True and done.images[0].watermark_url
    assert done.units is None or done.units_value is not None
    data = client.download(done.images[0].url)
    assert data.startswith(b"\x89PNG")


def test_timeout_after_accepted_create_does_not_create_twice(local_server, make_client, image_b64):
    """slow-create: the server takes the task but answers after the client's read timeout."""
    server = local_server(faults={"slow-create": 1.0}, slow_create_delay=1.5)
    client = make_client(server.url, timeout=Timeouts(connect=1.0, read=0.3))
    req = request(image_b64)
    task = client.create(req)
    external = req.resolved_external_id
    stats = server.stats()
    assert task.external_task_id == external
    assert stats["creates_by_external_id"] == {external: 1}
    assert stats["create_attempts_by_external_id"] == {external: 1}  # looked up, not re-posted
    assert total_tasks(server) == 1


def test_create_of_a_used_external_id_returns_the_existing_task(
    local_server, make_client, image_b64
):
    server = local_server()
    client = make_client(server.url)
    first = client.create(request(image_b64))
    again = client.create(request(image_b64))  # the server answers 1201 "already used"
    assert again.task_id == first.task_id
    assert total_tasks(server) == 1


def test_invalid_parameter_is_raised_when_no_task_exists(local_server, make_client):
    server = local_server()
    client = make_client(server.url)
    tiny = base64.b64encode(png_bytes(100, 100)).decode()
    with pytest.raises(errors.InvalidRequestError) as caught:
        client.create(ExpandRequest(image=tiny, ratios=RATIOS))
    assert caught.value.code == 1201 and caught.value.http_status == 400
    assert total_tasks(server) == 0


@pytest.mark.parametrize(
    "fault", ["server-error", "drop-before", "drop-after", "bad-json", "throttle"]
)
def test_each_fault_still_creates_each_task_once(local_server, make_client, image_b64, fault):
    server = local_server(faults={fault: 0.5}, seed=3)
    client = make_client(
        server.url, retry=RetryPolicy(attempts=10, base_delay=0.01, max_delay=0.02)
    )
    requests = [request(image_b64, i) for i in range(6)]
    tasks = [client.create(req) for req in requests]
    stats = server.stats()
    assert stats["faults_fired"][fault] > 0
    assert [t.external_task_id for t in tasks] == [r.resolved_external_id for r in requests]
    assert len({t.task_id for t in tasks}) == 6
    assert total_tasks(server) == 6
    if fault in ("drop-after", "bad-json"):
        # The task was taken each time: found by lookup, never posted a second time.
        assert set(stats["create_attempts_by_external_id"].values()) == {1}


@pytest.mark.slow
def test_all_faults_at_once(local_server, make_client, image_b64):
    faults = dict.fromkeys(
        ["server-error", "drop-before", "drop-after", "bad-json", "throttle", "slow-create"], 0.15
    )
    server = local_server(faults=faults, seed=11, slow_create_delay=0.6)
    client = make_client(
        server.url,
        retry=RetryPolicy(attempts=12, base_delay=0.01, max_delay=0.02),
        timeout=Timeouts(connect=1.0, read=0.3),
    )
    tasks = [client.create(request(image_b64, i)) for i in range(10)]
    for task in tasks:
        assert client.wait(task, schedule=FAST_POLL, timeout=20).succeeded
    assert total_tasks(server) == 10


def test_concurrency_limit_is_retried_by_default(local_server, make_client, image_b64):
    server = local_server(concurrency=1, latency=0.3)
    policy = RetryPolicy(attempts=60, base_delay=0.05, max_delay=0.05, concurrency_delay=0.05)
    client = make_client(server.url, retry=policy)
    client.create(request(image_b64, 0))
    second = client.create(request(image_b64, 1))  # waits for the first to free its slot
    assert server.stats()["create_attempts_by_external_id"][second.external_task_id] > 1
    assert server.stats()["max_slots_in_use"] == 1


def test_concurrency_limit_can_be_left_to_the_caller(local_server, make_client, image_b64):
    server = local_server(concurrency=1, latency=5.0)
    policy = RetryPolicy(attempts=5, base_delay=0.01, retry_concurrency=False)
    client = make_client(server.url, retry=policy)
    client.create(request(image_b64, 0))
    req = request(image_b64, 1)
    with pytest.raises(errors.ConcurrencyLimitedError) as caught:
        client.create(req)
    assert caught.value.code == 1303 and caught.value.retryable
    assert server.stats()["create_attempts_by_external_id"][req.resolved_external_id] == 1


def test_5xx_on_create_looks_up_before_reposting(make_client, image_b64):
    """A 5000 whose task was not created: lookup (both forms) says 1203, then re-post."""
    answers = sequence(
        envelope(5000, status=500),
        envelope(1203, status=404),
        envelope(1203, status=404),
        envelope(0, task_json("t9", external="x")),
    )
    with scripted_server(answers) as (url, server):
        task = make_client(url).create(request(image_b64, external_task_id="x"))
    assert task.task_id == "t9"
    assert [(s.method, s.path, s.query) for s in server.seen] == [
        ("POST", "/v1/images/editing/expand", ""),
        ("GET", "/v1/images/editing/expand/x", ""),
        ("GET", "/v1/images/editing/expand", "external_task_id=x"),
        ("POST", "/v1/images/editing/expand", ""),
    ]


def test_create_request_on_the_wire(make_client, image_b64):
    answers = sequence(envelope(0, None), envelope(0, [task_json("t1", external="e1")]))
    with scripted_server(answers) as (url, server):
        task = make_client(url).create(request(image_b64, external_task_id="e1", prompt="sky"))
    assert task.task_id == "t1"  # code 0 without a task: looked up, found, not re-posted
    post, lookup = server.seen
    assert post.headers["Content-Type"] == "application/json"
    version = importlib.metadata.version("kling-expand-plugin")
    assert post.headers["User-Agent"].startswith(f"kling-expand-plugin/{version} ")
    scheme, _, token = post.headers["Authorization"].partition(" ")
    assert scheme == "Bearer" and token.count(".") == 2
    body = json.loads(post.body)
    assert body == {
        "image": image_b64,
        "up_expansion_ratio": 0.1,
        "down_expansion_ratio": 0.1,
        "left_expansion_ratio": 0.2,
        "right_expansion_ratio": 0.2,
        "n": 1,
        "external_task_id": "e1",
        "prompt": "sky",
    }
    assert (lookup.method, lookup.path) == ("GET", "/v1/images/editing/expand/e1")


def test_read_timeout_grows_with_the_upload():
    timeouts = Timeouts(connect=3.0, read=60.0, upload_bytes_per_second=1_000_000)
    assert timeouts.for_body(0) == (3.0, 60.0)
    assert timeouts.for_body(14_000_000) == (3.0, 74.0)
