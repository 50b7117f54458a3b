"""The `imgpipe` command: run a pipeline config, or list the stages the installed plugins give."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import sys
import textwrap
import time
from typing import Any

from .config import load_config
from .errors import PipelineError
from .item import Item
from .manager import make_plugin_manager
from .registry import StageInfo
from .runner import build_pipeline, check_pipeline, failures_of, run_stages

EXIT_OK, EXIT_ITEM_ERRORS, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("imgpipe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgpipe", description=__doc__)
    _add_global_flags(parser, default=0)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_flags(common, default=argparse.SUPPRESS)  # keeps a -v given before the command
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common], help="run a pipeline config (TOML)")
    run.add_argument("config", help="path of the pipeline config")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="build and check the pipeline and list what it would do; nothing is done or paid",
    )
    check = commands.add_parser("check", parents=[common], help="the same as run --dry-run")
    check.add_argument("config", help="path of the pipeline config")
    commands.add_parser(
        "stages", parents=[common], help="list the stages, their options and their plugins"
    )
    args = parser.parse_args(argv)

    level = (
        logging.ERROR
        if args.quiet
        else [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        pm = make_plugin_manager()
        registry = pm.stages()
        if args.command == "stages":
            for info in registry:
                print(_stage_text(info))
            for plugin, reason in pm.load_errors.items():
                print(f"(skipped plugin {plugin}: {reason})")
            return EXIT_OK
        config = load_config(args.config)
        stages = build_pipeline(registry, config)
        handed_on = check_pipeline(stages)
        if args.command == "check" or args.dry_run:
            _show_plan(handed_on, [stage.stage for stage in config])
            return EXIT_OK
        started, count = time.monotonic(), 0
        try:
            with contextlib.closing(run_stages(stages)) as stream:
                for _ in stream:
                    count += 1
        except PipelineError:
            raise
        except Exception as exc:  # a stage stopped the run: every stage is closed by now
            log.error("the pipeline stopped: %s: %s", type(exc).__name__, exc)
            print(f"imgpipe: stopped after {_count(count, 'item')}: {exc}", file=sys.stderr)
            return EXIT_ITEM_ERRORS
        elapsed = time.monotonic() - started
        failed = len(failures_of(stages))
        print(
            f"{_count(count, 'item')} out of the pipeline in {elapsed:.1f} s; "
            f"{_count(failed, 'item')} failed"
        )
        return EXIT_ITEM_ERRORS if failed else EXIT_OK
    except PipelineError as exc:
        print(f"imgpipe: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("imgpipe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `imgpipe stages | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ITEM_ERRORS


def _add_global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """-v and -q, taken before the command's name or after it."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=default, help="more logging; -vv for debug"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default or False, help="errors only"
    )


def _stage_text(info: StageInfo) -> str:
    """A stage's name, plugin, what its factory's docstring says, and its options."""
    provider = info.distribution or "built in"
    lines = [f"{info.name:<12} {info.plugin} ({provider})"]
    doc = inspect.getdoc(info.factory) or ""
    if doc:
        lines.append("    " + " ".join(doc.split("\n\n")[0].split()))
    parameters = inspect.signature(info.factory).parameters
    options = []
    for name in info.options():
        default = parameters[name].default
        shown = "(required)" if default is inspect.Parameter.empty else f"= {default!r}"
        options.append(f"{name} {shown}")
    text = "options: " + (", ".join(options) or "none")
    lines.append(textwrap.fill(text, 100, initial_indent="    ", subsequent_indent="      "))
    return "\n".join(lines)


def _show_plan(handed_on: list[list[Item] | None], names: list[str]) -> None:
    """What each checked stage would hand on, from the previews the stages offer."""
    for number, (items, name) in enumerate(zip(handed_on, names, strict=True), start=1):
        told = "cannot say in advance" if items is None else _count(len(items), "item")
        print(f"stage #{number} {name}: {told}")
    for item in handed_on[-1] if handed_on and handed_on[-1] else []:
        print(f"  {item.key}")
    print("checked: nothing was done or paid for")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


if __name__ == "__main__":
    sys.exit(main())
