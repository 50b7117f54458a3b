"""What the benchmarks share: the local server in its own process, its counters, test pictures.

The server runs as `kling-expand serve` in a subprocess so that the benchmark's process holds
only the stage (or the baseline client): its CPU time and memory are the client side's own.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from kling_expand_plugin import Credentials, KlingClient
from kling_expand_plugin.kling.models import Task

ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
SERVE = [sys.executable, "-m", "kling_expand_plugin.cli", "serve", "--port", "0"]
PHOTOS = Path(__file__).resolve().parents[1] / "sample_data" / "photos"


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


def picture(number: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A distinct small PNG per number (distinct inputs have distinct external ids)."""
    image = Image.new("RGB", size, ((number * 37) % 256, (number * 91) % 256, 120))
    box = (size[0] // 8, size[1] // 6, size[0] // 2 + number % 100, size[1] * 2 // 3)
    image.paste(((number // 256) % 256, 200, number % 256), box)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


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
