"""The README's "Running on a cluster" example runs, as written (its own Ray instance)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.servers import fast_server

from .conftest import KEYS, require, unavailable

ROOT = Path(__file__).parents[2]
EXAMPLE_URL = "http://127.0.0.1:8765"


def test_the_cluster_example_runs(tmp_path):
    require("ray")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if "## Running on a cluster" not in readme:
        unavailable('the README has no "## Running on a cluster" section')
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example, "no python example under ## Running on a cluster"
    assert EXAMPLE_URL in example.group(1)
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    with fast_server(latency=0.1, concurrency=4) as server:
        code = example.group(1).replace(EXAMPLE_URL, server.url)
        # Its Ray workers inherit the credentials from its environment, as the README says.
        env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
        env.update(KEYS)
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        stats = server.stats()
    assert done.returncode == 0, done.stderr[-3000:]
    photos = sorted(p.stem for p in (ROOT / "sample_data" / "photos").iterdir())
    written = sorted(p.name for p in (tmp_path / "out" / "cluster" / "images").iterdir())
    assert written == [f"{stem}-0.png" for stem in photos]
    assert stats["max_slots_in_use"] <= 4
    assert set(stats["creates_by_external_id"].values()) == {1}
