"""`kling-expand expand`: run the stage over the inputs, write the results and the report."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from imgpipe import Item
from imgpipe.files import ExistsError, clean_leftovers, write_atomically
from kling_expand_plugin.batch.progress import Progress
from kling_expand_plugin.cli.common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    LOG_FORMAT,
    UsageError,
    check_reachable,
    command,
    count,
    in_flags,
    input_items,
    logging_through,
    print_json,
)
from kling_expand_plugin.cli.stage_flags import add_stage_flags, stage_options
from kling_expand_plugin.imaging.output import NAME_METADATA, megabytes, result_key
from kling_expand_plugin.imaging.prepare import prepare
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.outpaint.api import by_source, failure_of
from kling_expand_plugin.outpaint.report import ContactSheet, plural, totals
from kling_expand_plugin.outpaint.stage import OutpaintStage


def add_expand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    expand = command(
        commands,
        common,
        "expand",
        expand_command,
        usage="%(prog)s INPUT... --out DIR (--aspect R [--area A] | --size WxH | --ratios U,D,L,R) "
        "[options]",
        help="expand images, write the results and a report (report.html, report.png)",
        description=(
            "Expand every image named (files, folders, globs, http(s) URLs) and write each "
            "result to --out as <name>-<variant>.png, then report.html and report.png: each "
            "original beside its results, the original's place outlined, the ratios, the units "
            "and any failures. A progress line is shown on a terminal. Inputs that fail are "
            "listed and the rest go on (unless --fail-fast)."
        ),
        epilog=(
            "examples:\n"
            "  kling-expand expand photos/ --aspect 16:9 --area 2 --n 2 --out banners/\n"
            "  kling-expand expand a.jpg b.png --size 1920x1080 --anchor left --max-passes 3 \n"
            "    --out out/\n"
            "  kling-expand expand https://example.com/a.png --ratios 0,0,0.5,0.5 --out out/\n"
            "  kling-expand expand photos/ --aspect 16:9 --endpoint "
            "https://api-singapore.klingai.com --budget 40 --out out/\n\n" + EXIT_CODES
        ),
    )
    expand.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, globs, URLs")
    expand.add_argument("--out", "-o", required=True, metavar="DIR", help="where to write")
    running = add_stage_flags(expand, ("target", "format", "running"))["running"]
    running.add_argument("--fail-fast", action="store_true", help="stop at the first failed input")
    running.add_argument("--json", action="store_true", help="print one JSON document at the end")
    output = expand.add_argument_group(
        "output",
        "Each result is DIR/<name>-<variant>.<ext>, <name> the input's name without its "
        "extension, or with it when an earlier input took that name (photo.jpg, then "
        "photo.png: photo-0.jpg, photo.png-0.png). An existing file is never replaced unless "
        "--overwrite; --skip-existing leaves out the inputs whose results are all there.",
    )
    exists = output.add_mutually_exclusive_group()
    exists.add_argument("--overwrite", action="store_true", help="replace existing results")
    exists.add_argument(
        "--skip-existing",
        action="store_true",
        help="send no input whose results are all in DIR already (resume a folder)",
    )


def expand_command(args: argparse.Namespace) -> int:
    """Run the stage over the inputs, write the results and the report."""
    on_error = "raise" if args.fail_fast else "passthrough"
    stage = OutpaintStage(**stage_options(args, ("target", "format", "running")), on_error=on_error)
    out = Path(args.out)
    items = input_items(args.inputs, exclude=out)
    if stage.endpoint != "local":
        check_reachable(stage.endpoint)
    existing = _check_destination(out, items, stage, args)
    if not args.skip_existing:
        existing = {}  # --overwrite: sent and written again
    total = len(items)
    title = f"kling-expand: {count(total, 'input')}"
    sheet = ContactSheet(out, title=title, settings=_settings(args))
    for item in items:
        if item.key in existing:
            sheet.add_existing(item.key, existing[item.key], item)
    items = [item for item in items if item.key not in existing]
    sources = {item.key: item for item in items}
    n = stage.n
    records = [_existing_record(key, paths) for key, paths in existing.items()]
    unwritten = 0
    error: BaseException | None = None
    progress = Progress(lambda: stage.summary, total=len(items), n=n)
    if args.skip_existing and existing and not args.json and not args.quiet:
        print(f"{count(len(existing), 'input')} left out: their results are in {out} already")
    logs = progress.handler(LOG_FORMAT)
    if args.verbose == 0:
        logs.addFilter(_not_an_input_error)  # each failed input is printed once, as FAILED
    with progress, logging_through(logs), _stopping_on_ctrl_c(stage):
        try:
            for key, outputs in by_source(stage(items)):
                written = _write_results(out, outputs, overwrite=args.overwrite)
                sheet.add(key, written, sources.get(key))
                record = _record(key, written)
                unwritten += record["status"] == "failed" and failure_of(outputs[0]) is None
                records.append(record)
                if not args.json and not args.quiet:
                    progress.echo(_record_line(record), sys.stdout)
        except Exception as exc:  # only --fail-fast lets an input's error through
            if not args.fail_fast:
                raise
            error = exc
        finally:  # interrupted or not, the report shows what is on disk
            summary = stage.summary
            summary["done"] -= unwritten  # done by the stage, but not written: failed here
            summary["failed"] += unwritten
            summary["existing"] = len(existing)
            html_path, png_path = sheet.write(summary)
    report = {"html": str(html_path), "png": str(png_path)}
    if error is not None:
        print(f"kling-expand: stopped: {error}", file=sys.stderr)
    if args.json:
        print_json({"inputs": records, "summary": summary, "report": report})
    else:
        print(f"{count(total, 'input')}: {totals(summary)}")
        print(f"report: {html_path} (picture: {png_path})")
    if stage.cancelled:
        return EXIT_INTERRUPTED
    failed = error is not None or summary["failed"] or summary["skipped"]
    return EXIT_FAILED if failed else EXIT_OK


def _not_an_input_error(record: logging.LogRecord) -> bool:
    """False for the stage's errors about inputs, which the command prints itself."""
    return not (
        record.name == "kling_expand_plugin.outpaint.stage" and record.levelno == logging.ERROR
    )


