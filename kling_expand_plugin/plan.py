"""Planning the expansion: from what the user wants (an aspect ratio, an area) to four ratios."""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import limits
from .geometry import Canvas, Ratios, canvas_for

RATIO_DECIMALS = 4


class PlanError(ValueError):
    """The requested expansion cannot be made within the API's limits."""


@dataclass(frozen=True)
class Plan:
    """The ratios to send and the canvas they make at the upload's resolution."""

    ratios: Ratios
    canvas: Canvas

    @property
    def is_empty(self) -> bool:
        """Whether nothing is added on any side (the image already has the target shape)."""
        return self.canvas.width == self.canvas.box.width and (
            self.canvas.height == self.canvas.box.height
        )


def parse_aspect(value: str | float | int) -> float:
    """An aspect ratio (width / height) from "16:9", "16/9", "1.78" or a number."""
    text = str(value).strip()
    for separator in (":", "/", "x"):
        if separator in text:
            width, _, height = text.partition(separator)
            try:
                aspect = float(width) / float(height)
            except (ValueError, ZeroDivisionError):
                break
            return _positive(aspect, value)
    try:
        return _positive(float(text), value)
    except ValueError:
        pass
    raise PlanError(f'aspect {value!r} is not a ratio such as "16:9" or 1.78')


def _positive(aspect: float, original: object) -> float:
    if not (math.isfinite(aspect) and aspect > 0):
        raise PlanError(f"aspect {original!r} must be a positive ratio")
    return aspect


def ratios_for_aspect(width: int, height: int, *, aspect: float, area: float) -> Ratios:
    """Centred ratios for a canvas of `aspect` and `area` times the original's area.

    This is the API documentation's worked example: 100 x 100, area 3 and 16:9 give
    0.1495, 0.1495, 0.6547, 0.6547 (up, down, left, right).
    """
    target_height = math.sqrt(area * width * height / aspect)
    target_width = target_height * aspect
    vertical = (target_height - height) / 2 / height
    horizontal = (target_width - width) / 2 / width
    if vertical < 0 or horizontal < 0:
        raise PlanError(
            f"a {aspect:.4g} canvas of {area:g}x the area of {width} x {height} would have to "
            "crop the original; raise area, or leave it unset for the smallest canvas"
        )
    return _rounded(vertical, vertical, horizontal, horizontal)


def smallest_ratios_for_aspect(width: int, height: int, *, aspect: float) -> Ratios:
    """Centred ratios for the smallest canvas of `aspect` that holds the original."""
    if width / height < aspect:
        horizontal = (height * aspect - width) / 2 / width
        return _rounded(0.0, 0.0, horizontal, horizontal)
    vertical = (width / aspect - height) / 2 / height
    return _rounded(vertical, vertical, 0.0, 0.0)


def _rounded(up: float, down: float, left: float, right: float) -> Ratios:
    """Rounded to the documentation's 4 places; floored instead where rounding breaks a limit."""
    rounded = Ratios(*(round(value, RATIO_DECIMALS) for value in (up, down, left, right)))
    if rounded.area <= limits.MAX_AREA + limits.AREA_TOLERANCE:
        return rounded
    scale = 10**RATIO_DECIMALS
    return Ratios(*(math.floor(value * scale) / scale for value in (up, down, left, right)))


def plan_expansion(
    width: int,
    height: int,
    *,
    aspect: float | None = None,
    area: float | None = None,
    ratios: Ratios | None = None,
) -> Plan:
    """The plan for a `width` x `height` upload: explicit `ratios`, or `aspect` (and `area`)."""
    if ratios is None:
        if aspect is None:
            raise PlanError("give either ratios, or aspect (and optionally area)")
        if area is None:
            ratios = smallest_ratios_for_aspect(width, height, aspect=aspect)
        else:
            ratios = ratios_for_aspect(width, height, aspect=aspect, area=area)
    problems = ratios.problems()
    if problems:
        raise PlanError(f"{'; '.join(problems)} (the API's limits for one call)")
    return Plan(ratios, canvas_for(width, height, ratios))
