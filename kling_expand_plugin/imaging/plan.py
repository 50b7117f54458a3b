"""Planning the expansion: from what the user wants to the ratios of each API call.

Everything here is in upload pixels: the original after it was scaled to meet the API's limits.
From what the user asked for (`target.Target`), the plan says what to send and what comes back:

- `crop` and `pad`: what is done to the content before the first upload. An image outside the
  API's 1:2.5..2.5:1 aspect range is padded, inside the bands the target adds anyway when it
  adds enough; otherwise the `aspect_policy` pads anyway (the extra is cut off the result),
  crops, or refuses.
- `passes`: the ratios of each call; a target beyond one call's limits takes several calls
  (up to `max_passes`), each within the limits, the original's place kept by the anchor.
- `expanded`: the last call's nominal output, with the first upload's place in it.
- `canvas`: what the user gets, with the content's place in it; `canvas_in_expanded` is where
  it is cut from the expanded image.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from kling_expand_plugin.imaging.geometry import Box, Canvas, Ratios, canvas_for
from kling_expand_plugin.imaging.target import MAX_AREA, PlanError, Target
from kling_expand_plugin.kling import limits

RATIO_DECIMALS = 4


@dataclass(frozen=True)
class Plan:
    """The calls to make for one image, and how their output maps onto what the user gets."""

    content: tuple[int, int]
    crop: Box | None
    pad: tuple[int, int, int, int]
    passes: tuple[Ratios, ...]
    expanded: Canvas
    canvas: Canvas
    output_size: tuple[int, int] | None = None

    @property
    def upload_size(self) -> tuple[int, int]:
        """The first call's input: the (cropped) content with its padding."""
        return (self.expanded.box.width, self.expanded.box.height)

    @property
    def is_empty(self) -> bool:
        """Whether no call is needed: the content already has the target's shape."""
        return not self.passes

    @property
    def canvas_in_expanded(self) -> Box:
        """Where the user's canvas lies in the last call's (nominal) output."""
        left = self.expanded.box.left + self.pad[0] - self.canvas.box.left
        top = self.expanded.box.top + self.pad[1] - self.canvas.box.top
        return Box(left, top, self.canvas.width, self.canvas.height)


def ratios_for_aspect(width: int, height: int, *, aspect: float, area: float) -> Ratios:
    """Centred ratios for a canvas of `aspect` and `area` times the original's area.

    This is the API documentation's worked example: 100 x 100, area 3 and 16:9 give
    0.1495, 0.1495, 0.6547, 0.6547 (up, down, left, right).
    """
    target_width, target_height = _size_for_area(width, height, aspect, area)
    vertical = (target_height - height) / 2 / height
    horizontal = (target_width - width) / 2 / width
    return _rounded(vertical, vertical, horizontal, horizontal)


def _size_for_area(
    width: int, height: int, aspect: float, area: float, scale: float = 1.0
) -> tuple[float, float]:
    target_height = math.sqrt(area * width * height / aspect)
    target_width = target_height * aspect
    if target_width < width - 0.5 or target_height < height - 0.5:
        raise PlanError(
            f"a {aspect:.4g} canvas of {area:g}x the area of {_size(width, height, scale)} "
            "would have to crop the original; raise area, or leave it unset for the smallest "
            "canvas"
        )
    return max(target_width, width), max(target_height, height)


def _smallest_size(width: int, height: int, aspect: float) -> tuple[float, float]:
    if width / height < aspect:
        return height * aspect, height
    return width, width / aspect


def largest_size(
    width: int, height: int, aspect: float, anchor: tuple[float, float], scale: float = 1.0
) -> tuple[float, float]:
    """The largest canvas of `aspect` one call can make around a `width` x `height` image."""
    # One side's band is at most 2x the original's side; the anchor decides which band is larger.
    grow_x = 1 + limits.MAX_SIDE_RATIO / max(anchor[0], 1 - anchor[0])
    grow_y = 1 + limits.MAX_SIDE_RATIO / max(anchor[1], 1 - anchor[1])
    target_height = min(
        math.sqrt(limits.MAX_AREA * width * height / aspect),
        height * grow_y,
        width * grow_x / aspect,
    )
    smallest = _smallest_size(width, height, aspect)
    if target_height < smallest[1]:
        raise PlanError(
            f"no {aspect:.4g} canvas holds {_size(width, height, scale)} within one call's limits"
        )
    return target_height * aspect, target_height


