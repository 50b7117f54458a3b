"""Camera photos at real sizes: peak memory flat in the batch's size, CPU near Pillow's floor.

Makes its own photo-like 24 MP JPEGs (6000 x 4000, a few MB each) and expands them to 16:9 at
area 2 (48 MP results) with K = 8 slots, against `kling-expand serve` in its own process, so
that every figure is the client's alone:

- memory: the peak RSS of `kling-expand expand` and of `imgpipe run` (load, outpaint, save) for
  N and for 2N photos; bounded by design means the ratio 2N / N stays near 1 (goal <= 1.1) and
  the peak under 2 GiB; and of `kling-expand expand` for 2N photos whose tasks are already done
  (every result comes at once, each create answered "external id taken");
- CPU: for each output format, the client's CPU time per photo, for N and for 2N photos (the
  process's start-up and the report are shared by more photos in the second; the least of
  `--tries` runs), against Pillow's own floor for that photo (decode the input, decode the
  API's result, encode the output in that format; the least of three tries in this process):
  other work on the machine only ever adds to either; goal <= 1.3x.

Every run has a server of its own, with no task done yet: the client's figures include polling.

Run: .venv/bin/python bench/photos.py [--n 8] [--formats png,jpeg,webp] [--tries 2]
[--skip-imgpipe]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from harness import server_process, use_server_keys
from PIL import Image

from imgpipe.encoding import encode

SIZE = (6000, 4000)
SLOTS = 8
PEAK_WRAPPER = """
import re, runpy, sys
peak_file, module = sys.argv[1:3]
sys.argv = [module, *sys.argv[3:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(re.search(r"VmHWM:\\s*(\\d+) kB", status.read()).group(1))
"""
"""Runs a module as `python -m` would, then writes the process's peak RSS (VmHWM, in kB) to a
file: ru_maxrss from wait4 is no use here, since it keeps the forking parent's resident size
(this process holds a few photos' pixels) across the child's exec."""
EXPAND = ["kling_expand_plugin.cli", "expand"]
IMGPIPE = ["imgpipe.cli"]


def photo(number: int) -> Image.Image:
    """A photo-like picture: smooth light, a few shapes, sensor noise (compresses like one)."""
    rng = np.random.default_rng(number)
    width, height = SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            120 + 80 * np.sin(x / (700 + 50 * number) + c) * np.cos(y / (900 + 30 * c))
            for c in range(3)
        ],
        axis=-1,
    )
    for _ in range(12):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(100, 900)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        base[mask] = base[mask] * 0.5 + rng.integers(0, 255, 3) * 0.5
    base += rng.normal(0, 6, base.shape).astype(np.float32)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def make_photos(folder: Path, count: int) -> list[Path]:
    """`count` distinct 24 MP JPEGs in `folder` (the first made once and varied cheaply)."""
    folder.mkdir(parents=True, exist_ok=True)
    first = photo(0)
    paths = []
    for number in range(count):
        path = folder / f"photo{number:02d}.jpg"
        if not path.exists():
            image = first.rotate(180) if number % 2 else first
            shade = Image.new("RGB", (400, 400), ((number * 53) % 256, 90, 160))
            image = image.copy()
            image.paste(shade, (200 + 97 * number, 300))
            image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run a module with its arguments (`command`) in a new Python process; (its peak RSS in
    MiB, its CPU seconds user + system, wall seconds)."""
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", PEAK_WRAPPER, peak.name, *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode not in (0,):
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"{command[:2]} exited {process.returncode}: {stderr[-2000:]}")
        peak_kib = int(peak.read())
    return peak_kib / 1024, usage.ru_utime + usage.ru_stime, wall


def on_fresh_server(
    command_for: Callable[[str], list[str]], env: dict[str, str]
) -> tuple[float, float, float]:
    """`run_measured` of the command for a new local server's URL: every run starts with no
    task done (a batch of 2N after N on one server would find N tasks finished, and download
    their results at once while stitching, which no fresh batch does)."""
    with server_process(latency=1.0, concurrency=SLOTS) as url:
        return run_measured(command_for(url), env)


def with_tasks_done(
    command_for: Callable[[str, Path], list[str]], env: dict[str, str], out: Path
) -> tuple[float, float, float]:
    """`run_measured` of a batch whose tasks are all done: the command run once on a server,
    then measured a second time, with a new ledger and output folder. Every create is answered
    1201 (its external id is taken) and looked up, and every result comes at once."""
    with server_process(latency=1.0, concurrency=SLOTS) as url:
        run_measured(command_for(url, out.with_name(out.name + "-first")), env)
        return run_measured(command_for(url, out), env)


def expand_command(url: str, inputs: Path, out: Path, fmt: str | None) -> list[str]:
    command = [*EXPAND, str(inputs), "--aspect", "16:9", "--area", "2"]
    command += ["--concurrency", str(SLOTS), "--endpoint", url, "--out", str(out), "--quiet"]
    command += ["--ledger", str(out.parent / f"{out.name}.ledger.sqlite")]
    return command + (["--format", fmt] if fmt else [])


def imgpipe_command(url: str, inputs: Path, out: Path) -> list[str]:
    config = out.parent / f"{out.name}.toml"
    config.write_text(
        f'[[stages]]\nstage = "load"\npaths = ["{inputs}"]\n\n'
        f'[[stages]]\nstage = "outpaint"\nendpoint = "{url}"\naspect = "16:9"\narea = 2\n'
        f'concurrency = {SLOTS}\nledger = "{out.parent / (out.name + ".ledger.sqlite")}"\n\n'
        f'[[stages]]\nstage = "save"\nfolder = "{out}"\n'
    )
    return [*IMGPIPE, "run", str(config)]


def pillow_floor(photo_path: Path, result: Image.Image, fmt: str, tries: int = 3) -> float:
    """CPU seconds Pillow needs for one photo: decode the input, decode the result, encode the
    output (the result's size) in `fmt`, with the settings the stage uses by default (JPEG and
    WebP quality 92, PNG level 1, WebP method 2); the least of `tries`, since other work on the
    machine only ever adds to it."""
    buffer = io.BytesIO()
    result.save(buffer, "PNG", compress_level=1)  # what the local server sends
    encoded_result = buffer.getvalue()
    times = []
    for _ in range(tries):
        started = time.process_time()
        with Image.open(photo_path) as image:
            image.load()
        with Image.open(io.BytesIO(encoded_result)) as image:
            image.load()
            decoded = image
        encode(decoded, fmt.upper())  # the same encoder settings as the stage's defaults
        times.append(time.process_time() - started)
        del decoded
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="photos in the smaller batch")
    parser.add_argument("--formats", default="png,jpeg,webp", help="output formats to time")
    parser.add_argument("--tries", type=int, default=2, help="runs of each CPU figure")
    parser.add_argument("--skip-imgpipe", action="store_true")
    args = parser.parse_args()
    use_server_keys()
    env = dict(os.environ)
    formats = [f for f in args.formats.split(",") if f]
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as tmp:
        root = Path(tmp)
        photos = make_photos(root / "all", 2 * args.n)
        batches = {}
        for count in (args.n, 2 * args.n):
            folder = root / f"in{count}"
            folder.mkdir()
            for path in photos[:count]:
                (folder / path.name).symlink_to(path)
            batches[count] = folder
        rows = []
        for count, folder in batches.items():
            out = root / f"out-expand-{count}"
            rss, cpu, wall = on_fresh_server(
                partial(expand_command, inputs=folder, out=out, fmt=None), env
            )
            rows.append(("kling-expand expand", count, rss, cpu, wall))
            print(f"expand  {count:3d} photos: peak {rss:7.0f} MiB  CPU {cpu:6.1f} s  "
                  f"({cpu / count:.2f} s a photo)  wall {wall:.0f} s", flush=True)  # fmt: skip
        count, folder = 2 * args.n, batches[2 * args.n]
        rss, cpu, wall = with_tasks_done(
            lambda url, out: expand_command(url, folder, out, None), env, root / "out-done"
        )
        print(f"expand  {count:3d} photos whose tasks are done: peak {rss:7.0f} MiB  "
              f"CPU {cpu:6.1f} s  wall {wall:.0f} s", flush=True)  # fmt: skip
        done_peak = rss
        if not args.skip_imgpipe:
            for count, folder in batches.items():
                out = root / f"out-imgpipe-{count}"
                rss, cpu, wall = on_fresh_server(
                    partial(imgpipe_command, inputs=folder, out=out), env
                )
                rows.append(("imgpipe run", count, rss, cpu, wall))
                print(f"imgpipe {count:3d} photos: peak {rss:7.0f} MiB  CPU {cpu:6.1f} s  "
                      f"wall {wall:.0f} s", flush=True)  # fmt: skip
        cpu_rows = []
        for fmt in formats:
            per_photo = []
            for count, folder in batches.items():
                runs = []
                for attempt in range(args.tries):
                    out = root / f"out-{fmt}-{count}-{attempt}"
                    _, cpu, _ = on_fresh_server(
                        partial(expand_command, inputs=folder, out=out, fmt=fmt), env
                    )
                    runs.append(cpu / count)
                print(f"{fmt:7s} {count:3d} photos: CPU a photo, each try: "
                      f"{', '.join(f'{run:.2f}' for run in runs)} s", flush=True)  # fmt: skip
                per_photo.append(min(runs))
            result = next(p for p in sorted(out.iterdir()) if p.suffix != ".html")
            with Image.open(result) as image:
                image.load()
                floor = pillow_floor(photos[0], image.convert("RGB"), fmt)
            cpu_rows.append((fmt, per_photo, floor))
        print()
        print(f"memory ({SIZE[0]} x {SIZE[1]} JPEGs, 16:9 at area 2, K = {SLOTS}):")
        for name in ("kling-expand expand", "imgpipe run"):
            mine = [row for row in rows if row[0] == name]
            if len(mine) == 2:
                (_, n1, rss1, _, _), (_, n2, rss2, _, _) = mine
                print(f"  {name}: peak {rss1:.0f} MiB for {n1}, {rss2:.0f} MiB for {n2}: "
                      f"ratio {rss2 / rss1:.2f} (goal <= 1.1), max {max(rss1, rss2) / 1024:.2f} "
                      "GiB (goal <= 2)")  # fmt: skip
        first_expand = next(row for row in rows if row[0] == "kling-expand expand")
        print(f"  kling-expand expand, {2 * args.n} photos whose tasks are done: peak "
              f"{done_peak:.0f} MiB, {done_peak / first_expand[2]:.2f} x the peak for "
              f"{first_expand[1]}")  # fmt: skip
        print("CPU per photo against Pillow's floor (decode input + decode result + encode):")
        for fmt, per_photo, floor in cpu_rows:
            figures = ", ".join(
                f"{cpu:.2f} s a photo for {count} (ratio {cpu / floor:.2f})"
                for count, cpu in zip(batches, per_photo, strict=True)
            )
            print(f"  {fmt:5s}: floor {floor:.2f} s; {figures} (goal <= 1.3)")


if __name__ == "__main__":
    main()
