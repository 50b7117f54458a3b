"""CPU overhead: the stage's own CPU time per image against the floor of Pillow alone.

The sample photos, each in several copies made distinct by one pixel (so each is its own
task), go through the stage (16:9, twice the area) against the local server in its own
process, so this process's CPU time (user + system, getrusage) is the stage's own: fitting,
encoding, the HTTP calls, decoding the results, stitching and the output PNGs. The floor is
what any tool must spend on the same files: decode each once and encode it once as PNG, the
stage's output format, with Pillow. Prints both per image and their ratio.

Run: .venv/bin/python bench/cpu.py [--copies 5]
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
from pathlib import Path

from harness import PHOTOS, picture, server_process, use_server_keys
from PIL import Image

from imgpipe import Item
from kling_expand_plugin import OutpaintStage


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def inputs(copies: int) -> list[Item]:
    """Each sample photo `copies` times, in its own format, one pixel changed per copy."""
    items = []
    for path in sorted(PHOTOS.iterdir()):
        image = Image.open(path).convert("RGB")
        for copy in range(copies):
            image.putpixel((0, 0), (copy, copy, copy))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG" if path.suffix == ".jpg" else "PNG", quality=95)
            items.append(Item(f"{path.stem}-{copy}{path.suffix}", buffer.getvalue()))
    return items


def pillow_floor(items: list[Item]) -> float:
    """CPU seconds to decode each item once and encode it once as PNG."""
    started = cpu_seconds()
    for item in items:
        image = Image.open(io.BytesIO(item.read_bytes()))
        image.load()
        image.save(io.BytesIO(), "PNG")
    return cpu_seconds() - started


def stage_cpu(url: str, items: list[Item]) -> float:
    """CPU seconds of this process to run every item through the stage."""
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        stage = OutpaintStage(
            endpoint=url,
            aspect="16:9",
            area=2.0,
            concurrency=8,
            ledger=str(Path(folder) / "ledger.sqlite"),
        )
        started = cpu_seconds()
        results = sum(1 for _ in stage(items))
        spent = cpu_seconds() - started
    if results != len(items):
        raise RuntimeError(f"{results} results for {len(items)} inputs: {stage.summary}")
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5, help="copies of each sample photo")
    args = parser.parse_args()
    use_server_keys()
    items = inputs(args.copies)
    pillow_floor(items[:2])  # warm up the codecs outside the measurement
    with server_process(latency=0.2, concurrency=8) as url:
        # Warm up imports and connections likewise, on a picture of its own (its own task).
        stage_cpu(url, [Item("warm-up.png", picture(0, (400, 300)))])
        stage = stage_cpu(url, items) / len(items)
    floor = pillow_floor(items) / len(items)
    print(f"{len(items)} images ({', '.join(p.name for p in sorted(PHOTOS.iterdir()))})")
    print(f"stage CPU per image {stage * 1000:.1f} ms (user + system, server excluded)")
    print(f"Pillow floor per image {floor * 1000:.1f} ms (decode once + encode once as PNG)")
    print(f"ratio {stage / floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
