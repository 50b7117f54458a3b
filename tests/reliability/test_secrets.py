"""Secrets: a whole batch at DEBUG, with faults and signed callbacks, leaks no key and no token.

The secret key, the webhook secret (whole, its base64 and its raw bytes) and anything shaped
like a JWT are searched for in the `imgpipe -vv` output, the test process's logs (the local
server's), the ledger and its results, the saved outputs, and, for the Python API, the
results' metadata, the stage's repr and its summary.
"""

from __future__ import annotations

import base64
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imgpipe import Item
from kling_expand_plugin.outpaint.stage import OutpaintStage
from tests.helpers import picture, write_pipeline
from tests.servers import SECRET_KEY, keys_env

from .conftest import local_server

WEBHOOK_KEY = b"reliability-WEBHOOK-raw-key-0042"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
JWT = re.compile(rb"eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}")
FAULTS = {
    "server-error": 0.1,
    "bad-json": 0.1,
    "drop-after": 0.1,
    "task-failed": 0.1,
    "broken-download": 0.1,
    "callback-repeat": 0.2,
}
"""Faults, so that the error paths (the likeliest to leak) are logged too."""


def leaks(data: bytes) -> list[str]:
    """What secret material `data` holds, by name (never the material itself)."""
    found = [
        name
        for name, secret in (
            ("secret key", SECRET_KEY.encode()),
            ("webhook secret", WEBHOOK_SECRET.encode()),
            ("webhook secret's base64", WEBHOOK_SECRET.removeprefix("whsec_").encode()),
            ("webhook secret's raw key", WEBHOOK_KEY),
        )
        if secret in data
    ]
    return found + (["a JWT"] if JWT.search(data) else [])


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.timeout(90)
def test_a_debug_batch_leaks_no_secret_anywhere(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    inputs, outputs, ledger = tmp_path / "in", tmp_path / "out", tmp_path / "ledger.sqlite"
    inputs.mkdir()
    for number in range(16):
        (inputs / f"in{number:02d}.png").write_bytes(picture(number))
    env = keys_env(KLING_WEBHOOK_SECRET=WEBHOOK_SECRET)
    with local_server(concurrency=4, faults=FAULTS, webhook_secret=WEBHOOK_SECRET) as server:
        outpaint = {
            "endpoint": server.url,
            "aspect": "16:9",
            "n": 2,
            "concurrency": 4,
            "callback": "127.0.0.1:0",
            "ledger": str(ledger),
        }
        config = write_pipeline(
            tmp_path / "pipeline.toml", [str(inputs)], outpaint, {"folder": str(outputs)}
        )
        command = [sys.executable, "-m", "imgpipe.cli", "-vv", "run", str(config)]
        done = subprocess.run(command, env=env, capture_output=True, timeout=80)
        stats = server.stats()

    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: some tasks failed, by fault
    assert b"DEBUG" in done.stderr and b"callback for" in done.stderr  # really at DEBUG
    assert stats["callbacks"]["sent"] > 0 and stats["faults_fired"]["task-failed"] > 0
    assert len(list(outputs.glob("*.png"))) >= 16  # most of 16 x 2 results were saved
    assert Path(f"{ledger}.results").is_dir()
    places = {
        "imgpipe stdout": done.stdout,
        "imgpipe stderr": done.stderr,
        "server logs": caplog.text.encode(),
        **files_under(tmp_path),
    }
    found = {place: leaks(data) for place, data in places.items() if leaks(data)}
    assert found == {}


@pytest.mark.timeout(60)
def test_the_python_api_leaks_no_secret_in_results_repr_or_logs(
    tmp_path, caplog, kling_env, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KLING_WEBHOOK_SECRET", WEBHOOK_SECRET)
    with local_server(concurrency=4, faults=FAULTS, webhook_secret=WEBHOOK_SECRET) as server:
        stage = OutpaintStage(
            endpoint=server.url,
            aspect="16:9",
            callback="127.0.0.1:0",
            on_error="passthrough",
            ledger=str(tmp_path / "ledger.sqlite"),
        )
        out = list(stage(Item(f"api{number}.png", picture(100 + number)) for number in range(8)))
    assert len(out) == 8
    text = "\n".join(
        [caplog.text, repr(stage), repr(stage.credentials), repr(stage.summary)]
        + [repr(item) + repr(item.metadata) for item in out]
    )
    assert leaks(text.encode()) == []
    assert leaks(b"".join(files_under(tmp_path).values())) == []
