"""The `kling-expand` command: expand images, plan, compute ratios, look at tasks, check the
setup, and run the local Kling-compatible server. `kling-expand COMMAND --help` says more."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlsplit

import requests

from imgpipe import ConfigError, Item, OptionError
from imgpipe.files import ExistsError, clean_leftovers, write_atomically
from imgpipe.stages.load import load

from . import ledger as ledger_module
from .api import by_source, failure_of, url_name
from .auth import Credentials
from .client import DEFAULT_BASE_URL, EXPAND_PATH, KlingClient, PollSchedule
from .errors import (
    AccountError,
    AuthError,
    CredentialsError,
    InvalidRequestError,
    KlingError,
    NotFoundError,
    PermissionDeniedError,
    TaskFailedError,
    TransportError,
    WaitTimeout,
)
from .fill import METHODS
from .geometry import canvas_for
from .localserver import LocalServer
from .localserver.faults import FAULTS
from .localserver.server import MAX_CONNECTIONS, QUERY_SHAPES
from .models import Task
from .output import (
    NAME_METADATA,
    OUTPUT_FORMATS,
    Namer,
    estimated_bytes,
    megabytes,
    result_key,
)
from .plan import (
    ANCHORS,
    ASPECT_POLICIES,
    MAX_AREA,
    PlanError,
    largest_size,
    parse_aspect,
    ratios_for_aspect,
)
from .prepare import ANIMATED_POLICIES, FitError, prepare
from .progress import Progress
from .report import ContactSheet, format_ratios
from .stage import CHECK_RETRY, OutpaintStage
from .stitch import canvas_at_original, content_of

DEFAULT_PORT = 8765
LOCAL_SERVE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
"""Where `kling-expand serve` listens by default: what `tasks --endpoint local` talks to."""
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
MAX_CLOCK_SKEW = 5.0
"""Seconds our clock may run ahead of the server's before its tokens are refused (`nbf`)."""
CLI_RETRY = CHECK_RETRY
TYPICAL_TASK_SECONDS = 60.0
"""A task's typical time from create to result, for `plan`'s estimate (--task-seconds)."""
log = logging.getLogger(__name__)

EXIT_CODES = """exit codes:
  0    everything went through (every check passed, for doctor)
  1    some inputs failed, or the task failed or was not found; the rest was still done
  2    usage or configuration error (a bad option, a missing file, missing credentials)
  3    the endpoint could not be reached, or refused the credentials
  130  interrupted (Ctrl-C)"""

EXAMPLES = """examples:
  kling-expand expand photos/ --aspect 16:9 --area 2 --n 2 --out banners/
  kling-expand expand shot.jpg --size 1920x1080 --anchor left --endpoint URL --out out/
  kling-expand plan photos/ --aspect 16:9 --area max
  kling-expand ratios 100 100 --area 3 --aspect 16:9
  kling-expand tasks list --endpoint https://api-singapore.klingai.com
  kling-expand doctor
  kling-expand serve --port 8765

The real service needs KLING_ACCESS_KEY and KLING_SECRET_KEY (or KLING_API_KEY) in the
environment. `expand` uses the local server unless --endpoint names a URL, so nothing is paid
for by accident."""


class UsageError(Exception):
    """A command-line mistake: reported with the command's usage, exit 2."""


class Unreachable(Exception):
    """The endpoint did not answer, or refused the credentials: exit 3."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command_parser: argparse.ArgumentParser = args.parser
    if unknown:
        sys.exit(_usage_error(command_parser, _unknown_flags(command_parser, unknown), usage=True))
    _setup_logging(args.verbose, args.quiet)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except OptionError as error:  # a stage option: say it as the flag the user typed
        command_parser.error(f"{_flag(error.option)}: {error.message}")
    except (UsageError, ConfigError, CredentialsError, PlanError) as error:
        command_parser.error(_in_flags(str(error)))
    except Unreachable as error:
        print(f"kling-expand: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KlingError as error:  # any other answer of the API, such as a failed download
        print(f"kling-expand: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("kling-expand: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kling-expand ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return EXIT_USAGE  # not reached: parser.error exits


def _flag(option: str) -> str:
    """The command-line name of a stage option: `paths` is the INPUT argument."""
    return "INPUT" if option == "paths" else "--" + option.replace("_", "-")


def _in_flags(message: str) -> str:
    """A stage's message with its `option 'name'` phrases said as flags."""
    return re.sub(r"option '(\w+)'", lambda match: _flag(match.group(1)), message)


def _unknown_flags(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    flags = [flag for action in parser._actions for flag in action.option_strings]
    words = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.partition("=")[0], flags, n=1)
        words.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    return f"unrecognized arguments: {' '.join(words)}"