def _rounded(up: float, down: float, left: float, right: float) -> Ratios:
    """Rounded to the documentation's 4 places; floored instead where rounding breaks a limit."""
    rounded = Ratios(*(round(value, RATIO_DECIMALS) for value in (up, down, left, right)))
    if not rounded.problems():
        return rounded
    scale = 10**RATIO_DECIMALS
    return Ratios(*(math.floor(value * scale) / scale for value in (up, down, left, right)))


def plan_expansion(width: int, height: int, target: Target, *, scale: float = 1.0) -> Plan:
    """The plan for content of `width` x `height` upload pixels, `scale` per original pixel."""
    crop = None
    canvas, output_size = _desired_canvas(width, height, target, scale)
    pad = _padding(width, height, canvas)
    if pad is None:
        if target.aspect_policy == "reject":
            raise PlanError(
                f"aspect ratio {_size(width, height, scale)} is outside 1:2.5..2.5:1 and the "
                'target does not expand it enough to pad it (aspect_policy = "reject")'
            )
        if target.aspect_policy == "crop":
            crop = _crop_to_limits(width, height, target.anchor)
            width, height = crop.width, crop.height
            canvas, output_size = _desired_canvas(width, height, target, scale)
            pad = (0, 0, 0, 0)
        else:
            pad = _padding_beyond(width, height, target.anchor)
    upload = (width + pad[0] + pad[2], height + pad[1] + pad[3])
    # The region every call together must produce: the canvas, and the padding where it sticks out.
    left = max(canvas.box.left - pad[0], 0)
    top = max(canvas.box.top - pad[1], 0)
    right = max(canvas.width - canvas.box.right - pad[2], 0)
    bottom = max(canvas.height - canvas.box.bottom - pad[3], 0)
    bands = (left, top, right, bottom)
    passes: tuple[Ratios, ...]
    if target.ratios and crop is None and not any(pad) and not target.ratios.problems():
        passes = (target.ratios,) if any(bands) else ()  # explicit ratios are sent as given
    else:
        try:
            passes = _passes(upload, bands, target.max_passes)
        except _TooFar as far:
            hint = "" if target.max_passes > 1 else "; allow more calls with option 'max_passes'"
            raise PlanError(
                f"growing {_size(width, height, scale)} to "
                f"{_size(canvas.width, canvas.height, scale)} needs more than "
                f"{target.max_passes} call{'' if target.max_passes == 1 else 's'}: {far}{hint}"
            ) from None
    expanded = Canvas(upload[0] + left + right, upload[1] + top + bottom, Box(left, top, *upload))
    return Plan((width, height), crop, pad, passes, expanded, canvas, output_size)


def _desired_canvas(
    width: int, height: int, target: Target, scale: float
) -> tuple[Canvas, tuple[int, int] | None]:
    """The canvas the user asked for, with the content placed by the anchor; and a final size."""
    if target.ratios is not None:
        return canvas_for(width, height, target.ratios), None
    output_size = None
    if target.size is not None:
        wanted = (target.size[0] * scale, target.size[1] * scale)
        if wanted[0] >= width and wanted[1] >= height:
            size = wanted
        else:  # the original is larger than the size asked for: expand, then scale down
            size = _smallest_size(width, height, wanted[0] / wanted[1])
            output_size = target.size
    else:
        assert target.aspect is not None
        if target.area is None:
            size = _smallest_size(width, height, target.aspect)
        elif target.area == MAX_AREA:
            size = largest_size(width, height, target.aspect, target.anchor, scale)
        else:
            assert isinstance(target.area, int | float)
            size = _size_for_area(width, height, target.aspect, float(target.area), scale)
    # "max" rounds down, so that whole pixels do not push the area over the limit.
    to_pixels = math.floor if target.area == MAX_AREA else round
    canvas_width = max(int(to_pixels(size[0])), width)
    canvas_height = max(int(to_pixels(size[1])), height)
    left = round(target.anchor[0] * (canvas_width - width))
    top = round(target.anchor[1] * (canvas_height - height))
    return Canvas(canvas_width, canvas_height, Box(left, top, width, height)), output_size


