"""Every documented rule of the create body: 1201 (or 1200), HTTP 400, the field named."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from kling_expand_plugin.kling import limits

from .conftest import EXPAND, REMOVE, auth_headers, b64, create_body, image_bytes


def _refusal(response, code=1201):
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["code"] == code
    assert payload["data"] is None
    return payload["message"]


def _accepted(response):
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["code"] == 0
    return payload["data"]


def _other_format(fmt: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (400, 400), "red").save(buffer, format=fmt)
    return b64(buffer.getvalue())


BAD_FIELDS = [
    # (override, field the message must name)
    ({"image": REMOVE}, "image"),
    ({"image": ""}, "image"),
    ({"image": 12}, "image"),
    ({"image": "data:image/png;base64," + b64(image_bytes(320, 300))}, "image"),
    ({"image": "%%% not base64 %%%"}, "image"),
    ({"image": "ftp://127.0.0.1/x.png"}, "image"),
    ({"image": _other_format("GIF")}, "image"),
    ({"image": _other_format("BMP")}, "image"),
    ({"image": _other_format("WEBP")}, "image"),
    ({"image": b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)}, "image"),  # PNG magic, broken file
    ({"image": b64(image_bytes(299, 400))}, "image"),
    ({"image": b64(image_bytes(400, 299))}, "image"),
    ({"image": b64(image_bytes(751, 300))}, "image"),  # wider than 2.5:1
    ({"image": b64(image_bytes(300, 751))}, "image"),  # taller than 1:2.5
    ({"up_expansion_ratio": REMOVE}, "up_expansion_ratio"),
    ({"down_expansion_ratio": None}, "down_expansion_ratio"),
    ({"left_expansion_ratio": "0.5"}, "left_expansion_ratio"),
    ({"right_expansion_ratio": True}, "right_expansion_ratio"),
    ({"up_expansion_ratio": -0.01}, "up_expansion_ratio"),
    ({"down_expansion_ratio": 2.01}, "down_expansion_ratio"),
    ({"left_expansion_ratio": [1]}, "left_expansion_ratio"),
    ({"up_expansion_ratio": 1.0, "left_expansion_ratio": 0.6}, "(1 + up + down)"),  # area 3.2
    ({"prompt": "x" * (limits.MAX_PROMPT_CHARS + 1)}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"n": 0}, "n"),
    ({"n": 10}, "n"),
    ({"n": "2"}, "n"),
    ({"n": 2.5}, "n"),
    ({"n": True}, "n"),
    ({"watermark_info": True}, "watermark_info"),
    ({"watermark_info": {}}, "watermark_info.enabled"),
    ({"watermark_info": {"enabled": "yes"}}, "watermark_info.enabled"),
    ({"callback_url": "ftp://127.0.0.1/hook"}, "callback_url"),
    ({"callback_url": "not a url"}, "callback_url"),
    ({"callback_url": 7}, "callback_url"),
    ({"external_task_id": 7}, "external_task_id"),
]


@pytest.mark.parametrize(("override", "field"), BAD_FIELDS)
def test_each_rule_refused_with_1201_naming_the_field(shared_api, override, field):
    tasks_before = shared_api.server.stats()["tasks"]
    message = _refusal(shared_api.create(create_body(**override)))
    assert field in message
    assert sum(shared_api.server.stats()["tasks"].values()) == sum(tasks_before.values())


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_ratio_refused(shared_api, text):
    api = shared_api
    body = create_body()
    body["up_expansion_ratio"] = "RATIO"
    raw = json.dumps(body).replace('"RATIO"', text)
    response = api.session.post(
        api.url + EXPAND, data=raw, headers={**auth_headers(), "Content-Type": "application/json"}
    )
    assert "up_expansion_ratio" in _refusal(response)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"null"]
)
def test_body_not_a_json_object_is_1200(shared_api, raw):
    api = shared_api
    response = api.session.post(
        api.url + EXPAND, data=raw, headers={**auth_headers(), "Content-Type": "application/json"}
    )
    _refusal(response, code=1200)


def test_image_over_10_mb_refused(api):
    oversized = b"\x89PNG\r\n\x1a\n" + b"\x00" * (limits.MAX_FILE_BYTES - 7)
    assert "image" in _refusal(api.create(create_body(image=b64(oversized))))


ACCEPTED = [
    {"image": b64(image_bytes(300, 300))},
    {"image": b64(image_bytes(750, 300))},  # exactly 2.5:1
    {"image": b64(image_bytes(300, 750))},  # exactly 1:2.5
    {"image": b64(image_bytes(320, 300, fmt="JPEG"))},
    {"up_expansion_ratio": 0, "down_expansion_ratio": 0, "left_expansion_ratio": 0},
    {
        "up_expansion_ratio": 2,
        "down_expansion_ratio": 0,
        "left_expansion_ratio": 0,
        "right_expansion_ratio": 0,
    },  # one side at 2.0: area exactly 3
    {
        "up_expansion_ratio": 0.5,
        "down_expansion_ratio": 0.5,
        "left_expansion_ratio": 0.25,
        "right_expansion_ratio": 0.25,
    },  # area exactly 3
    {"prompt": "y" * limits.MAX_PROMPT_CHARS},
    {"prompt": None, "callback_url": "", "external_task_id": ""},  # empty means absent
    {"n": 1},
    {"n": 9},
    {"watermark_info": {"enabled": False}},
    {"watermark_info": {"enabled": True}},
    {"image": " \n".join([b64(image_bytes(320, 300))[:100], b64(image_bytes(320, 300))[100:]])},
    {"model_name": "kling-v1"},  # unknown fields are ignored
]


@pytest.mark.parametrize("override", ACCEPTED)
def test_boundaries_accepted(shared_api, override):
    task = _accepted(shared_api.create(create_body(**override)))
    assert task["task_status"] == "submitted"


def test_area_within_tolerance_accepted(api):
    # The worked example's ratios, rounded to 4 places, give an area a hair under 3.
    body = create_body(
        up_expansion_ratio=0.1495,
        down_expansion_ratio=0.1495,
        left_expansion_ratio=0.6547,
        right_expansion_ratio=0.6547,
    )
    _accepted(api.create(body))
    tiny_excess = 1.5 * (1 + limits.AREA_TOLERANCE / 10) - 1  # area 3 * (1 + tol/10)
    body = create_body(
        up_expansion_ratio=0,
        down_expansion_ratio=1,
        left_expansion_ratio=tiny_excess,
        right_expansion_ratio=0,
    )
    _accepted(api.create(body))


def test_area_beyond_tolerance_refused(shared_api):
    over = 1.5 * (1 + 1e-6) - 1  # area 3 * (1 + 1e-6)
    body = create_body(
        up_expansion_ratio=0,
        down_expansion_ratio=1,
        left_expansion_ratio=over,
        right_expansion_ratio=0,
    )
    assert "(1 + up + down)" in _refusal(shared_api.create(body))


def test_image_by_url(api, recorder):
    recorder.files["/photo.png"] = image_bytes(400, 300)
    recorder.files["/notes.txt"] = b"hello"
    task = _accepted(api.create(create_body(image=recorder.url + "/photo.png")))
    assert api.wait_final(task["task_id"])["task_status"] == "succeed"
    assert "image" in _refusal(api.create(create_body(image=recorder.url + "/missing.png")))
    assert "image" in _refusal(api.create(create_body(image=recorder.url + "/notes.txt")))
    assert "image" in _refusal(api.create(create_body(image="http://127.0.0.1:9/closed.png")))


def test_reused_external_task_id_refused(api):
    _accepted(api.create(create_body(external_task_id="job-1")))
    message = _refusal(api.create(create_body(external_task_id="job-1")))
    assert "external_task_id" in message
    stats = api.server.stats()
    assert stats["creates_by_external_id"] == {"job-1": 1}
    assert stats["create_attempts_by_external_id"] == {"job-1": 2}
