"""The outpaint stage at batch scale, over real HTTP against a local server that outlives it:
slots, 1303 storms, callbacks, order, the ledger and budgets. Kill -9 in the middle of a batch
is tests/reliability/test_crash_resume.py."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imgpipe import Item
from kling_expand_plugin.batch.ledger import SqliteLedger
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.batch.taskrunner import TaskRunner
from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling.client import ExpandRequest, KlingClient, RetryPolicy
from kling_expand_plugin.localserver import LocalServer
from kling_expand_plugin.outpaint.stage import OutpaintStage
from tests.helpers import picture
from tests.servers import fast_server

pytestmark = pytest.mark.slow  # batches of 12 to 48 images over real HTTP

RATIOS = Ratios(0.1, 0.1, 0.2, 0.2)


def items(count: int) -> list[Item]:
    return [Item(f"img{number:03d}.png", picture(number)) for number in range(count)]


def server(**options) -> LocalServer:
    return fast_server(**{"latency": 0.1, "concurrency": 4, "seed": 1, **options})


def stage(url: str, tmp_path: Path, **options) -> OutpaintStage:
    options = {
        "aspect": "16:9",
        "concurrency": 4,
        "ledger": str(tmp_path / "ledger.sqlite"),
        **options,
    }
    return OutpaintStage(endpoint=url, **options)


def test_a_batch_larger_than_the_account_keeps_it_full_and_never_over(kling_env, tmp_path):
    with server(concurrency=4) as local:
        outpaint = stage(local.url, tmp_path, n=2)
        results = list(outpaint(items(24)))
        stats = local.stats()
    assert len(results) == 48
    assert stats["max_slots_in_use"] == 4  # full, never over (n=2: two tasks at once)
    assert set(stats["create_attempts_by_external_id"].values()) == {1}
    assert outpaint.summary["created"] == 24 and outpaint.summary["max_slots_in_use"] == 4


def test_a_1303_storm_is_waited_out(kling_env, tmp_path):
    # The account allows 2 tasks; the runner believes it has 6, as when others share the account.
    requests = [
        ExpandRequest(image=base64.b64encode(picture(number, (400, 300))).decode(), ratios=RATIOS)
        for number in range(12)
    ]
    retry = RetryPolicy(retry_concurrency=False)  # 1303 handed to the runner, as the stage does
    with server(concurrency=2) as local, KlingClient(local.url, retry=retry) as client:
        ledger = SqliteLedger(tmp_path / "ledger.sqlite")
        runner = TaskRunner(
            client, ledger, "local", slots=Slots(6), timeout=60, concurrency_backoff=(0.05, 0.2)
        )
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(runner.run, [f"img{i}" for i in range(12)], requests))
        ledger.close()
        stats = local.stats()
    assert all(len(outcome.images) == 1 for outcome in outcomes)
    assert stats["max_slots_in_use"] == 2 and runner.tally.created == 12
    assert sum(stats["create_attempts_by_external_id"].values()) > 12  # 1303s were answered
    assert stats["tasks"]["succeed"] == 12


def test_input_order_is_kept_whatever_order_tasks_finish_in(kling_env, tmp_path):
    latencies = iter([0.6, 0.05] * 20)
    with server(concurrency=8, latency=lambda rng: next(latencies)) as local:
        results = list(stage(local.url, tmp_path, concurrency=8)(items(10)))
    assert [r.metadata["outpaint"]["source_key"] for r in results] == [i.key for i in items(10)]


def test_completed_order_hands_on_every_result(kling_env, tmp_path):
    with server(concurrency=8) as local:
        results = list(stage(local.url, tmp_path, concurrency=8, order="completed")(items(6)))
    keys = sorted(r.metadata["outpaint"]["source_key"] for r in results)
    assert keys == [i.key for i in items(6)]


@pytest.mark.parametrize(
    "faults",
    [
        {},
        {"callback-repeat": 0.5, "callback-reorder": 0.5},
        {"callback-drop": 1.0},  # every delivery lost: polling is the fallback
    ],
)
def test_callbacks_finish_the_batch_with_repeats_reorders_and_drops(kling_env, tmp_path, faults):
    with server(concurrency=4, faults=faults) as local:
        outpaint = stage(local.url, tmp_path, callback="127.0.0.1:0", timeout=60)
        results = list(outpaint(items(8)))
        stats = local.stats()
    assert len(results) == 8
    assert set(stats["create_attempts_by_external_id"].values()) == {1}


def test_a_second_run_reads_the_ledger_and_pays_for_nothing(kling_env, tmp_path):
    with server() as local:
        first = list(stage(local.url, tmp_path)(items(6)))
        again = stage(local.url, tmp_path)
        second = list(again(items(6)))
        stats = local.stats()
    assert sum(stats["create_attempts_by_external_id"].values()) == 6
    assert again.summary["created"] == 0 and again.summary["from_ledger"] == 6
    assert [r.read_bytes() for r in first] == [r.read_bytes() for r in second]


def test_a_budget_stops_new_tasks_and_says_so(kling_env, tmp_path, caplog):
    with server(concurrency=1) as local:
        outpaint = stage(local.url, tmp_path, concurrency=1, budget=3)
        results = list(outpaint(items(6)))
        stats = local.stats()
    assert len(results) == 3 and len(stats["create_attempts_by_external_id"]) == 3
    assert outpaint.summary["skipped"] == 3 and outpaint.summary["units"] == 3
    assert "budget of 3" in caplog.text


def test_a_failed_task_is_reported_with_its_reason_and_not_paid_for_twice(kling_env, tmp_path):
    with server(faults={"task-failed": 1.0}) as local:
        first = stage(local.url, tmp_path)
        assert list(first(items(2))) == []
        second = stage(local.url, tmp_path, on_error="passthrough")
        passed = list(second(items(2)))
        stats = local.stats()
    assert first.summary["failed"] == 2 and len(stats["create_attempts_by_external_id"]) == 2
    assert all("failed before" in p.metadata["outpaint"]["error"] for p in passed)
