"""The README's commands and examples stay true."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the README's commands in subprocesses

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_python_api_example_runs(tmp_path):
    section = README.split("## Python API", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example, "no python example under ## Python API"
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    done = subprocess.run(
        [sys.executable, "-c", example.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "coffee-0.png").is_file() and (tmp_path / "coffee-1.png").is_file()


def test_ci_runs_the_readme_test_command():
    quick_start = README.split("**The tests**", 1)[1]
    command = re.search(r"```sh\n(.*?)\n```", quick_start, re.DOTALL)
    assert command
    test_command = command.group(1).split("&&")[-1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()
