"""Fixtures for the `kling-expand` command's tests: small photos, a local server, a runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kling_expand_plugin.localserver import LocalServer
from tests.helpers import noisy_image

ACCESS_KEY = "AK-cli-test-0123456789"
SECRET_KEY = "SK-cli-test-secret-0123456789abcdef"


@dataclass
class Ran:
    """A finished `kling-expand` process."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Ran:
    """Run `kling-expand ARGS...` as a subprocess, without any KLING_* of the caller."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    process = subprocess.run(
        [sys.executable, "-m", "kling_expand_plugin.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
    )
    return Ran(process.returncode, process.stdout, process.stderr)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of three small photos (PNG, JPEG, and one in a subfolder)."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    noisy_image(400, 300, 1).save(folder / "a.png")
    noisy_image(360, 320, 2).save(folder / "b.jpg", quality=90)
    noisy_image(420, 340, 3).save(folder / "sub" / "c.png")
    return folder


@pytest.fixture
def server(start_server: Callable[..., LocalServer]) -> LocalServer:
    """A local Kling server with keys, fast tasks and the fast fill."""
    return start_server(access_key=ACCESS_KEY, secret_key=SECRET_KEY)


@pytest.fixture
def keys() -> dict[str, str]:
    return {"KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": SECRET_KEY}


@pytest.fixture(scope="session")
def batch(tmp_path_factory):
    """One batch of a folder and a file that is not an image, n = 2, to 16:9."""
    root = tmp_path_factory.mktemp("batch")
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    noisy_image(400, 300, 1).save(folder / "a.png")
    noisy_image(360, 320, 2).save(folder / "b.jpg", quality=90)
    noisy_image(420, 340, 3).save(folder / "sub" / "c.png")
    (folder / "notes.txt").write_text("a text file: the stage refuses it, whatever its name\n")
    broken = root / "broken.png"
    broken.write_text("not an image, named explicitly\n")
    out = root / "out"
    ran = run_cli(
        "expand", str(folder), str(broken), "--aspect", "16:9", "--area", "2", "--n", "2",
        "--out", str(out), "--json", "--local-latency", "0.05",
    )  # fmt: skip
    return ran, out, folder
