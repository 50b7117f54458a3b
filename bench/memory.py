"""Memory: the stage's peak RSS for N images and for 10N, streamed; flat means a ratio near 1.

Each run is a fresh process that streams generated 640 x 480 pictures from a generator through
the stage (16:9) and discards the results, against one local server in its own process. The
process reports its peak RSS (VmHWM), its RSS before the run (after the imports), and its RSS
after the run once the garbage is collected and glibc has handed free heap back to the system
(malloc_trim): what is still live. A leak shows in the last; heap fragmentation over many
threads shows in the peak only.

Run: .venv/bin/python bench/memory.py [--n 20]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness import peak_rss_mib, picture, server_process, use_server_keys

from imgpipe import Item
from kling_expand_plugin import OutpaintStage

SIZE = (640, 480)
SLOTS = 20


def rss_mib() -> float:
    """This process's resident memory now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status: the memory figure needs Linux")


def child(url: str, count: int) -> None:
    """Stream `count` pictures through the stage; print the memory figures as JSON."""
    use_server_keys()
    before = rss_mib()
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        stage = OutpaintStage(
            endpoint=url,
            aspect="16:9",
            concurrency=SLOTS,
            ledger=str(Path(folder) / "ledger.sqlite"),
        )
        items: Iterator[Item] = (
            Item(f"m{i:05d}.png", picture(count * 100_000 + i, SIZE)) for i in range(count)
        )
        results = sum(1 for _ in stage(items))
    peak = peak_rss_mib()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(json.dumps({"results": results, "before": before, "peak": peak, "live": rss_mib()}))


def measure(url: str, count: int) -> dict[str, float]:
    """Run a child process for `count` images; its figures."""
    command = [sys.executable, __file__, "--child", url, "--n", str(count)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    if figures["results"] != count:
        raise RuntimeError(f"{figures['results']} results for {count} images")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="N; the second run streams 10N")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return 0
    use_server_keys()
    with server_process(latency=0.1, concurrency=SLOTS) as url:
        small = measure(url, args.n)
        large = measure(url, 10 * args.n)
    for count, figures in ((args.n, small), (10 * args.n, large)):
        growth = figures["peak"] - figures["before"]
        print(
            f"{count} images: peak RSS {figures['peak']:.1f} MiB "
            f"({figures['before']:.1f} MiB after imports, growth {growth:.1f} MiB); "
            f"live after the run {figures['live']:.1f} MiB"
        )
    small_growth = small["peak"] - small["before"]
    large_growth = large["peak"] - large["before"]
    print(f"growth ratio 10N/N {large_growth / small_growth:.2f}")
    print(f"live-after-run ratio 10N/N {large['live'] / small['live']:.2f}")
    print(f"ratio {large['peak'] / small['peak']:.2f}  (peak RSS, 10N over N)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
