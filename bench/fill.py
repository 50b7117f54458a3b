"""Benchmark of the local server's fill methods against a flat mean-colour control.

Each sample photo is scaled to 1024 x 1024 and expanded to 2356 x 1332 (16:9 at 3x area), as in
docs/local-fill.md. Prints seconds and quality scores per photo and method, the peak memory
of "mirror-fade" (RSS in a fresh process, Linux only; numpy's share by tracemalloc), and the
time ratios against the control.

Run: .venv/bin/python bench/fill.py [--repeat N]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from kling_expand_plugin.imaging.fill import METHODS, fill
from kling_expand_plugin.imaging.geometry import Box, Canvas
from kling_expand_plugin.localserver import fillquality

PHOTOS = Path(__file__).resolve().parents[1] / "sample_data" / "photos"
SIDE = 1024
CANVAS = Canvas(2356, 1332, Box(left=666, top=154, width=SIDE, height=SIDE))
CONTROL = "flat"


def flat_fill(original: Image.Image, canvas: Canvas) -> Image.Image:
    """The control: the canvas in the original's mean colour, the original pasted in."""
    mean = np.asarray(original).reshape(-1, 3).mean(axis=0)
    flat = Image.new("RGB", (canvas.width, canvas.height), tuple(int(v) for v in mean))
    flat.paste(original, canvas.box.as_tuple())
    return flat


def engines() -> dict[str, Callable[[Image.Image, Canvas], Image.Image]]:
    """The control and every fill method, each as (original, canvas) -> filled image."""
    found: dict[str, Callable[[Image.Image, Canvas], Image.Image]] = {CONTROL: flat_fill}
    for method in METHODS:
        found[method] = functools.partial(fill, seed=1, method=method)
    return found


def load_photos() -> dict[str, Image.Image]:
    """The sample photos, each scaled to SIDE x SIDE."""
    return {
        path.stem: Image.open(path).convert("RGB").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
        for path in sorted(PHOTOS.iterdir())
    }


def timed(
    engine: Callable[[Image.Image, Canvas], Image.Image], original: Image.Image, repeat: int
) -> tuple[float, Image.Image]:
    """The best of `repeat` wall-clock times of one fill, in seconds, and its result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = engine(original, CANVAS)
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_delta(photo: str) -> float:
    """MiB by which one mirror-fade fill raises the peak RSS of a fresh process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_peak_rss, (photo,))


def _measure_peak_rss(photo: str) -> float:
    original = load_photos()[photo]
    fill(original, CANVAS, seed=0, method="fast")  # warm up outside the measurement
    before = _peak_rss_kib()
    fill(original, CANVAS, seed=1)
    return (_peak_rss_kib() - before) / 1024


def _peak_rss_kib() -> int:
    # VmHWM, unlike getrusage's ru_maxrss, does not inherit the parent's peak across fork + exec
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status: the memory figure needs Linux")


def numpy_peak(original: Image.Image) -> float:
    """MiB of peak numpy allocation (tracemalloc) during one mirror-fade fill."""
    tracemalloc.start()
    try:
        fill(original, CANVAS, seed=1)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per fill; the best counts")
    args = parser.parse_args()
    photos = load_photos()
    print(f"canvas {CANVAS.width}x{CANVAS.height}, original {SIDE}x{SIDE} at {CANVAS.box}")
    print(f"{'method':12} {'photo':10} {'seconds':>8} {'seam':>6} {'streaks':>8} {'texture':>8}")
    seconds: dict[str, list[float]] = {}
    for name, engine in engines().items():
        for photo, original in photos.items():
            elapsed, result = timed(engine, original, args.repeat)
            assert fillquality.preserved(result, original, CANVAS.box), (name, photo)
            seconds.setdefault(name, []).append(elapsed)
            print(
                f"{name:12} {photo:10} {elapsed:8.3f}"
                f" {fillquality.seam_score(result, CANVAS.box):6.2f}"
                f" {fillquality.streaks(result, CANVAS.box):8.2f}"
                f" {fillquality.texture(result, CANVAS.box):8.2f}"
            )
    print()
    worst_rss = max(peak_rss_delta(photo) for photo in photos)
    worst_numpy = max(numpy_peak(original) for original in photos.values())
    print(f"mirror-fade peak RSS increase (fresh process), worst photo: {worst_rss:.0f} MiB")
    print(f"mirror-fade peak numpy allocation (tracemalloc), worst photo: {worst_numpy:.0f} MiB")
    control = statistics.mean(seconds[CONTROL])
    print(f"{CONTROL}: mean {control:.3f} s per image (the control)")
    for name in METHODS:
        mean = statistics.mean(seconds[name])
        print(
            f"{name}: mean {mean:.3f} s per image; {name}/{CONTROL} time ratio {mean / control:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