def _padding(width: int, height: int, canvas: Canvas) -> tuple[int, int, int, int] | None:
    """Padding that brings the content into the API's aspect range inside the canvas's bands.

    (0, 0, 0, 0) when none is needed, None when the bands are too narrow to hold it.
    """
    need_x, need_y = _padding_needed(width, height)
    box = canvas.box
    bands_x = (box.left, canvas.width - box.right)
    bands_y = (box.top, canvas.height - box.bottom)
    if need_x > sum(bands_x) or need_y > sum(bands_y):
        return None
    left = _share(need_x, bands_x)
    top = _share(need_y, bands_y)
    return (left, top, need_x - left, need_y - top)


def _padding_needed(width: int, height: int) -> tuple[int, int]:
    """Pixels to add across and down so that width / height lies in 1:2.5..2.5:1."""
    if width / height > limits.MAX_ASPECT:
        return 0, math.ceil(width / limits.MAX_ASPECT) - height
    if width / height < limits.MIN_ASPECT:
        return math.ceil(height * limits.MIN_ASPECT) - width, 0
    return 0, 0


def _share(need: int, bands: tuple[int, int]) -> int:
    """How much of `need` goes into the first band, in proportion to the bands' sizes."""
    return round(need * bands[0] / sum(bands)) if need else 0


def _padding_beyond(
    width: int, height: int, anchor: tuple[float, float]
) -> tuple[int, int, int, int]:
    need_x, need_y = _padding_needed(width, height)
    left, top = round(need_x * anchor[0]), round(need_y * anchor[1])
    return (left, top, need_x - left, need_y - top)


def _crop_to_limits(width: int, height: int, anchor: tuple[float, float]) -> Box:
    if width / height > limits.MAX_ASPECT:
        new_width = math.floor(height * limits.MAX_ASPECT)
        return Box(round(anchor[0] * (width - new_width)), 0, new_width, height)
    new_height = math.floor(width / limits.MIN_ASPECT)
    return Box(0, round(anchor[1] * (height - new_height)), width, new_height)


def _passes(
    upload: tuple[int, int], bands: tuple[int, int, int, int], max_passes: int
) -> tuple[Ratios, ...]:
    """The ratios of each call that grows `upload` by `bands` (left, top, right, bottom)."""
    if not any(bands):
        return ()
    left, top, right, bottom = bands
    final = (upload[0] + left + right, upload[1] + top + bottom)
    share_x = left / (left + right) if left + right else 0.5
    share_y = top / (top + bottom) if top + bottom else 0.5
    first_problem = ""
    for count in range(1, max_passes + 1):
        sizes = [
            (
                round(upload[0] * (final[0] / upload[0]) ** (step / count)),
                round(upload[1] * (final[1] / upload[1]) ** (step / count)),
            )
            for step in range(count + 1)
        ]
        passes = []
        for (w0, h0), (w1, h1) in itertools.pairwise(sizes):
            grow_x, grow_y = w1 - w0, h1 - h0
            band_left, band_top = round(grow_x * share_x), round(grow_y * share_y)
            passes.append(
                _rounded(
                    band_top / h0,
                    (grow_y - band_top) / h0,
                    band_left / w0,
                    (grow_x - band_left) / w0,
                )
            )
        problems = [p for ratios in passes for p in ratios.problems()]
        problems += [
            "an intermediate image would be outside the 1:2.5..2.5:1 aspect range"
            for w, h in sizes[1:-1]
            if not limits.MIN_ASPECT <= w / h <= limits.MAX_ASPECT
        ]
        if not problems:
            return tuple(passes)
        first_problem = first_problem or "; ".join(dict.fromkeys(problems))
    raise _TooFar(first_problem)


class _TooFar(Exception):
    """No split of the growth into at most max_passes calls keeps every call within limits."""


def _size(width: int, height: int, scale: float) -> str:
    """A size in upload pixels, as the original's own pixels for messages."""
    return f"{max(round(width / scale), 1)} x {max(round(height / scale), 1)}"
