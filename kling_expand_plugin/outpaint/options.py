"""The `outpaint` stage's options, each written once, as data.

From `OPTIONS` are made: the stage's signature (what the host lists and checks a config
against) and its checks (`check_options`), the `kling-expand` flags (`cli/stage_flags.py`), and
the tests that hold the README's table and the Python API's explicit signatures to it.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from PIL import ImageColor

from imgpipe import OptionError
from kling_expand_plugin.batch.budget import Budget
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.imaging.decode import ANIMATED_POLICIES, DEFAULT_MAX_PIXELS
from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.imaging.output import OUTPUT_FORMATS
from kling_expand_plugin.imaging.target import (
    ANCHORS,
    ASPECT_POLICIES,
    MAX_AREA,
    parse_anchor,
    parse_aspect,
    parse_size,
)
from kling_expand_plugin.kling import limits
from kling_expand_plugin.kling.client import DEFAULT_BASE_URL

ORDERS = ("input", "completed")
ON_ERROR = ("skip", "raise", "passthrough")
HIDDEN = "***"
"""A secret option's value, wherever options are shown."""


@dataclass(frozen=True)
class Flag:
    """How an option is given to `kling-expand`: `--name` (and `short`), in a help section.

    `group` is "target" or "format" (taken by `expand` and `plan`) or "running" (`expand`
    only). `text` reads the flag's text into the option's value (ValueError with the rule);
    None reads it as the option's type says (a bool option is a switch)."""

    group: str
    text: Callable[[str], Any] | None = None
    metavar: str | None = None
    short: str | None = None
    default: Any = None
    """The flag's own default; None leaves the stage's."""


@dataclass(frozen=True)
class Option:
    """One stage option: its name, type, default, allowed values, help and flag.

    A value is checked by `parse` when given (ValueError or TypeError with the rule), else
    by its type: one of `choices`; a whole number (int) or a number (float) within
    `low`..`high`, refused with `refusal` when set; bool takes any value's truth. `secret`
    values are never shown; `python_only` options (objects) cannot come from a config."""

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    refusal: str | None = None
    parse: Callable[[Any], Any] | None = None
    flag: Flag | None = None
    secret: bool = False
    python_only: bool = False

    def check(self, value: Any) -> Any:
        """The value as the stage keeps it; OptionError naming this option and the rule."""
        if value is None and self.default is None:
            return None
        kind = base_type(self.type)
        try:
            if self.parse is not None:
                return self.parse(value)
            if self.choices and value not in self.choices:
                raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}")
            if kind is bool:
                return bool(value)
            if kind in (int, float):
                return _number(value, self.low, self.high, whole=kind is int, refusal=self.refusal)
        except (ValueError, TypeError) as exc:
            raise OptionError(self.name, str(exc)) from None
        return value


def _number(
    value: Any,
    low: float | None,
    high: float | None = None,
    *,
    whole: bool = False,
    refusal: str | None = None,
) -> Any:
    """`value` if it is a number (a whole one when `whole`) within `low`..`high`."""
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{value!r} {refusal or 'is not ' + kind}")
    if (low is not None and value < low) or (high is not None and value > high):
        if refusal:
            raise ValueError(f"{value!r} {refusal}")
        if high is None:
            raise ValueError(f"{value!r} is below {low:g}")
        raise ValueError(f"{value!r} is outside {low:g}..{high:g}")
    return value if whole else float(value)


def base_type(annotation: Any) -> Any:
    """`int` for `int | None`; the annotation itself when it is not "one type or None"."""
    if isinstance(annotation, types.UnionType):
        kinds = [kind for kind in get_args(annotation) if kind is not type(None)]
        return kinds[0] if len(kinds) == 1 else annotation
    return annotation


def _area(value: float | str) -> float | str:
    return value if value == MAX_AREA else _number(value, 1.0, limits.MAX_AREA * 100)


def _ratios(value: list[float] | dict[str, float]) -> Ratios:
    sides = ("up", "down", "left", "right")
    if isinstance(value, dict) and set(value) <= set(sides):
        ratios = Ratios(*(value.get(side, 0.0) for side in sides))
    elif isinstance(value, list) and len(value) == 4:
        ratios = Ratios(*value)
    else:
        raise ValueError("give [up, down, left, right] or a table of those keys")
    problems = ratios.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return ratios


def _prompt(value: Any) -> str:
    if not isinstance(value, str) or len(value) > limits.MAX_PROMPT_CHARS:
        raise ValueError(f"must be text of at most {limits.MAX_PROMPT_CHARS} chars")
    return value


