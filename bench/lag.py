"""Detection lag and requests: how soon the stage notices a finished task, and at what cost.

N pictures go through the stage (order "completed") against the local server (K slots, in its
own process) whose tasks take between L/2 and 3L/2 seconds, drawn at random (a fixed duration
would let a client polling every L seconds fall in step with it), once polling and once with
callbacks. For each task:

- notice lag: from the server finishing it (its `updated_at`) to the stage's task runner
  having it as finished (measured by wrapping `TaskRunner._wait`, which the stage has no hook
  for);
- leave lag: from the server finishing it to its result item leaving the stage, which adds
  the download, the stitch and the PNG encoding.

Also GETs (queries) per task, from the server's counters. The baseline (one task at a time,
polling every second) is measured the same way, with four such clients side by side so that
its median rests on enough tasks. Prints medians, 95th percentiles, and the median notice lag
as a share of L and against the baseline's.

Run: .venv/bin/python bench/lag.py [--n 100] [--latency 1.0] [--slots 20]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from baseline import Finished, run_baseline
from harness import load_arguments, picture, server_process, server_stats, use_server_keys

from imgpipe import Item
from kling_expand_plugin import OutpaintStage
from kling_expand_plugin.batch.taskrunner import TaskRunner
from kling_expand_plugin.kling.models import Task

SIZE = (400, 300)

noticed: dict[str, tuple[float, float]] = {}
"""task_id -> (the server's finish time, when the runner had it), Unix seconds."""

_original_wait = TaskRunner._wait


def _timed_wait(self: TaskRunner, task: Task, work_id: str) -> Task:
    finished = _original_wait(self, task, work_id)
    assert finished.updated_at is not None
    noticed[finished.task_id] = (finished.updated_at / 1000, time.time())
    return finished


TaskRunner._wait = _timed_wait  # type: ignore[method-assign]


BASELINE_CLIENTS = 4


def baseline_tasks(url: str, count: int) -> list[Finished]:
    """`count` baseline tasks, from BASELINE_CLIENTS clients each working one task at a time."""
    pictures = [picture(100_000 + i, SIZE) for i in range(count)]
    shares = [pictures[start::BASELINE_CLIENTS] for start in range(BASELINE_CLIENTS)]
    with ThreadPoolExecutor(BASELINE_CLIENTS) as pool:
        return [
            task for tasks in pool.map(run_baseline, [url] * len(shares), shares) for task in tasks
        ]


def spread(latency: float) -> str:
    """Task durations drawn uniformly from L/2 to 3L/2."""
    return f"{latency / 2:g}-{latency * 1.5:g}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_mode(mode: str, n: int, latency: float, slots: int, callback: str | None) -> float:
    """One stage run; prints its figures and returns the median notice lag in seconds."""
    noticed.clear()
    left: dict[str, float] = {}
    with (
        server_process(latency=spread(latency), concurrency=slots) as url,
        tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder,
    ):
        stage = OutpaintStage(
            endpoint=url,
            aspect="16:9",
            concurrency=slots,
            order="completed",
            callback=callback,
            ledger=str(Path(folder) / "ledger.sqlite"),
        )
        items: Iterator[Item] = (Item(f"p{i:04d}.png", picture(i, SIZE)) for i in range(n))
        for result in stage(items):
            left[result.metadata["outpaint"]["task_ids"][0]] = time.time()
        stats = server_stats(url)
    tasks = stats["tasks"]["succeed"]
    notice = [seen - finished for finished, seen in noticed.values()]
    leave = [left[task_id] - finished for task_id, (finished, _) in noticed.items()]
    gets = stats["requests"]["query"] / tasks
    ms = 1000
    print(f"-- {mode}: {tasks} tasks")
    print(
        f"{mode} notice lag ms: median {statistics.median(notice) * ms:.0f}, "
        f"p95 {percentile(notice, 0.95) * ms:.0f}, max {max(notice) * ms:.0f}"
    )
    print(
        f"{mode} leave lag ms: median {statistics.median(leave) * ms:.0f}, "
        f"p95 {percentile(leave, 0.95) * ms:.0f}, max {max(leave) * ms:.0f}"
    )
    print(f"{mode} GETs per task {gets:.2f}; callbacks {stats['callbacks']}")
    return statistics.median(notice)


def main() -> int:
    args = load_arguments(__doc__.splitlines()[0], n=100, baseline_n=24)
    use_server_keys()
    print(f"N={args.n}, L={args.latency:g} s, K={args.slots}")

    with server_process(latency=spread(args.latency), concurrency=args.slots) as url:
        baseline = baseline_tasks(url, args.baseline_n)
    baseline_lag = statistics.median(b.done_at - b.finished_at for b in baseline)
    baseline_gets = statistics.mean(b.polls for b in baseline)
    print(f"-- baseline (poll every 1 s): {len(baseline)} tasks")
    baseline_p95 = percentile([b.done_at - b.finished_at for b in baseline], 0.95)
    print(
        f"baseline leave lag ms: median {baseline_lag * 1000:.0f}, p95 {baseline_p95 * 1000:.0f} "
        "(includes the download)"
    )
    print(f"baseline GETs per task {baseline_gets:.2f}")

    polling = run_mode("polling", args.n, args.latency, args.slots, None)
    callback = run_mode("callback", args.n, args.latency, args.slots, "127.0.0.1:0")
    print(f"polling median notice lag / L {polling / args.latency:.3f}")
    print(f"callback median notice lag / L {callback / args.latency:.3f}")
    print(f"polling median notice lag / baseline median leave lag {polling / baseline_lag:.3f}")
    print(f"callback median notice lag / baseline median leave lag {callback / baseline_lag:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
