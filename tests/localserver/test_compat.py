"""The server as other Kling clients see it: plain HTTP and PyJWT, the way they call the API.

The flow is the one of Kuaishou's own client (KwaiVGI/ComfyUI-KLingAI-API, `py/api`): sign a
JWT, POST the create with the image as raw base64 JPEG, read `data.task_id`, poll the
single-task query reading `data.task_status` until it is neither submitted nor processing, then
`data.task_status_msg` and `data.task_result.images[].url`, and download each image. An error is
any answer that is not HTTP 200 with a `data` key, read as `code`, `message` and `request_id`.
Each field's type is checked against the documentation and what those clients read.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import jwt
import pytest
import requests
from PIL import Image

from .conftest import ACCESS_KEY, EXPAND, SECRET_KEY, image_bytes

SHAPES = ["object", "list"]


def vendor_token(access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": access_key, "exp": now + 1800, "nbf": now - 5},
        secret_key,
        headers={"alg": "HS256", "typ": "JWT"},
    )


class VendorError(Exception):
    def __init__(self, response: requests.Response) -> None:
        payload = response.json()
        self.status_code = response.status_code
        self.code = payload.get("code")
        self.message = payload.get("message")
        self.request_id = payload.get("request_id")
        self.payload = payload


class VendorLikeClient:
    """What the vendor's client does, over requests instead of httpx."""

    def __init__(self, base_url: str, shape: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.shape = shape
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token or vendor_token()}",
            }
        )

    def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        response = self.session.request(method, self.base_url + path, timeout=10, **kw)
        if response.status_code != 200 or "data" not in response.json():
            raise VendorError(response)
        payload: dict[str, Any] = response.json()
        return payload

    def create(self, **body: Any) -> dict[str, Any]:
        data = self.request("POST", EXPAND, json=body)["data"]
        assert isinstance(data, dict)  # the vendor does PredictionResponse(**data)
        return data

    def query(self, task_id: str) -> dict[str, Any]:
        data = self.request("GET", f"{EXPAND}/{task_id}")["data"]
        if self.shape == "object":
            assert isinstance(data, dict)  # ImageExpanderPredictionResponse(**data)
            return data
        assert isinstance(data, list) and len(data) == 1  # the documentation's example
        task: dict[str, Any] = data[0]
        return task

    def wait(self, task_id: str, *, poll_interval: float = 0.02, limit: float = 10) -> dict:
        deadline = time.monotonic() + limit
        task: dict[str, Any] | None = None
        while task is None or task["task_status"] in ("submitted", "processing"):
            assert time.monotonic() < deadline, "the task did not end in time"
            time.sleep(poll_interval)
            task = self.query(task_id)
        return task


def jpeg_b64(width: int = 400, height: int = 320) -> str:
    """What the vendor sends: the picture as JPEG, raw base64 without a data: prefix."""
    return base64.b64encode(image_bytes(width, height, "JPEG")).decode()


def expand_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": jpeg_b64(),
        "up_expansion_ratio": 0.1,
        "down_expansion_ratio": 0.1,
        "left_expansion_ratio": 0.25,
        "right_expansion_ratio": 0.25,
        "prompt": "",
        "n": 2,
    }
    body.update(overrides)
    return body


