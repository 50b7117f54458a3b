"""The `imgpipe` command: run a pipeline config, or list the stages the installed plugins give."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

from .config import load_config
from .errors import PipelineError
from .manager import make_plugin_manager
from .runner import build_pipeline, check_pipeline, failures_of, run_stages

EXIT_OK, EXIT_ITEM_ERRORS, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("imgpipe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgpipe", description=__doc__)
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging; -vv for debug"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a pipeline config (TOML)")
    run.add_argument("config", help="path of the pipeline config")
    commands.add_parser("stages", help="list the stages and the plugins that provide them")
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
                provider = info.distribution or "built in"
                print(f"{info.name:<12} {info.plugin} ({provider})")
            for plugin, reason in pm.load_errors.items():
                print(f"(skipped plugin {plugin}: {reason})")
            return EXIT_OK
        stages = build_pipeline(registry, load_config(args.config))
        check_pipeline(stages)
        started, count = time.monotonic(), 0
        try:
            with contextlib.closing(run_stages(stages)) as stream:
                for _ in stream:
                    count += 1
        except PipelineError:
            raise
        except Exception as exc:  # a stage stopped the run: every stage is closed by now
            log.error("the pipeline stopped: %s: %s", type(exc).__name__, exc)
            print(f"imgpipe: stopped after {count} items: {exc}", file=sys.stderr)
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


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


if __name__ == "__main__":
    sys.exit(main())
