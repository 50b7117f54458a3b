"""The `imgpipe` command: run a pipeline config, or list the stages the installed plugins give."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

from .errors import PipelineError
from .manager import make_plugin_manager
from .runner import run_pipeline

EXIT_OK, EXIT_ITEM_ERRORS, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("imgpipe")


class _ErrorCounter(logging.Handler):
    """Counts ERROR records: stages log a failed item and go on, and the exit code says so."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


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
        counter = _ErrorCounter()
        logging.getLogger().addHandler(counter)
        started, count = time.monotonic(), 0
        try:
            with contextlib.closing(run_pipeline(registry, args.config)) as stream:
                for _ in stream:
                    count += 1
        except PipelineError:
            raise
        except Exception as exc:  # a stage stopped the run: every stage is closed by now
            log.error("the pipeline stopped: %s: %s", type(exc).__name__, exc)
            print(f"imgpipe: stopped after {count} items: {exc}", file=sys.stderr)
            return EXIT_ITEM_ERRORS
        elapsed = time.monotonic() - started
        print(f"{count} items out of the pipeline in {elapsed:.1f} s; {counter.count} errors")
        return EXIT_ITEM_ERRORS if counter.count else EXIT_OK
    except PipelineError as exc:
        print(f"imgpipe: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("imgpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