def assert_task_types(task: dict[str, Any], *, since_ms: int, until_ms: int) -> None:
    """Every field of a task, with the documentation's types."""
    assert isinstance(task["task_id"], str) and task["task_id"]
    assert task["task_status"] in ("submitted", "processing", "succeed", "failed")
    assert isinstance(task["task_status_msg"], str)
    assert isinstance(task["task_info"]["external_task_id"], str)
    assert isinstance(task["final_unit_deduction"], str) and task["final_unit_deduction"].isdigit()
    assert isinstance(task["watermark_info"]["enabled"], bool)
    for name in ("created_at", "updated_at"):  # Unix milliseconds, as integers
        assert type(task[name]) is int and since_ms <= task[name] <= until_ms, name
    assert task["created_at"] <= task["updated_at"]
    for image in task["task_result"]["images"]:
        assert type(image["index"]) is int and 0 <= image["index"] <= 9
        assert isinstance(image["url"], str) and image["url"].startswith("http")
        if task["watermark_info"]["enabled"]:
            assert isinstance(image["watermark_url"], str)


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_vendor_flow_creates_polls_and_downloads(make_api, shape):
    server = make_api(query_shape=shape, latency=0.2).server
    client = VendorLikeClient(server.url, shape)
    since = now_ms()
    created = client.create(**expand_body())
    assert created["task_status"] == "submitted"
    assert_task_types(created, since_ms=since, until_ms=now_ms())

    task = client.wait(created["task_id"])
    assert task["task_status"] == "succeed" and task["task_status_msg"] == ""
    assert task["final_unit_deduction"] == "2"
    assert_task_types(task, since_ms=since, until_ms=now_ms())
    images = task["task_result"]["images"]
    assert [image["index"] for image in images] == [0, 1]
    for image in images:
        response = requests.get(image["url"], stream=True, timeout=10)  # no token, like a CDN
        assert response.status_code == 200
        assert Image.open(io.BytesIO(response.content)).convert("RGB").size == (600, 384)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_failed_task_ends_the_vendor_loop_with_its_reason(make_api, shape):
    server = make_api(query_shape=shape, faults={"task-failed": 1.0}).server
    client = VendorLikeClient(server.url, shape)
    since = now_ms()
    task = client.wait(client.create(**expand_body())["task_id"])
    assert task["task_status"] == "failed" and task["task_status_msg"]
    assert task["task_result"]["images"] == [] and task["final_unit_deduction"] == "0"
    assert_task_types(task, since_ms=since, until_ms=now_ms())


def test_watermarked_results_carry_a_watermark_url_in_the_query_and_the_list(make_api):
    client = VendorLikeClient(make_api().server.url, "object")
    since = now_ms()
    task_id = client.create(**expand_body(n=1, watermark_info={"enabled": True}))["task_id"]
    task = client.wait(task_id)
    listed = client.request("GET", f"{EXPAND}?pageNum=1&pageSize=30")["data"]
    for seen in (task, listed[0]):
        assert_task_types(seen, since_ms=since, until_ms=now_ms())
        assert requests.get(seen["task_result"]["images"][0]["watermark_url"], timeout=10).ok


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        pytest.param(lambda c: c.create(**expand_body(n=0)), 400, 1201, id="n=0"),
        pytest.param(lambda c: c.create(**expand_body(image="")), 400, 1201, id="no image"),
        pytest.param(lambda c: c.query("no-such-task"), 404, 1203, id="unknown task"),
    ],
)
@pytest.mark.parametrize("shape", SHAPES)
def test_errors_arrive_in_the_envelope_with_their_http_status(make_api, shape, call, status, code):
    client = VendorLikeClient(make_api(query_shape=shape).server.url, shape)
    with pytest.raises(VendorError) as caught:
        call(client)
    error = caught.value
    assert (error.status_code, error.code) == (status, code)
    assert isinstance(error.message, str) and error.message
    assert isinstance(error.request_id, str) and error.request_id
    assert error.payload["data"] is None


def test_n_zero_names_the_field(make_api):
    client = VendorLikeClient(make_api().server.url, "object")
    with pytest.raises(VendorError) as caught:
        client.create(**expand_body(n=0))
    assert caught.value.message.startswith("n = 0")


def test_a_token_signed_with_another_secret_is_401(make_api):
    server = make_api().server
    client = VendorLikeClient(
        server.url,
        "object",
        token=vendor_token(secret_key="another-secret-0123456789abcdef0123456789"),
    )
    with pytest.raises(VendorError) as caught:
        client.create(**expand_body())
    assert (caught.value.status_code, caught.value.code) == (401, 1002)
    assert sum(server.stats()["tasks"].values()) == 0
