from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kling_expand_plugin.localserver import LocalServer
from tests.helpers import Recorder
from tests.servers import KEYS, fast_server

SLOW_FOLDERS = ("cli", "cluster", "reliability")
"""Suites of subprocesses, Ray, PostgreSQL and long fault runs: `pytest -m "not slow"` leaves
them out for a fast loop (CI runs everything)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def http_server() -> Iterator[Callable[[dict[str, bytes]], str]]:
    """Serve fixed bodies by path on 127.0.0.1; returns the base URL."""
    servers: list[Recorder] = []

    def start(routes: dict[str, bytes]) -> str:
        servers.append(Recorder(routes))
        return servers[-1].url

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., LocalServer]]:
    """Start `fast_server(**options)` servers; every one is stopped after the test."""
    servers: list[LocalServer] = []

    def start(**options: Any) -> LocalServer:
        servers.append(fast_server(**options).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def kling_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test keys in the environment, where the stage reads them (and no API key)."""
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KLING_API_KEY", raising=False)
