"""Shared by the reliability suite: a local server with short, varied tasks."""

from __future__ import annotations

import random
from typing import Any

from kling_expand_plugin.localserver import LocalServer
from tests.servers import fast_server


def varied_latency(rng: random.Random) -> float:
    """Task durations from 0.05 to 0.2 s, so tasks finish out of order."""
    return rng.uniform(0.05, 0.2)


def local_server(**options: Any) -> LocalServer:
    """A LocalServer with the test keys, the fast fill and short, varied tasks."""
    settings: dict[str, Any] = {
        "latency": varied_latency,
        "concurrency": 8,
        "seed": 11,
        "slow_create_delay": 1.0,
        **options,
    }
    return fast_server(**settings)
