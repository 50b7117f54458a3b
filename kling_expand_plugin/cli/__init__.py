"""The `kling-expand` command: the parser and `main`; each sub-command has its module."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from imgpipe import ConfigError, OptionError
from kling_expand_plugin.cli.common import (
    EXAMPLES,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Unreachable,
    UsageError,
    add_global_flags,
    flag,
    in_flags,
    setup_logging,
)
from kling_expand_plugin.cli.doctor import add_doctor
from kling_expand_plugin.cli.expand import add_expand
from kling_expand_plugin.cli.plan import add_plan, add_ratios
from kling_expand_plugin.cli.serve import add_serve
from kling_expand_plugin.cli.tasks import add_tasks
from kling_expand_plugin.imaging.target import PlanError
from kling_expand_plugin.kling.errors import CredentialsError, KlingError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command_parser: argparse.ArgumentParser = args.parser
    if unknown:
        sys.exit(_usage_error(command_parser, _unknown_flags(command_parser, unknown), usage=True))
    setup_logging(args.verbose, args.quiet)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except OptionError as error:  # a stage option: say it as the flag the user typed
        command_parser.error(f"{flag(error.option)}: {error.message}")
    except (UsageError, ConfigError, CredentialsError, PlanError) as error:
        command_parser.error(in_flags(str(error)))
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
    add_global_flags(parser, default=0)
    commands: argparse._SubParsersAction[argparse.ArgumentParser]
    commands = parser.add_subparsers(  # type: ignore[assignment]
        dest="command", required=True, metavar="COMMAND"
    )
    common = argparse.ArgumentParser(add_help=False)
    add_global_flags(common, default=argparse.SUPPRESS)  # keeps a -v given before the command
    add_expand(commands, common)
    add_plan(commands, common)
    add_ratios(commands, common)
    add_tasks(commands, common)
    add_doctor(commands, common)
    add_serve(commands, common)
    return parser
