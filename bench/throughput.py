"""Throughput: does the stage keep the account full?

N distinct 400 x 300 pictures go through the outpaint stage (16:9) against the local server
(in its own process) whose tasks take L seconds each and whose account has K slots. The best
any client can do is K tasks every L seconds: K/L images/s, or ceil(N/K) * L seconds for the
batch. Prints the stage's images/s against both, in callback and in polling mode, the share of
slot-seconds the server's tasks filled, and the baseline's images/s (one task at a time,
polling every second) on a smaller batch.

Headline (`ratio`, last line): polling mode, the default, in steady state (the results after
the first K, leaving out the ramp up to K tasks at once) over K/L.

Run: .venv/bin/python bench/throughput.py [--n 200] [--latency 1.0] [--slots 20]
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from baseline import run_baseline
from harness import (
    load_arguments,
    picture,
    server_process,
    server_stats,
    server_tasks,
    slot_occupancy,
    use_server_keys,
)

from imgpipe import Item
from kling_expand_plugin import OutpaintStage

SIZE = (400, 300)


def stage_run(url: str, n: int, slots: int, callback: str | None) -> list[float]:
    """Run N pictures through the stage; the seconds at which each result left it, from the
    start of the run."""
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        stage = OutpaintStage(
            endpoint=url,
            aspect="16:9",
            concurrency=slots,
            callback=callback,
            ledger=str(Path(folder) / "ledger.sqlite"),
        )
        items: Iterator[Item] = (Item(f"p{i:04d}.png", picture(i, SIZE)) for i in range(n))
        started = time.monotonic()
        left = [time.monotonic() - started for _ in stage(items)]
        if stage.summary["failed"] or len(left) != n:
            raise RuntimeError(f"the stage failed items: {stage.summary}")
        return left


def report_stage(mode: str, n: int, latency: float, slots: int, callback: str | None) -> float:
    """Run and print one mode's figures; returns its steady-state ratio to K/L."""
    with server_process(latency=latency, concurrency=slots) as url:
        left = stage_run(url, n, slots, callback)
        stats = server_stats(url)
        occupancy = slot_occupancy(server_tasks(url), slots)
    ideal_rate = slots / latency
    batch_ideal = math.ceil(n / slots) * latency
    rate = n / left[-1]
    # Steady state: leave out the first wave (the ramp up to K tasks running at once).
    steady_rate = (n - slots) / (left[-1] - left[slots - 1])
    print(f"-- stage, {mode}")
    print(f"server tasks {stats['tasks']}, requests {stats['requests']}")
    print(f"max slots in use {stats['max_slots_in_use']} of {slots}")
    print(f"{n} images in {left[-1]:.2f} s = {rate:.2f} images/s")
    print(f"steady state (after the first {slots} results): {steady_rate:.2f} images/s")
    print(f"{mode} slot occupancy (server timestamps) {occupancy:.3f}")
    print(f"{mode} batch ratio to ceil(N/K)*L = {batch_ideal:g} s: {batch_ideal / left[-1]:.3f}")
    print(f"{mode} batch ratio to K/L: {rate / ideal_rate:.3f}")
    print(f"{mode} steady-state ratio to K/L: {steady_rate / ideal_rate:.3f}")
    return steady_rate / ideal_rate


def main() -> int:
    args = load_arguments(__doc__.splitlines()[0], n=200, baseline_n=8)
    n, latency, slots = args.n, args.latency, args.slots
    use_server_keys()
    ideal_rate = slots / latency
    print(f"N={n} images, L={latency:g} s per task, K={slots} slots: ideal K/L = {ideal_rate:g}/s")

    with server_process(latency=latency, concurrency=slots) as url:
        pictures = [picture(100_000 + i, SIZE) for i in range(args.baseline_n)]
        started = time.time()
        baseline = run_baseline(url, pictures)
        baseline_rate = len(baseline) / (baseline[-1].done_at - started)
    print("-- baseline: one task at a time, create then poll every 1 s")
    print(f"{len(baseline)} images: {baseline_rate:.3f} images/s")
    print(f"baseline ratio to K/L: {baseline_rate / ideal_rate:.3f}")
    print(f"baseline ratio to 1/L (one slot): {baseline_rate * latency:.3f}")

    report_stage("callback", n, latency, slots, "127.0.0.1:0")
    ratio = report_stage("polling", n, latency, slots, None)
    print(f"ratio {ratio:.3f}  (polling, the default mode; steady state over K/L)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
