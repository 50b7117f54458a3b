"""`kling-expand serve`: the first line, keys from flags or environment, faults, clean shutdown."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from kling_expand_plugin.cli import main
from kling_expand_plugin.localserver.faults import FAULTS

from .conftest import ACCESS_KEY, EXPAND, SECRET_KEY, auth_headers, create_body, make_token

pytestmark = pytest.mark.slow  # `kling-expand serve` in subprocesses


class Served:
    """A running `kling-expand serve`: its URL and the lines it printed (read on a thread)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def next_line(self, timeout: float = 15.0) -> str:
        return self.lines.get(timeout=timeout)

    def output(self) -> str:
        lines = []
        while not self.lines.empty():
            lines.append(self.lines.get())
        return "".join(lines) + self.stderr


@contextmanager
def _serve(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[Served, str]]:
    """Run `kling-expand serve --port 0 ...`; yield it and its URL; SIGTERM after."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "kling_expand_plugin.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base_env, **(env or {})},
    )
    served = Served(process)
    try:
        first = served.next_line()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", first)
        assert match, first
        yield served, match.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, served.stderr = process.communicate(timeout=10)
        finally:
            process.kill()


def test_serve_with_keys_and_a_fault():
    with _serve(
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        SECRET_KEY,
        "--fault",
        "throttle=1",
        "--seed",
        "3",
        "--fill",
        "fast",
        "--latency",
        "0.05",
    ) as (served, url):
        response = requests.get(url + EXPAND, headers=auth_headers(), timeout=5)
        assert (response.status_code, response.json()["code"]) == (429, 1302)
        response = requests.get(url + EXPAND, headers={"Authorization": "Bearer x"}, timeout=5)
        assert response.json()["code"] in (1000, 1002)
    assert served.process.returncode == 0


def test_serve_with_keys_from_the_environment_never_prints_the_secret():
    env = {"KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": SECRET_KEY}
    with _serve("--fill", "fast", env=env) as (served, url):
        response = requests.get(url + EXPAND, headers=auth_headers(make_token()), timeout=5)
        assert response.json()["code"] == 0
    assert SECRET_KEY not in served.output()
    assert served.process.returncode == 0


def test_serve_without_keys_warns_and_accepts_any_token():
    with _serve("--fill", "fast") as (served, url):
        assert served.next_line().startswith("warning: no keys configured")
        response = requests.get(url + EXPAND, headers={"Authorization": "Bearer x"}, timeout=5)
        assert response.json()["code"] == 0
    assert served.process.returncode == 0


def test_serve_query_shape_connection_limit_and_reused_ids():
    with _serve(
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        SECRET_KEY,
        "--fill",
        "fast",
        "--query-shape",
        "list",
        "--max-connections",
        "3",
        "--accept-reused-ids",
    ) as (served, url):
        body = create_body(external_task_id="again")
        first, second = (
            requests.post(url + EXPAND, json=body, headers=auth_headers(), timeout=5)
            for _ in range(2)
        )
        assert first.json()["code"] == second.json()["code"] == 0
        data = requests.get(url + f"{EXPAND}/again", headers=auth_headers(), timeout=5).json()
        assert data["data"][0]["task_id"] == second.json()["data"]["task_id"]
        stats = requests.get(url + "/local/stats", timeout=5).json()
        assert stats["creates_by_external_id"] == {"again": 2}
        assert stats["connections"]["limit"] == 3
    assert served.process.returncode == 0


def test_help_lists_every_fault(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for name in FAULTS:
        assert name in text


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["serve", "--fault", "no-such=1"], "--fault: 'no-such=1': expected NAME=RATE"),
        (["serve", "--fault", "throttle"], "--fault: 'throttle': expected NAME=RATE"),
        (["serve", "--fault", "throttle=2"], "--fault: 'throttle=2': RATE must be in 0..1"),
        (["serve", "--latency", "soon"], "--latency: latency 'soon' is not S or MIN-MAX"),
        (["serve", "--access-key", "only-the-access-key"], "--access-key and --secret-key go"),
        (["serve", "--fill", "nope"], "--fill: invalid choice: 'nope'"),
        (["serve", "--query-shape", "tuple"], "--query-shape: invalid choice: 'tuple'"),
        (["serve", "--max-connections", "0"], "--max-connections: '0' is not a whole number"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument_and_the_rule(args, words, capsys, monkeypatch):
    monkeypatch.delenv("KLING_SECRET_KEY", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_latency_takes_seconds_or_a_uniform_range():
    import random

    from kling_expand_plugin.cli import build_parser

    assert build_parser().parse_args(["serve", "--latency", "0.5"]).latency == 0.5
    draw = build_parser().parse_args(["serve", "--latency", "0.1-0.3"]).latency
    values = [draw(random.Random(seed)) for seed in range(20)]
    assert all(0.1 <= value <= 0.3 for value in values) and len(set(values)) == 20
    args = build_parser().parse_args(["serve", "--fault", "throttle=0.25", "--fault", "bad-json=1"])
    assert dict(args.fault) == {"throttle": 0.25, "bad-json": 1.0}
