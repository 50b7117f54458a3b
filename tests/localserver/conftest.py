"""Fixtures for the local server's conformance suite: raw HTTP with requests, tokens with jwt."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import numpy as np
import pytest
import requests
from PIL import Image

from kling_expand_plugin.localserver import LocalServer
from tests.helpers import Recorder
from tests.servers import ACCESS_KEY, SECRET_KEY, fast_server

EXPAND = "/v1/images/editing/expand"


def make_token(
    iss: str = ACCESS_KEY,
    secret: str = SECRET_KEY,
    *,
    exp_in: float = 1800,
    nbf_in: float = -5,
    claims: dict[str, Any] | None = None,
) -> str:
    """A JWT as the contract describes it (HS256, iss, exp = now + 1800, nbf = now - 5)."""
    now = int(time.time())
    payload: dict[str, Any] = {"iss": iss, "exp": now + int(exp_in), "nbf": now + int(nbf_in)}
    if claims is not None:
        payload = claims
    return jwt.encode(payload, secret, algorithm="HS256", headers={"typ": "JWT"})


def auth_headers(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or make_token()}"}


def image_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 1) -> bytes:
    """A noisy RGB image file, so that a bit-exact comparison means something."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


SMALL_PNG_B64 = b64(image_bytes(320, 300))


def create_body(**overrides: Any) -> dict[str, Any]:
    """A valid create body (320x300 PNG, small expansion), with fields replaced or removed."""
    body: dict[str, Any] = {
        "image": SMALL_PNG_B64,
        "up_expansion_ratio": 0.1,
        "down_expansion_ratio": 0.1,
        "left_expansion_ratio": 0.2,
        "right_expansion_ratio": 0.2,
    }
    for name, value in overrides.items():
        if value is _REMOVE:
            body.pop(name, None)
        else:
            body[name] = value
    return body


_REMOVE = object()
REMOVE: Any = _REMOVE
"""Pass as a create_body override to leave the field out."""


def _or_default(headers: dict[str, str] | None) -> dict[str, str]:
    return auth_headers() if headers is None else headers


@dataclass
class Api:
    """Raw HTTP against one server: every call returns the requests.Response."""

    server: LocalServer
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return self.server.url

    def create(self, body: Any, *, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.session.post(
            self.url + EXPAND,
            data=json.dumps(body),
            headers={"Content-Type": "application/json", **_or_default(headers)},
            timeout=kw.pop("timeout", 10),
            **kw,
        )

    def get(self, path: str, *, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.session.get(
            self.url + path, headers=_or_default(headers), timeout=kw.pop("timeout", 10), **kw
        )

    def task(self, task_id: str) -> dict[str, Any]:
        return self.one(f"{EXPAND}/{task_id}")

    def one(self, path: str) -> dict[str, Any]:
        """The task a single-task query answers, in the server's query shape."""
        response = self.get(path)
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["code"] == 0
        if self.server.query_shape == "list":
            assert isinstance(payload["data"], list) and len(payload["data"]) == 1
            return payload["data"][0]
        assert isinstance(payload["data"], dict)
        return payload["data"]

    def wait_final(self, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the task succeeds or fails (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if task["task_status"] in ("succeed", "failed"):
                return task
            time.sleep(0.02)
        raise AssertionError(f"task {task_id} did not end within {timeout} s")


@pytest.fixture(scope="module")
def shared_api() -> Iterator[Api]:
    """One default server for a whole module, for tests that create no task."""
    server = fast_server(concurrency=1000).start()
    yield Api(server)
    server.stop()


@pytest.fixture
def api(start_server: Callable[..., LocalServer]) -> Api:
    """An Api on a default server."""
    return Api(start_server())


@pytest.fixture
def make_api(start_server: Callable[..., LocalServer]) -> Callable[..., Api]:
    """An Api on a server started with these options."""
    return lambda **options: Api(start_server(**options))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()