def _endpoint(value: Any) -> str:
    if value != "local" and not str(value).startswith(("http://", "https://")):
        raise ValueError(f'{value!r} is not "local" or an http(s) URL')
    return str(value)


def _ledger(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('give "auto", the path of a SQLite file or a postgresql:// URL')
    return value


def _budget(value: Any) -> float | Budget:
    # A number is one run's ceiling; a Budget object (Python callers, say a cluster's) is
    # shared by every run that is given it.
    return value if isinstance(value, Budget) else _number(value, 0.0)


def _address(value: Any) -> tuple[str, int]:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not HOST:PORT, such as 0.0.0.0:8787")
    return host.strip("[]"), int(port)


def _callback_url(value: Any) -> str:
    if not str(value).startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return str(value)


def _colour(value: str | list[int]) -> tuple[int, int, int]:
    try:
        if isinstance(value, str):
            return ImageColor.getrgb(value)[:3]
        red, green, blue = (int(part) for part in value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not a colour name, #rrggbb or [r, g, b]") from None
    return red, green, blue


def _slots(value: Any) -> Slots:
    if not isinstance(value, Slots):
        raise ValueError("is for Python callers only: a Slots object to share")
    return value


def area_text(text: str) -> float | str:
    """--area: a number or "max"."""
    if text == MAX_AREA:
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number or {MAX_AREA!r}") from None


def _ratios_text(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(f"{text!r} is not UP,DOWN,LEFT,RIGHT such as 0,0,0.5,0.5")
    return values


def _anchor_text(text: str) -> str | list[float]:
    if "," not in text:
        return text
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not a name or X,Y fractions") from None


TARGET, FORMAT, RUNNING = Flag("target"), Flag("format"), Flag("running")

OPTIONS: tuple[Option, ...] = (
    Option(
        "endpoint", str, "local",
        '"local" (default: the embedded local server, free) or a Kling-compatible URL such as '
        f"{DEFAULT_BASE_URL} (credentials from KLING_* variables)",
        parse=_endpoint, flag=Flag("running", default="local"),
    ),
    Option(
        "aspect", str | float | None, None,
        'target aspect ratio: "16:9", "4/3", "16x9" or 1.78', parse=parse_aspect, flag=TARGET,
    ),
    Option(
        "area", float | str | None, None,
        "with --aspect: the canvas area in multiples of the original's, or \"max\"; unset: the "
        "smallest canvas of that aspect",
        parse=_area, flag=Flag("target", text=area_text),
    ),
    Option(
        "size", str | list[int] | None, None, "target size in the original's pixels",
        parse=parse_size, flag=Flag("target", metavar="WxH"),
    ),
    Option(
        "ratios", list[float] | dict[str, float] | None, None, "the four ratios as given",
        parse=_ratios, flag=Flag("target", text=_ratios_text, metavar="UP,DOWN,LEFT,RIGHT"),
    ),
    Option(
        "anchor", str | list[float], "center",
        f"where the original sits: {', '.join(ANCHORS)}, or X,Y fractions (default center)",
        parse=parse_anchor, flag=Flag("target", text=_anchor_text),
    ),
    Option(
        "max_passes", int, 1, "calls allowed per image (default 1)", low=1, high=10,
        flag=TARGET,
    ),
    Option(
        "aspect_policy", str, "pad", "an input outside 1:2.5..2.5:1: pad (default), crop or reject",
        choices=ASPECT_POLICIES, flag=TARGET,
    ),
    Option(
        "n", int, 1, "results per input, 1..9 (default 1)", low=limits.MIN_N, high=limits.MAX_N,
        refusal=f"is not a whole number from {limits.MIN_N} to {limits.MAX_N}",
        flag=Flag("target", short="-n"),
    ),
    Option(
        "prompt", str, "", f"text prompt (at most {limits.MAX_PROMPT_CHARS} characters)",
        parse=_prompt, flag=RUNNING,
    ),
    Option("watermark", bool, False, "also watermark", flag=RUNNING),
    Option("concurrency", int, 4, "account task slots to use (default 4)", flag=RUNNING),
    Option(
        "order", str, "input",
        "input: results in input order; completed: as they finish (the command keeps input "
        "order)",
        choices=ORDERS,
    ),
    Option(
        "on_error", str, "skip",
        "a failed item: skip it, hand it on as it came (passthrough) or raise (the command "
        "passes failures through, or stops with --fail-fast)",
        choices=ON_ERROR,
    ),
    Option(
        "ledger", str, "auto",
        '"auto" (the user data folder\'s SQLite file; temporary for local), a SQLite file, or '
        "a postgresql:// URL",
        parse=_ledger, flag=RUNNING, secret=True,  # a postgresql:// URL may hold a password
    ),
    Option(
        "budget", float | Budget | None, None, "stop creating tasks past this many units",
        parse=_budget, flag=Flag("running", text=float),
    ),
    Option(
        "retry_failed", bool, False, "create again the tasks that failed before (paid again)",
        flag=RUNNING,
    ),
    Option(
        "recreate_lost", bool | None, None,
        "create again the tasks paid for whose results the server no longer has",
        flag=RUNNING,  # None: true for the local server, whose tasks end with a run
    ),
    Option(
        "callback", str | None, None, "receive Kling's callbacks here",
        parse=_address, flag=Flag("running", metavar="HOST:PORT"),
    ),
    Option(
        "callback_url", str | None, None, "the public URL of --callback",
        parse=_callback_url, flag=Flag("running", metavar="URL"),
    ),
    Option(
        "timeout", float, 6 * 3600, "seconds to wait for one task (default 6 h)", low=1.0,
        flag=RUNNING,
    ),
    Option(
        "attempts", int, 5, "tries of each API call and download, the first included (default 5)",
        low=1, high=50, flag=RUNNING,
    ),
    Option(
        "blend", int, 8, "seam blend width in pixels (default 8)", low=0, high=256,
        flag=RUNNING,
    ),
    Option("colour_match", bool, False, "match generated colours", flag=RUNNING),
    Option("animated", str, "first", "animated inputs", choices=ANIMATED_POLICIES, flag=TARGET),
    Option(
        "background", str | list[int], "white", "colour behind transparency (default white)",
        parse=_colour, flag=TARGET,
    ),
    Option(
        "max_pixels", int, DEFAULT_MAX_PIXELS, "refuse inputs with more pixels",
        low=limits.MIN_SIDE**2, flag=TARGET,
    ),
    Option(
        "max_upload_pixels", int | None, None, "downscale uploads above this",
        low=limits.MIN_SIDE**2, flag=TARGET,
    ),
    Option(
        "local_latency", float, 1.0, "seconds a local task takes (default 1)", low=0.0,
        flag=RUNNING,
    ),
    Option(
        "format", str, "auto",
        "results as png, jpeg or webp; auto (default) keeps the input's own format when it is "
        "JPEG, PNG or WebP, else PNG",
        choices=OUTPUT_FORMATS, flag=FORMAT,
    ),
    Option(
        "quality", int, 92, "JPEG and WebP quality, 1..100 (default 92)", low=1, high=100,
        flag=FORMAT,
    ),
    Option(
        "png_compression", int, 1, "PNG zlib level, 0..9 (default 1: fast)", low=0, high=9,
        flag=FORMAT,
    ),
    Option(
        "slots", Slots | None, None,
        "a Slots object shared by stages (say a cluster's); None: a pool of `concurrency` "
        "slots per run",
        parse=_slots, python_only=True,
    ),
)  # fmt: skip
BY_NAME = {option.name: option for option in OPTIONS}


SIGNATURE = inspect.Signature(
    [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=type_)
        for name, type_, default in ((o.name, o.type, o.default) for o in OPTIONS)
    ]
)
"""The stage's keyword-only signature, made from `OPTIONS`."""


def check_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option, checked: those given, the rest at their defaults. TypeError for a name
    that is not an option (as a Python call would), OptionError naming the option and the
    rule for a bad value or a bad pair."""
    bound = SIGNATURE.bind(**given)
    bound.apply_defaults()
    values = {name: BY_NAME[name].check(value) for name, value in bound.arguments.items()}
    if values["concurrency"] < values["n"]:
        concurrency, n = values["concurrency"], values["n"]
        raise OptionError("concurrency", f"{concurrency!r} slots cannot run one task of n={n}")
    if values["callback_url"] is not None and values["callback"] is None:
        raise OptionError("callback_url", "goes with callback (the address to listen on)")
    if values["recreate_lost"] is None:  # nothing is paid on the embedded server
        values["recreate_lost"] = values["endpoint"] == "local"
    return values


def shown(given: Mapping[str, Any]) -> str:
    """Options as `name=value, ...` for a repr, secret values hidden."""
    return ", ".join(
        f"{name}={HIDDEN if BY_NAME[name].secret else repr(value)}" for name, value in given.items()
    )