def _usage_error(parser: argparse.ArgumentParser, message: str, *, usage: bool = False) -> int:
    """One line (after the usage line for a mistyped flag) and a pointer to --help: exit 2."""
    if usage:
        parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message} (see '{parser.prog} --help')", file=sys.stderr)
    return EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its errors one line instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        missing = message.startswith("the following arguments are required")
        sys.exit(_usage_error(self, message.removeprefix("argument "), usage=missing))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kling-expand",
        description=(
            "Expand (outpaint) images with the Kling AI Image Expansion API, or with the local "
            "Kling-compatible server, which needs no account."
        ),
        epilog=f"{EXAMPLES}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_flags(parser, default=0)
    commands: argparse._SubParsersAction[argparse.ArgumentParser]
    commands = parser.add_subparsers(  # type: ignore[assignment]
        dest="command", required=True, metavar="COMMAND"
    )
    common = argparse.ArgumentParser(add_help=False)
    _add_global_flags(common, default=argparse.SUPPRESS)  # keeps a -v given before the command
    _add_expand(commands, common)
    _add_plan(commands, common)
    _add_ratios(commands, common)
    _add_tasks(commands, common)
    _add_doctor(commands, common)
    _add_serve(commands, common)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """-v and -q, taken before the command's name or after it."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=default, help="more logging; -vv for debug"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default or False, help="errors only"
    )


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    epilog: str = EXIT_CODES,
    usage: str | None = None,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        usage=usage,
        parents=[common],
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, parser=parser)
    return parser


# -- expand and plan ---------------------------------------------------------------------------


def _add_expand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    expand = _command(
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
    _add_target_options(expand)
    _add_format_options(expand)
    run = expand.add_argument_group("running")
    run.add_argument(
        "--endpoint",
        default="local",
        help='"local" (default: the embedded local server, free) or a Kling-compatible URL '
        f"such as {DEFAULT_BASE_URL} (credentials from KLING_* variables)",
    )
    run.add_argument("--prompt", help="text prompt (at most 2500 characters)")
    run.add_argument("--watermark", action="store_true", default=None, help="also watermark")
    run.add_argument("--concurrency", type=int, help="account task slots to use (default 4)")
    run.add_argument("--budget", type=float, help="stop creating tasks past this many units")
    run.add_argument(
        "--ledger",
        help='"auto" (the user data folder\'s SQLite file; temporary for local), a SQLite '
        "file, or a postgresql:// URL",
    )
    run.add_argument("--timeout", type=float, help="seconds to wait for one task (default 6 h)")
    run.add_argument(
        "--retry-failed",
        action="store_true",
        default=None,
        help="create again the tasks that failed before (paid again)",
    )
    run.add_argument(
        "--recreate-lost",
        action="store_true",
        default=None,
        help="create again the tasks paid for whose results the server no longer has",
    )
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failed input")
    run.add_argument("--blend", type=int, help="seam blend width in pixels (default 8)")
    run.add_argument(
        "--colour-match", action="store_true", default=None, help="match generated colours"
    )
    run.add_argument("--callback", metavar="HOST:PORT", help="receive Kling's callbacks here")
    run.add_argument("--callback-url", metavar="URL", help="the public URL of --callback")
    run.add_argument("--local-latency", type=float, help="seconds a local task takes (default 1)")
    run.add_argument("--json", action="store_true", help="print one JSON document at the end")
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


def _add_format_options(parser: argparse.ArgumentParser) -> None:
    formats = parser.add_argument_group("format")
    formats.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        help="results as png, jpeg or webp; auto (default) keeps the input's own format when "
        "it is JPEG, PNG or WebP, else PNG",
    )
    formats.add_argument("--quality", type=int, help="JPEG and WebP quality, 1..100 (default 92)")
    formats.add_argument(
        "--png-compression", type=int, help="PNG zlib level, 0..9 (default 1: fast)"
    )


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group(
        "target (one of --aspect, --size or --ratios)",
        "Where the original sits is --anchor; a target beyond one call's limits takes up to "
        "--max-passes calls.",
    )
    target.add_argument("--aspect", help='target aspect ratio: "16:9", "4/3", "16x9" or 1.78')
    target.add_argument(
        "--area",
        type=_area,
        help='with --aspect: the canvas area in multiples of the original\'s, or "max"; '
        "unset: the smallest canvas of that aspect",
    )
    target.add_argument("--size", metavar="WxH", help="target size in the original's pixels")
    target.add_argument(
        "--ratios", type=_ratios, metavar="UP,DOWN,LEFT,RIGHT", help="the four ratios as given"
    )
    target.add_argument(
        "--anchor",
        type=_anchor,
        help=f"where the original sits: {', '.join(ANCHORS)}, or X,Y fractions (default center)",
    )
    target.add_argument("--max-passes", type=int, help="calls allowed per image (default 1)")
    target.add_argument(
        "--aspect-policy",
        choices=ASPECT_POLICIES,
        help="an input outside 1:2.5..2.5:1: pad (default), crop or reject",
    )
    target.add_argument("--n", "-n", type=int, help="results per input, 1..9 (default 1)")
    target.add_argument("--animated", choices=ANIMATED_POLICIES, help="animated inputs")
    target.add_argument("--background", help="colour behind transparency (default white)")
    target.add_argument("--max-pixels", type=int, help="refuse inputs with more pixels")
    target.add_argument("--max-upload-pixels", type=int, help="downscale uploads above this")


def _add_plan(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    plan = _command(
        commands,
        common,
        "plan",
        plan_command,
        usage="%(prog)s INPUT... (--aspect R [--area A] | --size WxH | --ratios U,D,L,R) [options]",
        help="dry run: what expand would do with each input, without creating a task",
        description=(
            "For each input: how it would be fitted to the API's limits, the ratios of each "
            "call, the canvas at the original's resolution and the original's place in it, "
            "the slots a task holds and an estimate of the units. Nothing is sent anywhere."
        ),
        epilog=(
            "examples:\n"
            "  kling-expand plan photos/ --aspect 16:9 --area 2 --n 2\n"
            "  kling-expand plan wide.png --aspect 9:16 --max-passes 3 --json\n\n" + EXIT_CODES
        ),
    )
    plan.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, globs, URLs")
    _add_target_options(plan)
    _add_format_options(plan)
    plan.add_argument(
        "--concurrency", type=int, help="account task slots, for the time estimate (default 4)"
    )
    plan.add_argument(
        "--task-seconds",
        type=float,
        default=TYPICAL_TASK_SECONDS,
        help=f"a task's typical time, for the time estimate (default {TYPICAL_TASK_SECONDS:g})",
    )
    plan.add_argument(
        "--json", action="store_true", help='print {"inputs": [one per input], "total": {...}}'
    )


def expand_command(args: argparse.Namespace) -> int:
    """Run the stage over the inputs, write the results and the report."""
    on_error = "raise" if args.fail_fast else "passthrough"
    stage = OutpaintStage(**_stage_options(args, endpoint=True), on_error=on_error)
    out = Path(args.out)
    items = _input_items(args.inputs, exclude=out)
    if stage.endpoint != "local":
        _check_reachable(stage.endpoint)
    existing = _check_destination(out, items, stage, args)
    if not args.skip_existing:
        existing = {}  # --overwrite: sent and written again
    total = len(items)
    title = f"kling-expand: {_count(total, 'input')}"
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
        print(f"{_count(len(existing), 'input')} left out: their results are in {out} already")
    logs = progress.handler(LOG_FORMAT)
    if args.verbose == 0:
        logs.addFilter(_not_an_input_error)  # each failed input is printed once, as FAILED
    with progress, _logging_through(logs), _stopping_on_ctrl_c(stage):
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
        _print_json({"inputs": records, "summary": summary, "report": report})
    else:
        there = f", {len(existing)} already there" if existing else ""
        print(
            f"{_count(total, 'input')}: {summary['done']} done, {summary['failed']} failed, "
            f"{summary['skipped']} skipped (budget){there}; "
            f"{_count(summary['results'], 'result')}; {_units(summary['units'])}; "
            f"{summary['seconds']:.1f} s"
        )
        print(f"report: {html_path} (picture: {png_path})")
    if stage.cancelled:
        return EXIT_INTERRUPTED
    failed = error is not None or summary["failed"] or summary["skipped"]
    return EXIT_FAILED if failed else EXIT_OK


def _not_an_input_error(record: logging.LogRecord) -> bool:
    """False for the stage's errors about inputs, which the command prints itself."""
    return not (record.name == "kling_expand_plugin.stage" and record.levelno == logging.ERROR)


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


