"""Weight-free quality scores for a filled (outpainted) image, as docs/local-fill.md defines.

Every score looks at the seams between the original's rectangle and the fill, on luminance.
Each extended side is turned so that its seam runs horizontally with the fill above it, and only
the stretch of the seam along the original is scored. A side scores only if its band is at least
`MIN_BAND` pixels deep; with no such side, the scores are the neutral 1.0 (seam), 0.0 (streaks)
and 1.0 (texture).

"Gradient energy" here is the mean absolute difference of neighbouring pixels, pooled over the
extended sides: a few strong edges do not drown the rest, and on this measure the calibration
points of local-fill.md hold (a flat fill's texture about 0, real photo boundaries' texture
above 0.7 and streaks under 0.5). The seam score is the worst over sides and scales.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from kling_expand_plugin.imaging.geometry import Box

SEAM_SCALES = (1, 2, 4, 8, 16)
"""Box-downsampling factors at which the seam score looks for a seam."""

SEAM_ROWS = 8
"""Rows (after downsampling) taken on each side of the seam for the seam score."""

SEAM_RUN = 8
"""Columns (after downsampling) averaged along the seam, so that random texture cancels."""

BAND = 24
"""Depth in pixels of the bands on either side of the seam for the streak and texture scores."""

MIN_BAND = 3
"""A side with a band (or, per scale, a number of rows) shallower than this is not scored."""

_EPS = 1e-6


def preserved(result: Image.Image, original: Image.Image, box: Box) -> bool:
    """True when the original's rectangle in `result` equals `original` exactly (in RGB)."""
    inside = np.asarray(result.convert("RGB").crop(box.as_tuple()))
    return np.array_equal(inside, np.asarray(original.convert("RGB")))


def seam_score(result: Image.Image, box: Box) -> float:
    """How much the seam line stands out from its parallel neighbours: about 1 or less is none.

    Per side and scale: differences across the seam direction, averaged over runs of
    `SEAM_RUN` along it, on the seam line over the median of the same on the parallel lines.
    """
    scores = [_side_seam(side, depth) for side, depth in _sides(_luminance(result), box)]
    return max((score for score in scores if score is not None), default=1.0)


def streaks(result: Image.Image, box: Box) -> float:
    """|log| of the across/along gradient ratio outside the seams over the same inside: 0 is best.

    Gradients are pooled over all the extended sides.
    """
    bands = _bands(_luminance(result), box)
    if bands is None:
        return 0.0
    (out_across, out_along), (in_across, in_along) = bands
    return abs(float(np.log((out_across / out_along) / (in_across / in_along))))


def texture(result: Image.Image, box: Box) -> float:
    """Gradient energy in the bands outside the seams over the bands inside: 1 is as detailed.

    Gradients are pooled over all the extended sides.
    """
    bands = _bands(_luminance(result), box)
    if bands is None:
        return 1.0
    (out_across, out_along), (in_across, in_along) = bands
    return float((out_across + out_along) / (in_across + in_along))


def _luminance(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _sides(lum: np.ndarray, box: Box) -> Iterator[tuple[np.ndarray, int]]:
    """Each extended side as (array with the fill on top, depth of the fill in rows)."""
    height, width = lum.shape
    along_x = lum[:, box.left : box.right]
    along_y = lum[box.top : box.bottom, :].T
    candidates = (
        (along_x[: box.bottom], box.top),
        (along_x[box.top :][::-1], height - box.bottom),
        (along_y[: box.right], box.left),
        (along_y[box.left :][::-1], width - box.right),
    )
    for side, depth in candidates:
        if depth >= MIN_BAND:
            yield side, depth


def _side_seam(side: np.ndarray, depth: int) -> float | None:
    """The seam score of one side: the worst over the scales deep and long enough to score."""
    inside_depth = side.shape[0] - depth
    scores = []
    for scale in SEAM_SCALES:
        rows_out = min(SEAM_ROWS, depth // scale)
        rows_in = min(SEAM_ROWS, inside_depth // scale)
        columns = side.shape[1] // scale
        runs = columns // SEAM_RUN
        if rows_out < MIN_BAND or rows_in < MIN_BAND or runs < 1:
            continue
        band = side[depth - rows_out * scale : depth + rows_in * scale, : columns * scale]
        rows = rows_out + rows_in
        small = band.reshape(rows, scale, columns, scale).mean(axis=(1, 3))
        across = np.diff(small, axis=0)[:, : runs * SEAM_RUN]
        per_line = np.abs(across.reshape(rows - 1, runs, SEAM_RUN).mean(axis=2)).mean(axis=1)
        seam_line = rows_out - 1
        neighbours = np.delete(per_line, seam_line)
        scores.append(float(per_line[seam_line] / max(float(np.median(neighbours)), _EPS)))
    return max(scores, default=None)


def _bands(lum: np.ndarray, box: Box) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Gradient energy (across, along the seam) in the bands outside and inside, pooled.

    None when no side has a band `MIN_BAND` pixels deep.
    """
    sums = np.zeros((2, 2))
    counts = np.zeros((2, 2))
    for side, depth in _sides(lum, box):
        rows = min(BAND, depth, side.shape[0] - depth)
        if rows < MIN_BAND or side.shape[1] < MIN_BAND:
            continue
        for i, band in enumerate((side[depth - rows : depth], side[depth : depth + rows])):
            for j, gradient in enumerate((np.diff(band, axis=0), np.diff(band, axis=1))):
                sums[i, j] += np.abs(gradient).sum()
                counts[i, j] += gradient.size
    if not counts.all():
        return None
    energy = sums / counts + _EPS
    return (energy[0, 0], energy[0, 1]), (energy[1, 0], energy[1, 1])
