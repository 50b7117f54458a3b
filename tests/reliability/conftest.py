"""Shared by the reliability suite: the account's keys, distinct pictures, a local server."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from PIL import Image

from kling_expand_plugin.localserver import LocalServer

ACCESS_KEY = "reliability-access-key"
SECRET_KEY = "reliability-SECRET-KEY-5f0c2a9e7b1d"
KEYS = {"KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": SECRET_KEY}


def picture(number: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A distinct small PNG per number (distinct inputs have distinct external ids)."""
    image = Image.new("RGB", size, ((number * 37) % 256, (number * 91) % 256, 120))
    box = (size[0] // 8, size[1] // 6, size[0] // 2 + number % 100, size[1] * 2 // 3)
    image.paste(((number // 256) % 256, 200, number % 256), box)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def varied_latency(rng: random.Random) -> float:
    """Task durations from 0.05 to 0.2 s, so tasks finish out of order."""
    return rng.uniform(0.05, 0.2)


def local_server(**options: Any) -> LocalServer:
    """A LocalServer with the suite's keys, the fast fill and short, varied tasks."""
    settings: dict[str, Any] = {
        "latency": varied_latency,
        "concurrency": 8,
        "fill_method": "fast",
        "seed": 11,
        "slow_create_delay": 1.0,
        **options,
    }
    return LocalServer(access_key=ACCESS_KEY, secret_key=SECRET_KEY, **settings)


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local server's keys in the environment, where the stage reads them."""
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KLING_API_KEY", raising=False)
