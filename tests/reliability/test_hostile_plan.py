"""`kling-expand plan` over a folder of every hostile kind at once, as a user runs it: each
file planned or refused with its reason, one bad file never discarding the others, nothing
on stderr (no traceback, no Python warning, no libtiff message), in bounded time and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import noisy_image

from .corpus import CORPUS, PLANNED

MAX_RSS_MB = 400
"""Python, NumPy and Pillow take about 100 MB; the 83-megapixel claim alone cost 712 MB."""

# Runs the command in-process under a wrapper that reports the peak RSS to a file, so that the
# command's own stdout and stderr are untouched.
# (VmHWM, not ru_maxrss: that one keeps the forking parent's peak across exec.)
WRAPPER = """
import re, sys
from kling_expand_plugin.cli import main
try:
    code = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(re.search(r"VmHWM:\\s*(\\d+) kB", status.read()).group(1))
sys.exit(code)
"""


pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists() and not os.environ.get("CI"),
    reason="measures memory through Linux's /proc (CI runs on Linux: there it fails instead)",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, (make, _) in CORPUS.items():
        (folder / name).write_bytes(make())
    noisy_image(400, 300, 5).save(folder / "ordinary.png")
    return folder


def plan(folder: Path, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `kling-expand plan FOLDER ARGS` with no `gs` on PATH; the process and its peak RSS
    in MB."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    env["PATH"] = str(empty)
    rss = tmp_path / "rss"
    process = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(rss), "plan", str(folder), "--aspect", "16:9", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    return process, int(rss.read_text()) // 1024


@pytest.mark.timeout(120)
def test_plan_of_a_hostile_folder_reports_every_file_quietly_and_within_bounds(corpus, tmp_path):
    process, rss_mb = plan(corpus, tmp_path, "--json")
    assert process.returncode == 1  # some were refused
    assert process.stderr == ""
    entries = {entry["key"]: entry for entry in json.loads(process.stdout)["inputs"]}
    assert sorted(entries) == sorted([*CORPUS, "ordinary.png"])
    assert "error" not in entries["ordinary.png"]
    for name, (_, expected) in CORPUS.items():
        entry = entries[name]
        if expected == PLANNED:
            assert "error" not in entry and entry["passes"], entry
        else:
            assert expected in entry["problem"] and entry["rule"], entry
            assert entry["error"] == f"item {name!r}: {entry['problem']} (rule: {entry['rule']})"
    assert rss_mb < MAX_RSS_MB


@pytest.mark.timeout(120)
def test_plan_prints_a_line_per_refused_file_with_its_rule(corpus, tmp_path):
    process, _ = plan(corpus, tmp_path)
    assert process.returncode == 1 and process.stderr == ""
    lines = process.stdout.splitlines()
    assert "no-ghostscript.eps: cannot be expanded: an EPS file: reading it needs Ghostscript" in (
        process.stdout
    )
    for name, (_, expected) in CORPUS.items():
        mine = [line for line in lines if line.startswith(f"{name}: ")]
        assert len(mine) == 1, name
        if expected != PLANNED:
            assert expected in mine[0] and "(rule: " in mine[0]


@pytest.mark.timeout(60)
def test_a_file_libtiff_complains_about_but_reads_plans_cleanly(corpus, tmp_path):
    process, _ = plan(corpus / "g4-bad-tag-value.tif", tmp_path)
    assert process.returncode == 0, process.stdout
    assert process.stderr == ""


@pytest.mark.timeout(120)
def test_expand_copies_a_deep_input_of_the_target_shape_as_a_normal_picture(corpus, tmp_path):
    """Already 4:3, so copied as PNG without a task: from the 8-bit picture, not the raw file
    (PNG holds no float pixels, and 12-bit data read as 16-bit would be black)."""
    names = ["float-unit.tif", "twelve-in-sixteen.tif", "bilevel-g4-grey-profile.tif"]
    out = tmp_path / "out"
    process = subprocess.run(
        [
            sys.executable, "-m", "kling_expand_plugin.cli", "expand",
            *(str(corpus / name) for name in names), "--aspect", "4:3", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert process.returncode == 0 and process.stderr == "", process.stderr
    for name in names:
        with Image.open(out / f"{Path(name).stem}-0.png") as copy:
            grey = np.asarray(copy.convert("L"), dtype=np.float64) / 255
        assert copy.size == (400, 300) and 0.3 < grey.mean() < 0.7


def test_a_bug_planning_one_input_is_reported_on_its_line_and_the_rest_are_planned(
    corpus, monkeypatch, capsys
):
    from kling_expand_plugin import cli
    from kling_expand_plugin.cli import plan

    plan_of = plan._plan_of

    def failing(item, stage):
        if item.key == "ordinary.png":
            raise RuntimeError("an unforeseen failure")
        return plan_of(item, stage)

    monkeypatch.setattr(plan, "_plan_of", failing)
    inputs = [str(corpus / "ordinary.png"), str(corpus / "float-unit.tif")]
    code = cli.main(["plan", *inputs, "--aspect", "16:9", "--json"])
    entries = {entry["key"]: entry for entry in json.loads(capsys.readouterr().out)["inputs"]}
    assert code == 1 and entries["float-unit.tif"]["passes"]
    assert entries["ordinary.png"]["problem"] == "could not be planned (RuntimeError)"
    assert "a bug in kling-expand" in entries["ordinary.png"]["rule"]
