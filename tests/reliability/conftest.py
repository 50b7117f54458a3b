"""Shared by the reliability suite: the account's keys, distinct pictures, a local server."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kling_expand_plugin.localserver import LocalServer

ACCESS_KEY = "reliability-access-key"
SECRET_KEY = "reliability-SECRET-KEY-5f0c2a9e7b1d"
KEYS = {"KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": SECRET_KEY}


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
