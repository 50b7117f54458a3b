"""A batch under faults, killed with SIGKILL at several points, then resumed to the end."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from PIL import Image

from tests.helpers import picture, write_pipeline
from tests.servers import keys_env

from .conftest import local_server

IMAGES = 60
SLOTS = 4
KILL_AFTER = (0.8, 1.2, 1.6, 2.0, 1.0, 2.4)
"""Seconds each run lives before its SIGKILL: mid-start-up, mid-create, mid-wait, mid-save."""

FAULTS = {
    "server-error": 0.03,
    "throttle": 0.03,
    "slow-create": 0.02,
    "drop-before": 0.03,
    "drop-after": 0.03,
    "bad-json": 0.03,
    "broken-download": 0.05,
}
"""Every fault of requests and downloads; failed tasks are the fault matrix's business."""


@pytest.mark.timeout(120)
def test_sigkill_at_several_points_then_resume_pays_once_and_loses_nothing(tmp_path):
    inputs, outputs, ledger = tmp_path / "in", tmp_path / "out", tmp_path / "ledger.sqlite"
    inputs.mkdir()
    for number in range(IMAGES):
        (inputs / f"in{number:03d}.png").write_bytes(picture(number))
    with local_server(concurrency=SLOTS, latency=0.3, faults=FAULTS) as server:
        config = write_pipeline(
            tmp_path / "pipeline.toml",
            [str(inputs)],
            {"endpoint": server.url, "aspect": "16:9", "concurrency": SLOTS, "ledger": str(ledger)},
            {"folder": str(outputs)},
        )
        command = [sys.executable, "-m", "imgpipe.cli", "run", str(config)]
        env = keys_env()
        killed_with_work_left = 0
        for delay in KILL_AFTER:
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(delay)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                saved = len(list(outputs.glob("*.png"))) if outputs.is_dir() else 0
                killed_with_work_left += saved < IMAGES
            else:
                process.wait(timeout=30)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
        stats = server.stats()

    assert done.returncode == 0, done.stderr[-3000:]
    assert killed_with_work_left >= 4, "the runs were not really cut short"
    assert stats["faults_fired"]["drop-after"] > 0 and stats["faults_fired"]["server-error"] > 0
    # Every input has its output, a PNG of the planned canvas.
    # A kill between the save stage's temporary file and its rename leaves a hidden ".part"
    # behind (harmless; never a partial file under a real name).
    saved = sorted(path for path in outputs.iterdir() if not path.name.startswith("."))
    leftovers = [path.name for path in outputs.iterdir() if path.name.startswith(".")]
    assert all(name.endswith(".part") for name in leftovers), leftovers
    assert [path.name for path in saved] == [f"in{number:03d}-0.png" for number in range(IMAGES)]
    for path in saved:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            assert image.format == "PNG" and image.height == 240
            assert abs(image.width / image.height - 16 / 9) < 0.01
    # One task per input: never a second task for an external id, every one succeeded.
    assert len(stats["creates_by_external_id"]) == IMAGES
    assert stats["tasks"] == {"submitted": 0, "processing": 0, "succeed": IMAGES, "failed": 0}
    assert stats["max_slots_in_use"] <= SLOTS
    # The ledger holds every task as succeeded, with its result on disk.
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT status, images FROM tasks").fetchall()
        stored = db.execute("SELECT path FROM results").fetchall()
    assert len(rows) == IMAGES and set(rows) == {("succeed", 1)}
    assert len(stored) == IMAGES and all(os.path.isfile(path) for (path,) in stored)
