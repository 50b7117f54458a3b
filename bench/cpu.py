"""CPU overhead: the stage's own CPU time per image against the floor of Pillow alone.

The sample photos, each in several copies made distinct by one pixel (so each is its own
task), go through the stage (16:9, twice the area) against the local server in its own
process, so this process's CPU time (user + system, getrusage) is the stage's own: fitting,
encoding, the HTTP calls, decoding the results, stitching and encoding the outputs. The floor
is what any tool must spend on the same files, with Pillow: decode the input, decode the API's
result (a PNG at level 1, as the local server sends it) and encode the output in its format
with the stage's default settings. Prints both per image and their ratio.

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
from imgpipe.encoding import encode
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


def pillow_floor(items: list[Item], outputs: list[Item]) -> float:
    """CPU seconds to decode each input and its result, and encode its output in its format."""
    work = []
    for item, output in zip(items, outputs, strict=True):
        with Image.open(io.BytesIO(output.read_bytes())) as image:
            result = io.BytesIO()
            image.save(result, "PNG", compress_level=1)
            work.append((item.read_bytes(), result.getvalue(), image.format or "PNG"))
    started = cpu_seconds()
    for source, result, fmt in work:
        with Image.open(io.BytesIO(source)) as image:
            image.load()
        with Image.open(io.BytesIO(result)) as image:
            encode(image, fmt)  # decodes the result; the stage's default encoder settings
    return cpu_seconds() - started


def stage_cpu(url: str, items: list[Item]) -> tuple[float, list[Item]]:
    """CPU seconds of this process to run every item through the stage, and its outputs."""
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        stage = OutpaintStage(
            endpoint=url,
            aspect="16:9",
            area=2.0,
            concurrency=8,
            ledger=str(Path(folder) / "ledger.sqlite"),
        )
        started = cpu_seconds()
        outputs = list(stage(items))
        spent = cpu_seconds() - started
    if len(outputs) != len(items):
        raise RuntimeError(f"{len(outputs)} results for {len(items)} inputs: {stage.summary}")
    return spent, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5, help="copies of each sample photo")
    args = parser.parse_args()
    use_server_keys()
    items = inputs(args.copies)
    with server_process(latency=0.2, concurrency=8) as url:
        # Warm up imports and connections outside the measurement, on a picture of its own.
        stage_cpu(url, [Item("warm-up.png", picture(0, (400, 300)))])
        spent, outputs = stage_cpu(url, items)
    by_key = {output.metadata["outpaint"]["source_key"]: output for output in outputs}
    outputs = [by_key[item.key] for item in items]
    pillow_floor(items[:2], outputs[:2])  # warm up the codecs outside the measurement
    stage, floor = spent / len(items), pillow_floor(items, outputs) / len(items)
    print(f"{len(items)} images ({', '.join(p.name for p in sorted(PHOTOS.iterdir()))})")
    print(f"stage CPU per image {stage * 1000:.1f} ms (user + system, server excluded)")
    print(
        f"Pillow floor per image {floor * 1000:.1f} ms"
        " (decode input + decode result + encode output)"
    )
    print(f"ratio {stage / floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
