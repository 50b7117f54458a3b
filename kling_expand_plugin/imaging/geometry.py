"""Expansion ratios and the canvas they make: the one place that turns ratios into pixels.

The planner, the local server's fill and the stitching all use `canvas_for`, so they agree on
every pixel: a band of `ratio * side` pixels, rounded half up, is added on each side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kling_expand_plugin.kling import limits


@dataclass(frozen=True)
class Ratios:
    """The four expansion ratios: up/down in multiples of the height, left/right of the width."""

    up: float
    down: float
    left: float
    right: float

    @property
    def area(self) -> float:
        """The new canvas's area in multiples of the original's."""
        return (1 + self.up + self.down) * (1 + self.left + self.right)

    def problems(self) -> list[str]:
        """What breaks the API's rules, one sentence each; empty when the ratios are valid."""
        found = []
        for name, value in self.as_dict().items():
            if not (isinstance(value, int | float) and math.isfinite(value)):
                found.append(f"{name} must be a number")
            elif not 0 <= value <= limits.MAX_SIDE_RATIO:
                found.append(f"{name} = {value} is outside 0..{limits.MAX_SIDE_RATIO:g}")
        if not found and self.area > limits.MAX_AREA + limits.AREA_TOLERANCE:
            found.append(
                f"(1 + up + down) * (1 + left + right) = {self.area:.4f} exceeds "
                f"{limits.MAX_AREA:g}"
            )
        return found

    def as_dict(self) -> dict[str, float]:
        """The ratios under the API's field names."""
        return {
            "up_expansion_ratio": self.up,
            "down_expansion_ratio": self.down,
            "left_expansion_ratio": self.left,
            "right_expansion_ratio": self.right,
        }


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: where the original lies in the canvas."""

    left: int
    top: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def bottom(self) -> int:
        return self.top + self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), as Pillow's crop and paste take it."""
        return (self.left, self.top, self.right, self.bottom)


@dataclass(frozen=True)
class Canvas:
    """The expanded image's size and the original's place in it."""

    width: int
    height: int
    box: Box


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def canvas_for(width: int, height: int, ratios: Ratios) -> Canvas:
    """The canvas that `ratios` make around a `width` x `height` original."""
    left = _round_half_up(width * ratios.left)
    right = _round_half_up(width * ratios.right)
    top = _round_half_up(height * ratios.up)
    bottom = _round_half_up(height * ratios.down)
    return Canvas(width + left + right, height + top + bottom, Box(left, top, width, height))
