"""What the benchmarks share: the local server in its own process, its counters, their options.

The server runs as `kling-expand serve` in a subprocess so that the benchmark's process holds
only the stage (or the baseline client): its CPU time and memory are the client side's own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from kling_expand_plugin import Credentials, KlingClient
from kling_expand_plugin.kling.models import Task

ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
SERVE = [sys.executable, "-m", "kling_expand_plugin.cli", "serve", "--port", "0"]
ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "sample_data" / "photos"

sys.path.insert(0, str(ROOT))  # the tests' distinct pictures serve the benchmarks too
from tests.helpers import picture  # noqa: E402

__all__ = ["picture"]  # re-exported: the benchmarks import it from here


def load_arguments(description: str, *, n: int, baseline_n: int) -> argparse.Namespace:
    """The load benchmarks' options: N images, L seconds per task, K slots, the baseline's N."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=n, help="images through the stage")
    parser.add_argument(
        "--latency", type=float, default=1.0, help="L, seconds per task (on average)"
    )
    parser.add_argument("--slots", type=int, default=20, help="K, the account's task slots")
    parser.add_argument("--baseline-n", type=int, default=baseline_n, help="the baseline's tasks")
    return parser.parse_args()


def use_server_keys() -> None:
    """Put the server's keys where the stage and the client look for them."""
    os.environ["KLING_ACCESS_KEY"] = ACCESS_KEY
    os.environ["KLING_SECRET_KEY"] = SECRET_KEY
    os.environ.pop("KLING_API_KEY", None)


@contextmanager
def server_process(
    *, latency: float | str, concurrency: int, fill: str = "fast", extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """`kling-expand serve` in a subprocess for the block; yields its base URL.

    `latency`: seconds per task, or "MIN-MAX" for a uniform draw per task.
    """
    command = [
        *SERVE,
        *("--access-key", ACCESS_KEY, "--latency", str(latency)),
        *("--concurrency", str(concurrency), "--fill", fill, *extra),
    ]
    env = {**os.environ, "KLING_SECRET_KEY": SECRET_KEY}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the local server did not start: {line!r}")
        yield line.removeprefix("listening on ")
    finally:
        process.terminate()
        process.wait(timeout=10)


def server_stats(url: str) -> dict[str, Any]:
    """The server's counters (GET /local/stats)."""
    response = requests.get(f"{url}/local/stats", timeout=10)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), in MiB; Linux only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory figure needs Linux")


def server_tasks(url: str) -> list[Task]:
    """Every task the server has, oldest first (the list endpoint, not counted as a GET)."""
    with KlingClient(url, Credentials.from_env()) as client:
        tasks = list(client.list(page_size=500))
    return sorted(tasks, key=lambda task: task.created_at or 0)


def slot_occupancy(tasks: list[Task], slots: int) -> float:
    """The share of the account's slot-seconds spent running tasks, from the first create
    to the last end, as the server's own timestamps say (1.0: never a slot idle)."""
    created = [task.created_at or 0 for task in tasks]
    ended = [task.updated_at or 0 for task in tasks]
    busy = sum(end - start for start, end in zip(created, ended, strict=True))
    return busy / (slots * (max(ended) - min(created)))
