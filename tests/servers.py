"""The local server as the tests start it: the test keys, short tasks and the fast fill."""

from __future__ import annotations

import os
from typing import Any

from kling_expand_plugin.localserver import LocalServer

ACCESS_KEY = "AK-test-0123456789abcdef0123456789"
SECRET_KEY = "SK-test-secret-0123456789abcdef0123456789"
KEYS = {"KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": SECRET_KEY}
"""The keys as the stage and the command read them from the environment."""


def fast_server(**options: Any) -> LocalServer:
    """A LocalServer, not started: 127.0.0.1, the test keys, 0.05 s tasks and the fast fill,
    unless `options` say otherwise."""
    settings: dict[str, Any] = {
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "latency": 0.05,
        "fill_method": "fast",
        **options,
    }
    return LocalServer(**settings)


def keys_env(**extra: str) -> dict[str, str]:
    """This process's environment with the test keys and without an API key, for a child."""
    env = {**os.environ, **KEYS, **extra}
    env.pop("KLING_API_KEY", None)
    return env


def nothing_created(stats: dict[str, Any]) -> bool:
    """Whether a local server's stats show no create was tried and no task exists."""
    return not stats["create_attempts_by_external_id"] and not sum(stats["tasks"].values())
