"""What the user asks for: a `Target` (explicit ratios; an aspect ratio with an area, or the
smallest or the largest canvas; or a size in the original's pixels), an anchor (where the
original sits) and what to do with an original outside the API's aspect range; and the parsing
of the forms the options come in ("16:9", "1920x1080", "top-left")."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling import limits

ASPECT_POLICIES = ("pad", "crop", "reject")
ANCHORS = {
    "center": (0.5, 0.5),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "top": (0.5, 0.0),
    "bottom": (0.5, 1.0),
    "top-left": (0.0, 0.0),
    "top-right": (1.0, 0.0),
    "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}
"""Where the original sits: (x, y) fractions, 0 = at the left or top edge, 1 = right or bottom."""

MAX_AREA = "max"


class PlanError(ValueError):
    """The requested expansion cannot be made within the API's limits, or is ill-formed.

    `option` names the stage option at fault, where one is.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Target:
    """What the user asked for: exactly one of `ratios`, `aspect` or `size`, and an anchor.

    `area` goes with `aspect`: a multiple of the original's area, "max" for the largest canvas
    one call allows, or None for the smallest canvas of that aspect that holds the original.
    `size` is (width, height) in the original's pixels.
    """

    ratios: Ratios | None = None
    aspect: float | None = None
    area: float | str | None = None
    size: tuple[int, int] | None = None
    anchor: tuple[float, float] = ANCHORS["center"]
    max_passes: int = 1
    aspect_policy: str = "pad"

    def __post_init__(self) -> None:
        given = [name for name in ("ratios", "aspect", "size") if getattr(self, name) is not None]
        if len(given) != 1:
            raise PlanError(
                "give exactly one of ratios, aspect (with optional area) or size", "aspect"
            )
        if self.area is not None and self.aspect is None:
            raise PlanError("area goes with aspect", "area")
        if isinstance(self.area, str) and self.area != MAX_AREA:
            raise PlanError(f"area {self.area!r} is not a number or {MAX_AREA!r}", "area")
        if isinstance(self.area, int | float) and not 1 <= self.area <= limits.MAX_AREA * 100:
            raise PlanError(f"area {self.area} is below 1 or absurdly large", "area")
        if self.size is not None and min(self.size) < 1:
            raise PlanError(f"size {self.size} must be positive", "size")
        if not all(0 <= fraction <= 1 for fraction in self.anchor):
            raise PlanError(f"anchor {self.anchor} must be fractions from 0 to 1", "anchor")
        if self.max_passes < 1:
            raise PlanError("max_passes must be at least 1", "max_passes")
        if self.aspect_policy not in ASPECT_POLICIES:
            raise PlanError(
                f"aspect_policy {self.aspect_policy!r} is not one of {ASPECT_POLICIES}",
                "aspect_policy",
            )


def parse_aspect(value: str | float | int) -> float:
    """An aspect ratio (width / height) from "16:9", "16/9", "1.78" or a number."""
    text = str(value).strip()
    for separator in (":", "/", "x"):
        if separator in text:
            width, _, height = text.partition(separator)
            try:
                return _positive(float(width) / float(height), value)
            except (ValueError, ZeroDivisionError):
                break
    else:
        try:
            return _positive(float(text), value)
        except ValueError:
            pass
    raise PlanError(
        f'aspect {value!r} is not a ratio: "16:9", "16/9", "16x9" or a number such as 1.78',
        "aspect",
    )


def parse_size(value: str | list[int] | tuple[int, int]) -> tuple[int, int]:
    """A size in pixels from "1920x1080" or [1920, 1080]."""
    if isinstance(value, str):
        width, _, height = value.lower().partition("x")
        try:
            size = (int(width), int(height))
        except ValueError:
            raise PlanError(
                f'size {value!r} is not WIDTHxHEIGHT such as "1920x1080"', "size"
            ) from None
    elif isinstance(value, list | tuple) and len(value) == 2:
        size = (int(value[0]), int(value[1]))
    else:
        raise PlanError(f"size {value!r} is not [width, height]", "size")
    if min(size) < 1:
        raise PlanError(f"size {value!r} must be positive", "size")
    return size


def parse_anchor(value: str | list[float] | tuple[float, float]) -> tuple[float, float]:
    """An anchor from a name ("left", "top-right", ...) or [x, y] fractions."""
    if isinstance(value, str):
        name = value.lower().replace("centre", "center").replace("_", "-").replace(" ", "-")
        if name in ANCHORS:
            return ANCHORS[name]
        raise PlanError(f"anchor {value!r} is not one of {', '.join(ANCHORS)} or [x, y]", "anchor")
    if isinstance(value, list | tuple) and len(value) == 2:
        anchor = (float(value[0]), float(value[1]))
        if all(0 <= fraction <= 1 for fraction in anchor):
            return anchor
    raise PlanError(f"anchor {value!r} is not a name or [x, y] fractions from 0 to 1", "anchor")


def _positive(aspect: float, original: object) -> float:
    if not (math.isfinite(aspect) and aspect > 0):
        raise PlanError(f"aspect {original!r} must be a positive ratio", "aspect")
    return aspect
