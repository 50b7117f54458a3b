from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import KlingClient, PollSchedule, RetryPolicy, Timeouts
from kling_expand_plugin.localserver import LocalServer

ACCESS_KEY = "ak-test"
SECRET_KEY = "sk-very-secret-0123456789abcdefghijklmnop"
API_KEY = "apikey-very-secret-9876543210"

FAST_RETRY = RetryPolicy(
    attempts=6, base_delay=0.01, max_delay=0.05, deadline=10.0, concurrency_delay=0.01
)
FAST_POLL = PollSchedule(first=0.02, factor=1.5, longest=0.1)


def png_bytes(
    width: int = 320, height: int = 320, color: tuple[int, int, int] = (40, 120, 200)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_b64() -> str:
    return base64.b64encode(png_bytes()).decode()


@pytest.fixture(params=["object", "list"], ids=["query-object", "query-list"])
def local_server(
    request: pytest.FixtureRequest, start_server: Callable[..., LocalServer]
) -> Callable[..., LocalServer]:
    """Start a LocalServer with the client's keys and fast settings; extra kwargs override.

    Every test runs twice: with the single-task query answering `data` as the task object
    (what the real clients read) and as a list of one (the documentation's example).
    """
    settings: dict[str, Any] = {
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "api_keys": (API_KEY,),
        "concurrency": 10,
        "seed": 0,
        "query_shape": request.param,
    }
    return lambda **overrides: start_server(**{**settings, **overrides})


@pytest.fixture
def make_client() -> Iterator[Callable[..., KlingClient]]:
    """A KlingClient with the test keys and fast retries; extra kwargs override."""
    clients: list[KlingClient] = []

    def make(base_url: str, **overrides: Any) -> KlingClient:
        settings: dict[str, Any] = {
            "credentials": Credentials(ACCESS_KEY, SECRET_KEY),
            "retry": FAST_RETRY,
            "timeout": Timeouts(connect=2.0, read=5.0),
        }
        settings.update(overrides)
        client = KlingClient(base_url, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def total_tasks(server: LocalServer) -> int:
    return sum(server.stats()["tasks"].values())
