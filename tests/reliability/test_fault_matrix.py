"""Every fault of the local server at once, at realistic rates, under a 200-image batch."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from imgpipe import Item
from kling_expand_plugin.localserver.faults import FAULTS
from kling_expand_plugin.localserver.tasks import FAILURE_MESSAGES
from kling_expand_plugin.outpaint.stage import OutpaintStage
from tests.helpers import picture

from .conftest import local_server

IMAGES = 200
SLOTS = 8
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"fault-matrix-webhook-secret-0123").decode()
RATES = {
    "server-error": 0.02,
    "throttle": 0.02,
    "slow-create": 0.02,
    "drop-before": 0.02,
    "drop-after": 0.02,
    "bad-json": 0.02,
    "task-failed": 0.03,
    "broken-download": 0.05,
    "callback-drop": 0.05,
    "callback-repeat": 0.05,
    "callback-reorder": 0.05,
}


def test_the_rates_switch_every_fault_on():
    assert set(RATES) == set(FAULTS)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("callback", [None, "127.0.0.1:0"], ids=["polling", "callbacks"])
def test_every_input_is_accounted_for_under_every_fault(kling_env, tmp_path, monkeypatch, callback):
    monkeypatch.setenv("KLING_WEBHOOK_SECRET", WEBHOOK_SECRET)
    inputs = [Item(f"in{number:03d}.png", picture(number)) for number in range(IMAGES)]
    with local_server(concurrency=SLOTS, faults=RATES, webhook_secret=WEBHOOK_SECRET) as server:
        stage = OutpaintStage(
            endpoint=server.url,
            aspect="16:9",
            concurrency=SLOTS,
            on_error="passthrough",
            callback=callback,
            ledger=str(tmp_path / "ledger.sqlite"),
            timeout=60,
            # At these rates a call meets a fault about one time in eight, so five tries in a row
            # fail now and then among the batch's thousands of calls; twelve practically never.
            attempts=12,
        )
        out = list(stage(iter(inputs)))
        stats = server.stats()

    fired = stats["faults_fired"]
    request_faults = [name for name in RATES if not name.startswith("callback-")]
    assert all(fired[name] > 0 for name in request_faults), fired
    if callback:
        assert all(fired[name] > 0 for name in RATES), fired

    results = [item for item in out if "error" not in item.metadata["outpaint"]]
    failures = [item for item in out if "error" in item.metadata["outpaint"]]
    # Every input accounted for, exactly once: a result, or a recorded failure.
    accounted = [r.metadata["outpaint"]["source_key"] for r in results] + [f.key for f in failures]
    assert sorted(accounted) == [item.key for item in inputs]
    # The only failures are tasks the server failed, each with the server's reason.
    assert len(failures) == stats["tasks"]["failed"] > 0
    for failure in failures:
        assert any(reason in failure.metadata["outpaint"]["error"] for reason in FAILURE_MESSAGES)
    # One task per input, never a second for the same external id, none left running.
    assert sum(stats["tasks"].values()) == len(stats["creates_by_external_id"]) == IMAGES
    assert stats["tasks"]["succeed"] + stats["tasks"]["failed"] == IMAGES
    # No result lost: every succeeded task's image came out of the stage.
    out_ids = {r.metadata["outpaint"]["external_task_ids"][0] for r in results}
    assert len(results) == len(out_ids) == stats["tasks"]["succeed"]
    assert out_ids <= set(stats["creates_by_external_id"])
    # The account was never over its slots, on either side.
    assert stats["max_slots_in_use"] <= SLOTS and stage.summary["max_slots_in_use"] <= SLOTS
    assert stage.summary["created"] == IMAGES
    for result in results:
        image = Image.open(io.BytesIO(result.read_bytes()))
        assert image.format == "PNG"
        assert list(image.size) == result.metadata["outpaint"]["canvas"]
        assert abs(image.width / image.height - 16 / 9) < 0.01
    assert Path(tmp_path / "ledger.sqlite").is_file()