@contextmanager
def _stopping_on_ctrl_c(stage: OutpaintStage) -> Iterator[None]:
    """The first Ctrl-C (or SIGTERM) stops new tasks and ends the run within moments, tasks
    already created kept in the ledger for the next run; the second exits at once."""

    def stop(signum: int, frame: FrameType | None) -> None:
        if stage.cancelled:
            os._exit(EXIT_INTERRUPTED)
        print(
            "\nkling-expand: stopping: no new tasks; tasks already created are kept for the "
            "next run (Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        stage.cancel()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _settings(args: argparse.Namespace) -> dict[str, str]:
    """The flags that shape the results, for the report's header."""
    shown = ["endpoint", "aspect", "area", "size", "ratios", "anchor", "n", "prompt"]
    return {name: str(getattr(args, name)) for name in shown if getattr(args, name) is not None}


def _check_destination(
    out: Path, items: list[Item], stage: OutpaintStage, args: argparse.Namespace
) -> dict[str, list[Path]]:
    """Before anything is sent: --out can be written and has room for the results (an
    estimate), and no result would replace a file unless --overwrite. Returns the inputs
    whose results are all there already (key to paths), which --skip-existing leaves out."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be written: {exc.strerror}") from None
    for path in clean_leftovers(out):
        logging.getLogger(__name__).info("removed %s, left by a run that was killed", path)
    complete: dict[str, list[Path]] = {}
    clashes: list[Path] = []
    needed = 0
    for item in items:
        try:
            extension, size = stage.expected(item)
        except Exception:  # not an image: it fails later with its own error, writing nothing
            continue
        name = str(item.metadata[NAME_METADATA])
        paths = [out / result_key(name, v, extension) for v in range(stage.n)]
        there = [path for path in paths if path.exists()]
        if there and (len(there) == len(paths) or _unchanged_copy(item, stage, there, paths)):
            complete[item.key] = there
        clashes += there
        if not (args.skip_existing and item.key in complete):
            needed += size
    if clashes and not (args.overwrite or args.skip_existing):
        raise UsageError(
            f"{count(len(clashes), 'result')} would replace files in {out} (the first: "
            f"{clashes[0]}): pass --skip-existing to leave out the inputs already done, "
            "--overwrite to replace them, or choose another --out"
        )
    free = shutil.disk_usage(out).free
    if needed > free:
        raise UsageError(
            f"--out {out} has {megabytes(free)} free; the results need about "
            f"{megabytes(needed)} (an estimate): free some space or choose another --out"
        )
    return complete


def _unchanged_copy(item: Item, stage: OutpaintStage, there: list[Path], paths: list[Path]) -> bool:
    """Whether the one result there is the copy of an input already of the target shape."""
    if there != paths[:1]:
        return False
    try:
        return prepare(item, stage.target, stage.fit_options)[2].is_empty
    except FitError:
        return False


def _existing_record(key: str, paths: list[Path]) -> dict[str, Any]:
    results = [{"path": str(path)} for path in paths]
    return {"key": key, "status": "exists", "units": 0.0, "results": results}


def _write_results(
    out: Path, outputs: list[Item], *, overwrite: bool
) -> list[tuple[Item, Path | None]]:
    """Write an input's results to --out (nothing for a failed input). A result that cannot
    be written fails its input with the reason; the rest of the batch goes on."""
    if failure_of(outputs[0]) is not None:
        return [(outputs[0], None)]
    written: list[tuple[Item, Path | None]] = []
    for item in outputs:
        path = out / item.key
        try:
            write_atomically(path, item.read_bytes(), overwrite=overwrite)
        except OSError as exc:
            reason = str(exc) if isinstance(exc, ExistsError) else f"{exc.strerror or exc}"
            item.metadata.setdefault("outpaint", {})["write_error"] = (
                f"{path} not written: {reason}; the result is kept in the ledger, so a run "
                "with the same options writes it without paying again"
            )
            written.append((item, None))
            continue
        written.append((item, path))
    return written


def _record(key: str, written: list[tuple[Item, Path | None]]) -> dict[str, Any]:
    """One input's outcome, for --json and the printed line."""
    first = written[0][0].metadata.get("outpaint", {})
    if "error" in first:
        status = "skipped" if first.get("skipped") else "failed"
        return {"key": key, "status": status, "error": str(first["error"]), "results": []}
    errors = [item.metadata["outpaint"]["write_error"] for item, path in written if path is None]
    if errors:
        return {"key": key, "status": "failed", "error": "; ".join(errors), "results": []}
    results = []
    for item, path in written:
        meta = item.metadata.get("outpaint", {})
        results.append(
            {
                "path": str(path),
                **{k: v for k, v in meta.items() if k not in ("mask", "preview", "upload")},
            }
        )
    status = "unchanged" if first.get("unchanged") else "done"
    units = float(first.get("units") or 0.0)
    return {"key": key, "status": status, "units": units, "results": results}


def _record_line(record: dict[str, Any]) -> str:
    if record["status"] in ("failed", "skipped"):
        error, prefix = record["error"], f"item {record['key']!r}: "
        while error.startswith(prefix):  # the key starts the line already
            error = error.removeprefix(prefix)
        error = in_flags(error)
        head = "FAILED" if record["status"] == "failed" else "SKIPPED (budget)"
        return f"{record['key']}: {head}: {error}"
    paths = ", ".join(result["path"] for result in record["results"])
    if record["status"] == "exists":
        return f"{record['key']}: left out, its results are there already: {paths}"
    if record["status"] == "unchanged":
        return f"{record['key']}: already the target shape, copied to {paths}"
    canvas = record["results"][0]["canvas"]
    return (
        f"{record['key']}: {canvas[0]} x {canvas[1]}, {plural(record['units'], 'unit')} -> {paths}"
    )
