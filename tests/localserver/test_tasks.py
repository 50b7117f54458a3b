"""Tasks: lifecycle, the task object, query by either id, list, results, slots and expiry."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from kling_expand_plugin.imaging.geometry import Ratios, canvas_for
from kling_expand_plugin.localserver import LocalServer
from tests.helpers import wait_until

from .conftest import EXPAND, b64, create_body, image_bytes

TASK_FIELDS = {
    "task_id",
    "task_status",
    "task_status_msg",
    "task_info",
    "final_unit_deduction",
    "watermark_info",
    "created_at",
    "updated_at",
    "task_result",
}


def _create(api, **override):
    response = api.create(create_body(**override))
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["code"] == 0 and payload["request_id"]
    assert isinstance(payload["data"], dict)
    return payload["data"]


def _download(url):
    import requests

    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_create_answers_one_submitted_task(api):
    before = int(time.time() * 1000)
    task = _create(api, external_task_id="ext-1")
    assert set(task) >= TASK_FIELDS
    assert task["task_status"] == "submitted"
    assert task["task_info"] == {"external_task_id": "ext-1"}
    assert task["watermark_info"] == {"enabled": False}
    assert before <= task["created_at"] == task["updated_at"] <= int(time.time() * 1000)
    assert task["task_result"] == {"images": []}


def test_lifecycle_submitted_processing_succeed(make_api):
    api = make_api(latency=0.4)
    task_id = _create(api, n=2)["task_id"]
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        task = api.task(task_id)
        if not seen or seen[-1] != task["task_status"]:
            seen.append(task["task_status"])
        if task["task_status"] == "succeed":
            break
        time.sleep(0.02)
    assert seen == ["submitted", "processing", "succeed"]
    assert task["final_unit_deduction"] == "2"
    assert task["task_status_msg"] == ""
    assert task["updated_at"] >= task["created_at"] + 350
    images = task["task_result"]["images"]
    assert [image["index"] for image in images] == [0, 1]
    assert all("watermark_url" not in image for image in images)


def test_fixed_latency_is_honoured(make_api):
    quick, slow = make_api(latency=0.3), make_api(latency=0.9)
    start = time.monotonic()
    quick_id, slow_id = _create(quick)["task_id"], _create(slow)["task_id"]
    first = quick.wait_final(quick_id)
    assert time.monotonic() - start >= 0.3
    second = slow.wait_final(slow_id)

    def took(task: dict) -> int:
        return task["updated_at"] - task["created_at"]

    # Not before its latency; compared with each other rather than with the clock, as the
    # machine's load delays both alike.
    assert took(first) >= 290 and took(second) >= 890
    assert took(first) < took(second)


def test_latency_drawn_from_a_distribution(make_api):
    draws = []

    def latency(rng):
        draws.append(rng.uniform(0.01, 0.05))
        return draws[-1]

    api = make_api(latency=latency)
    for _ in range(3):
        api.wait_final(_create(api)["task_id"])
    assert len(draws) == 3 and len(set(draws)) == 3


@pytest.mark.parametrize("shape", ["object", "list"])
def test_query_by_task_id_external_id_in_path_and_in_query_string(make_api, shape):
    api = make_api(query_shape=shape)
    task_id = _create(api, external_task_id="my-job")["task_id"]
    for path in (f"{EXPAND}/{task_id}", f"{EXPAND}/my-job", f"{EXPAND}?external_task_id=my-job"):
        data = api.get(path).json()["data"]
        assert isinstance(data, dict if shape == "object" else list)
        task = api.one(path)  # checks the shape
        assert task["task_id"] == task_id
        assert task["task_info"]["external_task_id"] == "my-job"


def test_the_list_answers_a_list_whatever_the_query_shape(make_api):
    api = make_api(query_shape="object")
    task_id = _create(api)["task_id"]
    data = api.get(f"{EXPAND}?pageNum=1&pageSize=5").json()["data"]
    assert isinstance(data, list) and [task["task_id"] for task in data] == [task_id]


def test_unknown_query_shape_is_refused():
    with pytest.raises(ValueError, match="query_shape"):
        LocalServer(query_shape="tuple")


@pytest.mark.parametrize(
    "path", [f"{EXPAND}/no-such-task", f"{EXPAND}?external_task_id=no-such-task"]
)
def test_unknown_task_is_1203_404(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response.json()["code"] == 1203


def test_list_newest_first_and_paged(make_api):
    api = make_api(concurrency=50)
    ids = [_create(api)["task_id"] for _ in range(5)]
    newest_first = list(reversed(ids))

    def page(query):
        response = api.get(f"{EXPAND}?{query}")
        assert response.status_code == 200, response.text
        return [task["task_id"] for task in response.json()["data"]]

    assert page("") == newest_first  # defaults: pageNum 1, pageSize 30
    assert page("pageNum=1&pageSize=2") == newest_first[:2]
    assert page("pageNum=2&pageSize=2") == newest_first[2:4]
    assert page("pageNum=3&pageSize=2") == newest_first[4:]
    assert page("pageNum=4&pageSize=2") == []
    assert page("pageNum=1000&pageSize=500") == []
    assert page("pageNum=1&pageSize=1") == newest_first[:1]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageNum=0", "pageNum"),
        ("pageNum=1001", "pageNum"),
        ("pageNum=x", "pageNum"),
        ("pageSize=0", "pageSize"),
        ("pageSize=501", "pageSize"),
        ("pageSize=1.5", "pageSize"),
    ],
)
def test_list_range_rules(api, query, field):
    response = api.get(f"{EXPAND}?{query}")
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == 1201 and field in payload["message"]


@pytest.mark.slow
def test_worked_example_canvas_and_bit_exact_original(make_api):
    api = make_api()
    original_bytes = image_bytes(1000, 1000, seed=7)
    ratios = Ratios(0.1495, 0.1495, 0.6547, 0.6547)
    task = _create(
        api,
        image=b64(original_bytes),
        n=2,
        watermark_info={"enabled": True},
        **ratios.as_dict(),
    )
    task = api.wait_final(task["task_id"])
    assert task["task_status"] == "succeed"
    canvas = canvas_for(1000, 1000, ratios)
    # 654.7 and 149.5 px bands round half up: 16:9 at 3x area, to the pixel.
    assert (canvas.width, canvas.height) == (2310, 1300)
    assert (canvas.box.left, canvas.box.top) == (655, 150)
    original = np.asarray(Image.open(io.BytesIO(original_bytes)).convert("RGB"))
    results = []
    for image in task["task_result"]["images"]:
        result = _download(image["url"])
        assert result.size == (canvas.width, canvas.height)
        pixels = np.asarray(result.convert("RGB"))
        results.append(pixels)
        box = canvas.box
        assert np.array_equal(pixels[box.top : box.bottom, box.left : box.right], original)
        marked = _download(image["watermark_url"])
        assert marked.size == result.size
        assert not np.array_equal(np.asarray(marked.convert("RGB")), pixels)
    assert len(results) == 2


def test_n_images_are_distinct(make_api):
    api = make_api(fill_method="mirror-fade")
    task = api.wait_final(_create(api, n=3)["task_id"])
    images = [_download(image["url"]).tobytes() for image in task["task_result"]["images"]]
    assert len(set(images)) == 3


def test_concurrency_limit_is_1303_and_released_when_tasks_end(make_api):
    api = make_api(concurrency=3, latency=0.3)
    first = _create(api, n=2)
    response = api.create(create_body(n=2))
    assert response.status_code == 429
    assert response.json()["code"] == 1303
    assert _create(api, n=1)["task_status"] == "submitted"  # 3 of 3 slots now
    assert api.create(create_body(n=1)).json()["code"] == 1303
    stats = api.server.stats()
    assert stats["slots_in_use"] == 3 and stats["max_slots_in_use"] == 3
    api.wait_final(first["task_id"])
    wait_until(lambda: api.server.stats()["slots_in_use"] <= 1)
    assert _create(api, n=2)["task_status"] == "submitted"
    wait_until(lambda: api.server.stats()["slots_in_use"] == 0)
    assert api.server.stats()["max_slots_in_use"] == 3


def test_task_asking_more_slots_than_the_account_has_is_1303(make_api):
    api = make_api(concurrency=2)
    assert api.create(create_body(n=3)).json()["code"] == 1303


def test_result_urls_expire(make_api):
    api = make_api(result_ttl=0.3)
    task = api.wait_final(_create(api)["task_id"])
    url = task["task_result"]["images"][0]["url"]
    assert _download(url).size
    time.sleep(0.4)
    import requests

    wait_until(lambda: requests.get(url, timeout=5).status_code == 404)
    assert api.task(task["task_id"])["task_status"] == "succeed"


def test_unknown_result_is_404(api):
    import requests

    response = requests.get(api.url + "/local/results/123/0.png", timeout=5)
    assert response.status_code == 404


def test_stats_counts_tasks_and_requests(api):
    import requests

    task_id = _create(api, external_task_id="counted")["task_id"]
    api.wait_final(task_id)
    api.get(f"{EXPAND}?pageSize=5")
    stats = requests.get(api.url + "/local/stats", timeout=5).json()
    assert stats["creates_by_external_id"] == {"counted": 1}
    assert stats["tasks"] == {"submitted": 0, "processing": 0, "succeed": 1, "failed": 0}
    assert stats["requests"]["create"] == 1
    assert stats["requests"]["list"] == 1
    assert stats["requests"]["query"] >= 1
    assert stats["slots_in_use"] == 0 and stats["max_slots_in_use"] == 1
    assert set(stats) >= {"requests", "slots_in_use", "max_slots_in_use", "tasks"}


def test_jpeg_and_rgba_inputs(make_api):
    api = make_api(concurrency=5)
    jpeg = image_bytes(400, 300, fmt="JPEG", seed=5)
    task = api.wait_final(_create(api, image=b64(jpeg))["task_id"])
    result = np.asarray(_download(task["task_result"]["images"][0]["url"]).convert("RGB"))
    canvas = canvas_for(400, 300, Ratios(0.1, 0.1, 0.2, 0.2))
    box = canvas.box
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert np.array_equal(result[box.top : box.bottom, box.left : box.right], decoded)
    buffer = io.BytesIO()
    Image.new("RGBA", (300, 300), (10, 20, 30, 128)).save(buffer, format="PNG")
    task = api.wait_final(_create(api, image=b64(buffer.getvalue()))["task_id"])
    assert task["task_status"] == "succeed"


def test_same_seed_same_tasks_and_images(make_api):
    def run(seed):
        api = make_api(seed=seed, fill_method="mirror-fade")
        task = api.wait_final(_create(api)["task_id"])
        return task["task_id"], _download(task["task_result"]["images"][0]["url"]).tobytes()

    first, again, other = run(1), run(1), run(2)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_task_ends_only_once_rendered_and_http_stays_responsive(make_api, monkeypatch):
    from kling_expand_plugin.localserver import tasks

    real_fill = tasks.fill
    rendering, release = threading.Event(), threading.Event()

    def held_fill(*args, **kwargs):
        rendering.set()
        release.wait(10)
        return real_fill(*args, **kwargs)

    monkeypatch.setattr(tasks, "fill", held_fill)
    api = make_api(latency=0.05)
    task_id = _create(api)["task_id"]
    assert rendering.wait(5)
    wait_until(lambda: api.task(task_id)["task_status"] == "processing")
    time.sleep(0.1)  # twice its latency
    # Past its latency but not rendered: still processing, and the query is answered meanwhile.
    assert api.get(f"{EXPAND}/{task_id}", timeout=2).json()["data"]["task_status"] == "processing"
    release.set()
    assert api.wait_final(task_id)["task_status"] == "succeed"


def test_render_error_fails_the_task_and_frees_its_slots(make_api, monkeypatch):
    from kling_expand_plugin.localserver import tasks

    def broken_fill(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(tasks, "fill", broken_fill)
    api = make_api(concurrency=2)
    task = api.wait_final(_create(api, n=2)["task_id"])
    assert task["task_status"] == "failed"
    assert task["task_status_msg"] == tasks.RENDER_FAILURE_MESSAGE
    wait_until(lambda: api.server.stats()["slots_in_use"] == 0)


def test_external_id_with_reserved_characters_in_both_query_forms(api):
    task_id = _create(api, external_task_id="batch 7/photo #3")["task_id"]
    from urllib.parse import quote

    for path in (
        f"{EXPAND}/{quote('batch 7/photo #3', safe='')}",
        f"{EXPAND}?external_task_id={quote('batch 7/photo #3', safe='')}",
    ):
        assert api.one(path)["task_id"] == task_id
