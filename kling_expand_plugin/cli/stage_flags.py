"""The stage's options as `kling-expand` flags, made from the option schema, and read back."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kling_expand_plugin.cli.common import UsageError, flag
from kling_expand_plugin.outpaint.options import OPTIONS, Option, base_type

GROUPS = {
    "target": (
        "target (one of --aspect, --size or --ratios)",
        "Where the original sits is --anchor; a target beyond one call's limits takes up to "
        "--max-passes calls.",
    ),
    "format": ("format", None),
    "running": ("running", None),
}


def add_stage_flags(
    parser: argparse.ArgumentParser, groups: tuple[str, ...]
) -> dict[str, argparse._ArgumentGroup]:
    """A flag for each option of the schema whose flag is in one of `groups` (help sections,
    returned by name so that a command can add its own flags to them)."""
    sections = {name: parser.add_argument_group(*GROUPS[name]) for name in groups}
    for option in OPTIONS:
        if option.flag is not None and option.flag.group in groups:
            _add_flag(sections[option.flag.group], option)
    return sections


def _add_flag(section: argparse._ArgumentGroup, option: Option) -> None:
    assert option.flag is not None
    names = [flag(option.name)] + ([option.flag.short] if option.flag.short else [])
    kind = base_type(option.type)
    if kind is bool:
        section.add_argument(*names, action="store_true", default=None, help=option.help)
    elif option.choices:
        section.add_argument(*names, choices=option.choices, help=option.help)
    else:
        section.add_argument(
            *names,
            type=from_text(option.flag.text or (kind if kind in (int, float) else str)),
            metavar=option.flag.metavar,
            default=option.flag.default,
            help=option.help,
        )


def from_text(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse's own message for int and float; the rule's words for the schema's readers."""
    if read in (str, int, float):
        return read

    def convert(text: str) -> Any:
        try:
            return read(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def stage_options(args: argparse.Namespace, groups: tuple[str, ...]) -> dict[str, Any]:
    """The stage's options from the flags of `groups` given; unset flags keep the stage's
    defaults."""
    options = {
        option.name: getattr(args, option.name)
        for option in OPTIONS
        if option.flag is not None
        and option.flag.group in groups
        and getattr(args, option.name) is not None
    }
    if sum(name in options for name in ("aspect", "size", "ratios")) != 1:
        raise UsageError("give one target: --aspect (with --area), --size or --ratios")
    if "area" in options and "aspect" not in options:
        raise UsageError("--area goes with --aspect")
    if "n" in options and "concurrency" not in options:
        options["concurrency"] = max(4, options["n"])  # room for one task, whatever n is
    return options