def plan_command(args: argparse.Namespace) -> int:
    """Print what `expand` would do with each input."""
    stage = OutpaintStage(**_stage_options(args, endpoint=False), endpoint="local")
    plans = []
    for item in _input_items(args.inputs):
        try:
            plans.append(_plan_of(item, stage))
        except FitError as exc:
            plans.append(_refused(item.key, exc.problem, exc.rule))
        except Exception as exc:  # a bug, not the input's fault: still one line, no traceback
            log.debug("planning %s", item.key, exc_info=True)
            problem = f"could not be planned ({type(exc).__name__})"
            plans.append(_refused(item.key, problem, "none: a bug in kling-expand; -vv shows it"))
    total = _plan_total(plans, slots=args.concurrency or stage.concurrency, n=stage.n,
                        task_seconds=args.task_seconds)  # fmt: skip
    if args.json:
        _print_json({"inputs": plans, "total": total})
    else:
        for plan in plans:
            print("\n".join(_plan_lines(plan)))
        print(_total_line(total))
    return EXIT_FAILED if any("error" in plan for plan in plans) else EXIT_OK


def _plan_total(
    plans: list[dict[str, Any]], *, slots: int, n: int, task_seconds: float
) -> dict[str, Any]:
    """The batch: inputs planned and refused, tasks, units, time at `slots`, disk."""
    planned = [plan for plan in plans if "error" not in plan]
    tasks = sum(plan["tasks"] for plan in planned)
    at_once = max(1, slots // max(n, 1))  # a task holds n slots while it runs
    return {
        "planned": len(planned),
        "refused": len(plans) - len(planned),
        "tasks": tasks,
        "estimated_units": sum(plan["estimated_units"] for plan in planned),
        "slots": slots,
        "task_seconds": task_seconds,
        "estimated_seconds": math.ceil(tasks / at_once) * task_seconds,
        "estimated_bytes": sum(plan["estimated_bytes"] for plan in planned),
    }


def _total_line(total: dict[str, Any]) -> str:
    seconds = total["estimated_seconds"]
    time_taken = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return (
        f"total: {_count(total['planned'], 'input')} planned, {total['refused']} refused; "
        f"{_count(total['tasks'], 'task')}, about {_count(total['estimated_units'], 'unit')}; "
        f"about {time_taken} at {_count(total['slots'], 'slot')} "
        f"({total['task_seconds']:g} s a task); disk about "
        f"{megabytes(total['estimated_bytes'])} (estimates)"
    )


def _plan_of(item: Item, stage: OutpaintStage) -> dict[str, Any]:
    decoded, upload, plan = prepare(item, stage.target, stage.fit_options)
    content = content_of(decoded.original, plan, upload.scale)
    canvas = canvas_at_original(plan.canvas, upload.scale, content.size)
    passes = len(plan.passes)
    return {
        "key": item.key,
        "original": list(decoded.original.size),
        "upload": {
            "width": upload.width,
            "height": upload.height,
            "format": upload.format,
            "scale": upload.scale,
            "changes": list(upload.changes) or ["none: the file is sent as it is"],
        },
        "passes": [ratios.as_dict() for ratios in plan.passes],
        "canvas": [canvas.width, canvas.height],
        "box": list(canvas.box.as_tuple()),
        "resized_to": list(plan.output_size) if plan.output_size else None,
        "tasks": 1 + stage.n * (passes - 1) if passes else 0,
        "slots": stage.n if passes else 0,
        "estimated_units": stage.n * passes,
        "format": stage.output.pillow_format(decoded.format).lower(),
        "estimated_bytes": estimated_bytes(
            canvas.width * canvas.height,
            stage.n if passes else 1,
            stage.output.pillow_format(decoded.format),
        ),
    }


def _refused(key: str, problem: str, rule: str) -> dict[str, Any]:
    """An input `plan` cannot use: the whole error, and its parts for scripts."""
    return {
        "key": key,
        "error": f"item {key!r}: {problem} (rule: {rule})",
        "problem": problem,
        "rule": rule,
    }


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    if "error" in plan:
        return [f"{plan['key']}: cannot be expanded: {plan['problem']} (rule: {plan['rule']})"]
    upload = plan["upload"]
    lines = [
        f"{plan['key']}: {plan['original'][0]} x {plan['original'][1]}",
        f"  upload:  {upload['width']} x {upload['height']} {upload['format']}, "
        f"scale {upload['scale']:g}; {'; '.join(upload['changes'])}",
    ]
    disk = (
        f"  disk:    about {megabytes(plan['estimated_bytes'])} as {plan['format'].upper()} "
        "(an estimate)"
    )
    if not plan["passes"]:
        return [*lines, "  already the target shape: no call, copied", disk]
    for number, ratios in enumerate(plan["passes"], start=1):
        lines.append(f"  call {number}/{len(plan['passes'])}: {format_ratios(ratios)}")
    left, top, right, bottom = plan["box"]
    resized = plan["resized_to"]
    lines += [
        f"  canvas:  {plan['canvas'][0]} x {plan['canvas'][1]}, the original at "
        f"({left}, {top})-({right}, {bottom})"
        + (f", then resized to {resized[0]} x {resized[1]}" if resized else ""),
        f"  cost:    {_count(plan['tasks'], 'task')}, {_count(plan['slots'], 'slot')} each while "
        f"running, about {_count(plan['estimated_units'], 'unit')} (an estimate: the API reports "
        "the real figure)",
        disk,
    ]
    return lines


def _stage_options(args: argparse.Namespace, *, endpoint: bool) -> dict[str, Any]:
    """The stage's options from the flags given; unset flags keep the stage's defaults."""
    names = [
        "aspect",
        "area",
        "size",
        "ratios",
        "anchor",
        "max_passes",
        "aspect_policy",
        "n",
        "animated",
        "background",
        "max_pixels",
        "max_upload_pixels",
        "format",
        "quality",
        "png_compression",
    ]
    if endpoint:
        names += [
            "endpoint",
            "prompt",
            "watermark",
            "concurrency",
            "budget",
            "ledger",
            "timeout",
            "blend",
            "colour_match",
            "callback",
            "callback_url",
            "local_latency",
            "retry_failed",
            "recreate_lost",
        ]
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if sum(name in options for name in ("aspect", "size", "ratios")) != 1:
        raise UsageError("give one target: --aspect (with --area), --size or --ratios")
    if "area" in options and "aspect" not in options:
        raise UsageError("--area goes with --aspect")
    if "n" in options and "concurrency" not in options:
        options["concurrency"] = max(4, options["n"])  # room for one task, whatever n is
    return options


def _settings(args: argparse.Namespace) -> dict[str, str]:
    """The flags that shape the results, for the report's header."""
    shown = ["endpoint", "aspect", "area", "size", "ratios", "anchor", "n", "prompt"]
    return {name: str(getattr(args, name)) for name in shown if getattr(args, name) is not None}


def _input_items(inputs: list[str], exclude: Path | None = None) -> list[Item]:
    """Items for the files, folders, globs and URLs named (but none from `exclude`, the output
    folder, so results are never fed back in), each with its result name. Every file is
    handed on, whatever its extension: the stage decides what is an image."""
    try:
        stage = load(paths=inputs, exclude=[str(exclude)] if exclude else None)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    items: list[Item] = []
    keys: set[str] = set()
    names = Namer()
    for item in stage([]):
        if isinstance(item.image, Path):
            item.key = _safe_key(item.key)
        else:
            item.key = url_name(str(item.image))
        stem, suffix = os.path.splitext(item.key)
        tag = str(len(items))
        while item.key in keys:
            item.key = f"{stem}-{tag}{suffix}"
            tag += "-1"
        keys.add(item.key)
        item.metadata[NAME_METADATA] = names.name(item.key)
        items.append(item)
    if not items:
        raise UsageError(f"no files in {', '.join(inputs)}")
    return items


def _safe_key(key: str) -> str:
    """A key that, joined to --out, stays inside it (load keys some files by absolute path)."""
    parts = [part for part in PurePosixPath(Path(key).as_posix()).parts if part not in ("/", "..")]
    return PurePosixPath(*parts).as_posix() if parts else "image"


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
            f"{_count(len(clashes), 'result')} would replace files in {out} (the first: "
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


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _units(units: float) -> str:
    return f"{units:g} unit{'' if units == 1 else 's'}"


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
        error = error.replace("with max_passes", "with --max-passes")  # the stage's word
        head = "FAILED" if record["status"] == "failed" else "SKIPPED (budget)"
        return f"{record['key']}: {head}: {error}"
    paths = ", ".join(result["path"] for result in record["results"])
    if record["status"] == "exists":
        return f"{record['key']}: left out, its results are there already: {paths}"
    if record["status"] == "unchanged":
        return f"{record['key']}: already the target shape, copied to {paths}"
    canvas = record["results"][0]["canvas"]
    return f"{record['key']}: {canvas[0]} x {canvas[1]}, {_units(record['units'])} -> {paths}"


# -- ratios --------------------------------------------------------------------------------------


def _add_ratios(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    ratios = _command(
        commands,
        common,
        "ratios",
        ratios_command,
        help="the four ratios for an aspect ratio and an area (the API's worked example)",
        description=(
            "Print up,down,left,right for a W x H original, centred on a canvas of --aspect "
            "with --area times the original's area, rounded to the API's 4 places."
        ),
        epilog="example:\n  kling-expand ratios 100 100 --area 3 --aspect 16:9\n"
        "  0.1495,0.1495,0.6547,0.6547\n\n" + EXIT_CODES,
    )
    ratios.add_argument("width", type=int, help="the original's width in pixels")
    ratios.add_argument("height", type=int, help="the original's height in pixels")
    ratios.add_argument(
        "--aspect", required=True, help='target aspect ratio: "16:9", "4/3", "16x9" or 1.78'
    )
    ratios.add_argument(
        "--area",
        type=_area,
        required=True,
        help='canvas area, 1..3 originals, or "max": the largest canvas one call makes',
    )
    ratios.add_argument("--json", action="store_true", help="print the ratios and the canvas")


def ratios_command(args: argparse.Namespace) -> int:
    if args.width < 1 or args.height < 1:
        raise UsageError("width and height must be positive")
    aspect = parse_aspect(args.aspect)
    area = args.area
    if area == MAX_AREA:
        width, height = largest_size(args.width, args.height, aspect, (0.5, 0.5))
        area = math.floor(width) * math.floor(height) / (args.width * args.height)
    ratios = ratios_for_aspect(args.width, args.height, aspect=aspect, area=area)
    problems = ratios.problems()
    if problems:
        raise UsageError("; ".join(problems))
    canvas = canvas_for(args.width, args.height, ratios)
    if args.json:
        _print_json(
            {
                "up": ratios.up,
                "down": ratios.down,
                "left": ratios.left,
                "right": ratios.right,
                "canvas": [canvas.width, canvas.height],
                "box": list(canvas.box.as_tuple()),
            }
        )
    else:
        values = (ratios.up, ratios.down, ratios.left, ratios.right)
        print(",".join(f"{value:.4f}" for value in values))
    return EXIT_OK


# -- tasks ---------------------------------------------------------------------------------------


def _add_tasks(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    tasks = _command(
        commands,
        common,
        "tasks",
        lambda args: EXIT_USAGE,
        help="the account's tasks: list, get, wait, download",
        description=(
            "Look at the account's expansion tasks on a Kling-compatible server (the real one "
            "by default; credentials from KLING_ACCESS_KEY + KLING_SECRET_KEY or KLING_API_KEY)."
            " ID is a task_id or an external_task_id. Nothing here creates a task."
        ),
        epilog=(
            "examples:\n"
            "  kling-expand tasks list --limit 10\n"
            "  kling-expand tasks get 8f3c...\n"
            "  kling-expand tasks wait 8f3c... && kling-expand tasks download 8f3c... --out got/\n"
            "  kling-expand tasks list --endpoint http://127.0.0.1:8765 --json   (a `serve`)\n\n"
            + EXIT_CODES
        ),
    )
    actions = tasks.add_subparsers(dest="action", required=True, metavar="ACTION")
    task_common = argparse.ArgumentParser(add_help=False, parents=[common])
    task_common.add_argument(
        "--endpoint",
        default="local",
        help=f'"local" (default: a `kling-expand serve` at {LOCAL_SERVE_URL}) or a server URL '
        f"such as {DEFAULT_BASE_URL}",
    )
    task_common.add_argument("--json", action="store_true", help="print JSON")
    listing = _command(
        actions,
        task_common,
        "list",
        tasks_list_command,
        help="the newest tasks",
        description="List the account's tasks, newest first.",
    )
    listing.add_argument("--limit", type=int, default=30, help="at most this many (default 30)")
    for name, handler, what in (
        ("get", tasks_get_command, "one task's status, units and result URLs"),
        ("wait", tasks_wait_command, "wait until the task ends; exit 1 if it failed"),
        ("download", tasks_download_command, "write the task's result images to --out"),
    ):
        action = _command(actions, task_common, name, handler, help=what, description=what + ".")
        action.add_argument("id", metavar="ID", help="a task_id, or an external_task_id")
        if name == "wait":
            action.add_argument("--timeout", type=float, default=3600.0, help="seconds (1 h)")
            action.add_argument("--interval", type=float, default=2.0, help="first poll delay")
        if name == "download":
            action.add_argument("--out", "-o", required=True, metavar="DIR", help="where to write")


def tasks_list_command(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with _client(args.endpoint) as client, _reaching(args.endpoint):
        tasks = []
        for task in client.list(page_size=min(args.limit, 500)):
            tasks.append(task)
            if len(tasks) == args.limit:
                break
    if args.json:
        _print_json([_task_json(task) for task in tasks])
    else:
        for task in tasks:
            print(_task_line(task))
        if not tasks:
            print("no tasks")
    return EXIT_OK


def tasks_get_command(args: argparse.Namespace) -> int:
    with _client(args.endpoint) as client, _reaching(args.endpoint):
        task = _find_task(client, args.id)
    if task is None:
        print(f"kling-expand: no task {args.id}", file=sys.stderr)
        return EXIT_FAILED
    _show_task(task, args.json)
    return EXIT_OK


def tasks_wait_command(args: argparse.Namespace) -> int:
    schedule = PollSchedule(first=args.interval, longest=max(args.interval, 30.0))
    with _client(args.endpoint) as client, _reaching(args.endpoint):
        task = _find_task(client, args.id)
        if task is None:
            print(f"kling-expand: no task {args.id}", file=sys.stderr)
            return EXIT_FAILED
        try:
            task = client.wait(task, timeout=args.timeout, schedule=schedule)
        except TaskFailedError as exc:
            _show_task(exc.task, args.json)
            return EXIT_FAILED
        except WaitTimeout as exc:
            print(f"kling-expand: {exc}", file=sys.stderr)
            return EXIT_FAILED
    _show_task(task, args.json)
    return EXIT_OK


def tasks_download_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    with _client(args.endpoint) as client, _reaching(args.endpoint):
        task = _find_task(client, args.id)
        if task is None or not task.succeeded:
            state = "no such task" if task is None else f"it is {task.status.value}"
            print(f"kling-expand: cannot download {args.id}: {state}", file=sys.stderr)
            return EXIT_FAILED
        out.mkdir(parents=True, exist_ok=True)
        paths = [
            client.download(image.url, dest=out / f"{task.task_id}-{image.index}.png")
            for image in task.images
        ]
    if args.json:
        _print_json({"task": _task_json(task), "paths": [str(path) for path in paths]})
    else:
        for path in paths:
            print(path)
    return EXIT_OK


def _find_task(client: KlingClient, task_id: str) -> Task | None:
    """The task with this task_id, or else this external_task_id; None if neither."""
    try:
        return client.get(task_id)
    except (NotFoundError, InvalidRequestError):
        pass
    try:
        return client.get_by_external_id(task_id)
    except NotFoundError:
        return None


def _show_task(task: Task, as_json: bool) -> None:
    if as_json:
        _print_json(_task_json(task))
        return
    print(_task_line(task))
    if task.status_msg:
        print(f"  message: {task.status_msg}")
    for image in task.images:
        print(f"  image {image.index}: {image.url}")


def _task_line(task: Task) -> str:
    created = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task.created_at / 1000))
        if task.created_at
        else "-"
    )
    return (
        f"{task.task_id}  {task.status.value:<10}  {created}  units {task.units or '-'}  "
        f"images {len(task.images)}  external {task.external_task_id or '-'}"
    )


def _task_json(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "status": task.status.value,
        "status_msg": task.status_msg,
        "external_task_id": task.external_task_id,
        "units": task.units,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "images": [
            {"index": image.index, "url": image.url, "watermark_url": image.watermark_url}
            for image in task.images
        ],
    }


def _client(endpoint: str) -> KlingClient:
    """A client of `endpoint` with the environment's credentials and short retries; "local"
    is a `kling-expand serve` on its default port, and a server on this machine started
    without keys needs none."""
    url = LOCAL_SERVE_URL if endpoint == "local" else endpoint
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint {endpoint!r} is not local or an http(s) URL")
    try:
        return KlingClient(url, Credentials.from_env(), retry=CLI_RETRY)
    except CredentialsError as missing:
        if not _is_loopback(url):
            raise
        client = KlingClient(url, Credentials("local", "no-keys-for-a-keyless-serve"))
        try:
            next(client.list(page_size=1), None)  # does this server take any token?
        except AuthError:
            raise missing from None
        return client


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


@contextmanager
def _reaching(endpoint: str) -> Iterator[None]:
    """Turn "cannot reach" and "credentials or account refused" into Unreachable (exit 3)."""
    try:
        yield
    except TransportError as exc:
        raise Unreachable(f"cannot reach {endpoint}: {exc}") from None
    except (AuthError, AccountError, PermissionDeniedError) as exc:
        raise Unreachable(f"{endpoint} refused the request: {exc}") from None


def _check_reachable(endpoint: str) -> None:
    """Before a paid batch: one free query, so that a bad URL or key stops it at once."""
    with _client(endpoint) as client, _reaching(endpoint):
        next(iter(client.list(page_size=1)), None)


# -- doctor --------------------------------------------------------------------------------------


def _add_doctor(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    doctor = _command(
        commands,
        common,
        "doctor",
        doctor_command,
        help="check credentials, clock, reachability and the ledger",
        description=(
            "Check what a run needs: credentials in the environment, the server reachable, "
            "our clock within 5 s of the server's (its Date header; tokens are refused "
            "otherwise), the credentials accepted, and the ledger's state. With --endpoint "
            "local, an embedded local server is started and checked instead."
        ),
        epilog="exit codes:\n  0  every check passed\n  1  some check failed\n  2  usage error",
    )
    doctor.add_argument(
        "--endpoint",
        default="local",
        help='"local" (default: an embedded local server) or a server URL such as '
        f"{DEFAULT_BASE_URL}",
    )
    doctor.add_argument("--ledger", help="the ledger file (default: the user data folder's)")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")


def doctor_command(args: argparse.Namespace) -> int:
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    with ExitStack() as stack:
        url, credentials = _doctor_target(args.endpoint, stack, check)
        if credentials is not None:
            _probe(url, credentials, check)
    if args.ledger and ledger_module.is_database_url(args.ledger):
        check("ledger", *_ledger_state(args.ledger))
    else:
        check("ledger", *_ledger_state(Path(args.ledger or ledger_module.default_path())))
    if args.json:
        _print_json(checks)
    else:
        for entry in checks:
            print(f"{'OK' if entry['ok'] else 'FAIL':<5} {entry['check']:<12} {entry['detail']}")
    return EXIT_OK if all(entry["ok"] for entry in checks) else EXIT_FAILED


def _doctor_target(
    endpoint: str, stack: ExitStack, check: Callable[[str, bool, str], None]
) -> tuple[str, Credentials | None]:
    """The URL to probe and the credentials to probe it with (None: cannot probe)."""
    if endpoint == "local":
        access_key, secret_key = secrets.token_hex(8), secrets.token_hex(16)
        server = stack.enter_context(
            LocalServer(access_key=access_key, secret_key=secret_key, fill_method="fast")
        )
        check("credentials", True, "not needed: an embedded local server with its own keys")
        return server.url, Credentials(access_key, secret_key)
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint {endpoint!r} is not local or an http(s) URL")
    try:
        credentials = Credentials.from_env()
    except CredentialsError as exc:
        check("credentials", False, str(exc))
        return endpoint, None
    form = (
        "an API key (KLING_API_KEY)"
        if not credentials.can_refresh
        else (
            f"access key {_masked(credentials.access_key or '')} + secret key "
            "(KLING_ACCESS_KEY, KLING_SECRET_KEY)"
        )
    )
    check("credentials", True, form)
    return endpoint, credentials


def _probe(url: str, credentials: Credentials, check: Callable[[str, bool, str], None]) -> None:
    """One list query: reachable, clock skew from its Date header, credentials accepted."""
    started = time.time()
    try:
        response = requests.get(
            url.rstrip("/") + EXPAND_PATH,
            params={"pageNum": 1, "pageSize": 1},
            headers={"Authorization": f"Bearer {credentials.bearer_token()}"},
            timeout=(5.0, 15.0),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        reason = credentials.redact(str(exc))
        check("reachable", False, f"{url}: {type(exc).__name__}: {reason}")
        return
    ended = time.time()
    took = ended - started
    check("reachable", True, f"{url} answered HTTP {response.status_code} in {took:.2f} s")
    date = response.headers.get("Date")
    if date is None:
        check("clock", False, "the server sent no Date header; cannot measure the skew")
    else:
        server_time = parsedate_to_datetime(date).timestamp() + 0.5  # Date has whole seconds
        skew = (started + ended) / 2 - server_time
        ahead = "ahead of" if skew > 0 else "behind"
        detail = f"our clock is {abs(skew):.1f} s {ahead} the server's (at most {MAX_CLOCK_SKEW:g})"
        check("clock", abs(skew) <= MAX_CLOCK_SKEW + 0.5, detail)
    try:
        body = response.json()
        code = body.get("code")
        message = credentials.redact(str(body.get("message") or ""))
    except (ValueError, AttributeError):
        code, message = None, "the answer is not Kling's JSON"
    if code == 0:
        check("auth", True, "the server accepted the credentials")
    else:
        check("auth", False, f"refused: code {code}: {message}")


def _ledger_state(spec: str | Path) -> tuple[bool, str]:
    """(ok, description): the ledger opened as a run opens it (an older one is brought to this
    version's schema), its size and its tasks counted by status."""
    if not ledger_module.is_database_url(spec) and not Path(spec).exists():
        return True, f"{spec}: none yet (made by the first paid run)"
    try:
        ledger = ledger_module.open_ledger(spec)
    except ledger_module.LedgerError as error:
        return False, str(error)
    try:
        counts = ledger.counts()
    finally:
        ledger.close()
    listed = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    size = f"{Path(spec).stat().st_size / 1024:.1f} KB; " if isinstance(spec, Path) else ""
    in_doubt = counts.get(ledger_module.INTENT, 0)
    note = f"; {_count(in_doubt, 'create')} in doubt: re-run that batch to settle them"
    note = note if in_doubt else ""
    return True, f"{ledger.path}: {size}{listed or 'no tasks'}{note}"


def _masked(key: str) -> str:
    return key[:4] + "..." if len(key) > 8 else "***"


# -- serve ---------------------------------------------------------------------------------------


def _add_serve(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    fault_lines = "\n".join(f"  {name:17} {what}" for name, what in FAULTS.items())
    serve = _command(
        commands,
        common,
        "serve",
        serve_command,
        help="run the local Kling-compatible server",
        description=(
            "Run the local Kling-compatible server until Ctrl-C or SIGTERM. The first line "
            "printed is 'listening on http://HOST:PORT'. Keys come from the flags or from "
            "KLING_ACCESS_KEY / KLING_SECRET_KEY / KLING_API_KEY; with none, any bearer token "
            "is accepted (a warning says so)."
        ),
        epilog=f"faults (--fault NAME=RATE, RATE in 0..1):\n{fault_lines}",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    serve.add_argument("--access-key", default=os.environ.get("KLING_ACCESS_KEY"))
    serve.add_argument(
        "--secret-key",
        default=os.environ.get("KLING_SECRET_KEY"),
        help="prefer the KLING_SECRET_KEY environment variable (flags show in process lists)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="an accepted API key (repeatable; also KLING_API_KEY)",
    )
    serve.add_argument(
        "--latency",
        type=_latency,
        default=1.0,
        help="seconds from submitted to the end: S, or MIN-MAX for a uniform draw (default 1)",
    )
    serve.add_argument("--concurrency", type=int, default=10, help="account slots (default 10)")
    serve.add_argument(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="NAME=RATE",
        help="switch a fault on (repeatable; names below)",
    )
    serve.add_argument("--seed", type=int, default=0, help="seed of faults and variations")
    serve.add_argument("--fill", choices=METHODS, default="mirror-fade", help="fill method")
    serve.add_argument("--result-ttl", type=float, default=3600.0, help="seconds results live")
    serve.add_argument("--rate-limit", type=int, default=None, help="requests per second (1302)")
    serve.add_argument(
        "--slow-create-delay", type=float, default=30.0, help="seconds the slow-create fault waits"
    )
    serve.add_argument(
        "--accept-reused-ids",
        action="store_true",
        help="a reused external_task_id makes a new paid task instead of error 1201 (for tests)",
    )
    serve.add_argument(
        "--query-shape",
        choices=QUERY_SHAPES,
        default="object",
        help="data of the single-task query: the task object, as clients read it (default), or "
        "a list of one task, as the documentation's example shows",
    )
    serve.add_argument(
        "--max-connections",
        type=_connections,
        default=MAX_CONNECTIONS,
        help=f"connections served at once, one thread each; more get 5001 (default "
        f"{MAX_CONNECTIONS})",
    )
    serve.add_argument(
        "--webhook-secret",
        default=os.environ.get("KLING_WEBHOOK_SECRET"),
        help="sign callbacks with this whsec_ secret (also KLING_WEBHOOK_SECRET)",
    )


def serve_command(args: argparse.Namespace) -> int:
    """Run the server until interrupted."""
    api_keys = list(args.api_key)
    if not api_keys and os.environ.get("KLING_API_KEY"):
        api_keys.append(os.environ["KLING_API_KEY"])
    if (args.access_key is None) != (args.secret_key is None):
        raise UsageError("--access-key and --secret-key go together")
    server = LocalServer(
        args.host,
        args.port,
        access_key=args.access_key,
        secret_key=args.secret_key,
        api_keys=api_keys,
        latency=args.latency,
        concurrency=args.concurrency,
        seed=args.seed,
        fill_method=args.fill,
        result_ttl=args.result_ttl,
        faults=dict(args.fault),
        webhook_secret=args.webhook_secret,
        rate_limit=args.rate_limit,
        slow_create_delay=args.slow_create_delay,
        accept_reused_ids=args.accept_reused_ids,
        query_shape=args.query_shape,
        max_connections=args.max_connections,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    try:
        print(f"listening on {server.url}", flush=True)
        if server.auth.is_open:
            print("warning: no keys configured, accepting any bearer token", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


# -- argument types and helpers ------------------------------------------------------------------


def _area(text: str) -> float | str:
    if text == MAX_AREA:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or {MAX_AREA!r}") from None


def _ratios(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not UP,DOWN,LEFT,RIGHT such as 0,0,0.5,0.5")
    return values


def _anchor(text: str) -> str | list[float]:
    if "," not in text:
        return text
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a name or X,Y fractions") from None


def _latency(text: str) -> float | Callable[[random.Random], float]:
    low, sep, high = text.partition("-")
    try:
        if not sep:
            return _non_negative(float(text))
        low_value, high_value = _non_negative(float(low)), _non_negative(float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"latency {text!r} is not S or MIN-MAX seconds") from None
    return lambda rng: rng.uniform(low_value, high_value)


def _connections(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of connections >= 1")
    return int(text)


def _non_negative(value: float) -> float:
    if not value >= 0:
        raise ValueError(value)
    return value


def _fault(text: str) -> tuple[str, float]:
    name, sep, rate = text.partition("=")
    if not sep or name not in FAULTS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=RATE, NAME one of the faults")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: RATE must be a number in 0..1") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: RATE must be in 0..1")
    return name, value


_handler: logging.Handler | None = None


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr at the level -v / -q ask for (WARNING by default)."""
    global _handler
    levels = [logging.WARNING, logging.INFO, logging.DEBUG]
    level = logging.ERROR if quiet else levels[min(verbose, 2)]
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(_handler)
    root.setLevel(level)


@contextmanager
def _logging_through(handler: logging.Handler) -> Iterator[None]:
    """Send log records to `handler` instead of the usual one while the block runs."""
    root = logging.getLogger()
    previous = _handler
    if previous is not None:
        root.removeHandler(previous)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        if previous is not None:
            root.addHandler(previous)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
