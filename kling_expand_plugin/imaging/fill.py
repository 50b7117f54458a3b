"""Filling the expanded area around an original on the CPU, with numpy and Pillow only.

"mirror-fade" is the method docs/local-fill.md recommends: the canvas is padded twice, by
mirroring the original and by repeating its edge pixels; the two are mixed with a weight
exp(-d / 64) that favours the mirror near the original (d: distance in pixels to the original's
rectangle); the mix is blurred with a Gaussian whose sigma grows with d (d / 2, at most 64), and
the original is pasted back last, bit-exact. The seed warps the padding by a smooth random
field whose amplitude grows with d, so that each seed gives a different but equally plausible
background, and draws grain that gives back the noise the blur removed (at the original's own
noise level, within `GRAIN_RANGE`). "fast" repeats the edge pixels at 1/8 resolution: a cheap
engine for benchmarks and load tests.

An original with alpha is filled and returned as RGB: its alpha channel is dropped.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from kling_expand_plugin.imaging.geometry import Box, Canvas

METHODS = ("mirror-fade", "fast")

FADE = 64.0
"""Mirror weight exp(-d / FADE): the mirror dominates near the original, the edge repeat far."""

SIGMA_PER_PX = 0.5
MAX_SIGMA = 64.0
"""Blur sigma at distance d: min(d * SIGMA_PER_PX, MAX_SIGMA)."""

LEVELS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""Blur sigmas computed; each pixel interpolates linearly between the two around its sigma."""

LOW_RES_SIGMA = 4.0
"""A level is blurred at the resolution (halved repeatedly) where its sigma is about this."""

WARP = 0.15
"""Largest displacement of the seeded warp, as a fraction of the original's mean side."""

WARP_CELL = 0.4
"""Size of the warp's random features, as a fraction of the original's mean side."""

GRAIN_RANGE = (1.0, 4.0)
"""Bounds of the seeded grain's standard deviation far from the original, in 8-bit levels;
within them it matches the original's own noise."""

FAST_FACTOR = 8
"""The "fast" method works at 1 / FAST_FACTOR resolution."""

STRIP_PIXELS = 1 << 19
"""Full-size float work is done in strips of rows of about this many pixels, to bound memory."""


def fill(
    original: Image.Image, canvas: Canvas, *, seed: int, method: str = "mirror-fade"
) -> Image.Image:
    """The canvas with `original` at `canvas.box`, bit-exact, and the rest filled."""
    if method not in METHODS:
        raise ValueError(f"unknown fill method {method!r}; known methods: {', '.join(METHODS)}")
    rgb = original.convert("RGB")
    if rgb.size != (canvas.box.width, canvas.box.height):
        raise ValueError(
            f"original is {rgb.size[0]}x{rgb.size[1]} but the canvas box is "
            f"{canvas.box.width}x{canvas.box.height}"
        )
    filled = _fast(rgb, canvas) if method == "fast" else _mirror_fade(rgb, canvas, seed)
    filled.paste(rgb, canvas.box.as_tuple())
    return filled


def _fast(rgb: Image.Image, canvas: Canvas) -> Image.Image:
    """Edge repeat at reduced resolution, scaled up to the canvas."""
    box = canvas.box
    small = np.asarray(rgb.reduce(FAST_FACTOR))
    pads = [
        math.ceil(box.top / FAST_FACTOR),
        math.ceil((canvas.height - box.bottom) / FAST_FACTOR),
        math.ceil(box.left / FAST_FACTOR),
        math.ceil((canvas.width - box.right) / FAST_FACTOR),
    ]
    padded = Image.fromarray(
        np.pad(small, ((pads[0], pads[1]), (pads[2], pads[3]), (0, 0)), "edge")
    )
    origin_x = pads[2] - box.left / FAST_FACTOR
    origin_y = pads[0] - box.top / FAST_FACTOR
    return padded.resize(
        (canvas.width, canvas.height),
        Image.Resampling.BILINEAR,
        box=(
            origin_x,
            origin_y,
            origin_x + canvas.width / FAST_FACTOR,
            origin_y + canvas.height / FAST_FACTOR,
        ),
    )


def _mirror_fade(rgb: Image.Image, canvas: Canvas, seed: int) -> Image.Image:
    """Mirror and edge repeat mixed by distance, progressively blurred, with seeded variation.

    Full-size float work is done in strips of rows, so memory stays a few bytes per pixel.
    """
    rng = np.random.default_rng(seed % 2**64)  # any int, negative ones too
    pyramid = _pyramid(_mixed_padding(np.asarray(rgb), canvas, rng))
    grain_sigma = float(np.clip(_noise_level(rgb), *GRAIN_RANGE))
    out = Image.new("RGB", (canvas.width, canvas.height))
    for top, bottom in _strips(canvas.width, canvas.height):
        dist = _distance(canvas, top, bottom)
        blurred = _progressive_blur(pyramid, dist, canvas.box, top)
        grain = rng.standard_normal(dist.shape, dtype=np.float32)
        grain *= grain_sigma * _lost_noise(dist * SIGMA_PER_PX)
        strip = np.clip(blurred + grain[..., None] + 0.5, 0, 255).astype(np.uint8)
        out.paste(Image.fromarray(strip), (0, top))
    return out


def _strips(width: int, height: int) -> list[tuple[int, int]]:
    """(top, bottom) row ranges that split a `width` x `height` image into strips."""
    rows = max(STRIP_PIXELS // max(width, 1), 1)
    return [(top, min(top + rows, height)) for top in range(0, height, rows)]


def _lost_noise(sigma: np.ndarray) -> np.ndarray:
    """The fraction of white noise's standard deviation that a Gaussian blur of `sigma` removes.

    A blur keeps 1 / (4 pi sigma^2) of the noise's variance (for sigma above about 0.5 px), so
    adding grain of this fraction gives back the original's noise level: none on the seam.
    """
    kept = 1 / (4 * np.pi * np.maximum(sigma, 1e-3) ** 2)
    return np.sqrt(np.clip(1 - kept, 0, 1))


def _noise_level(rgb: Image.Image) -> float:
    """The standard deviation of the image's fine noise, estimated on luminance (Immerkaer 1996)."""
    lum = np.asarray(rgb.convert("L"))
    height, width = lum.shape
    if min(height, width) < 3:
        return 0.0
    total = 0.0
    for top, bottom in _strips(width, height - 2):
        rows = lum[top : bottom + 2].astype(np.float32)
        laplacian = (
            rows[:-2, :-2]
            + rows[:-2, 2:]
            + rows[2:, :-2]
            + rows[2:, 2:]
            - 2 * (rows[1:-1, :-2] + rows[1:-1, 2:] + rows[:-2, 1:-1] + rows[2:, 1:-1])
            + 4 * rows[1:-1, 1:-1]
        )
        total += float(np.abs(laplacian).sum())
    return math.sqrt(math.pi / 2) * total / (6 * (height - 2) * (width - 2))


def _axis_distance(start: int, size: int, length: int) -> np.ndarray:
    """For each coordinate along a canvas axis, its distance in pixels to [start, start + size)."""
    rel = np.arange(length, dtype=np.float32) - start
    return np.maximum(np.maximum(-rel, rel - (size - 1)), 0)


def _distance(canvas: Canvas, top: int, bottom: int) -> np.ndarray:
    """Euclidean distance of canvas rows top..bottom-1 to the original's rectangle (0 inside)."""
    box = canvas.box
    dx = _axis_distance(box.left, box.width, canvas.width)
    dy = _axis_distance(box.top, box.height, canvas.height)[top:bottom]
    return np.hypot(dx[None, :], dy[:, None])


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    """Indices mirrored into 0..size-1 the way numpy's "symmetric" padding does, repeatedly."""
    period = np.mod(index, 2 * size)
    return np.where(period < size, period, 2 * size - 1 - period)


class _SmoothNoise:
    """A random field of unit standard deviation whose features are about `cell` pixels wide."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, cell: float) -> None:
        grid = rng.standard_normal((math.ceil(height / cell) + 4, math.ceil(width / cell) + 4))
        self.grid = Image.fromarray(grid.astype(np.float32))
        self.width, self.cell = width, cell
        # bicubic interpolation lowers the variance between grid points; measure it finely
        sample = self.grid.resize(
            (self.grid.width * 8, self.grid.height * 8), Image.Resampling.BICUBIC
        )
        self.scale = 1 / max(float(np.asarray(sample).std()), 1e-6)

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """The field on the canvas rows top..bottom-1."""
        box = (1, 1 + top / self.cell, 1 + self.width / self.cell, 1 + bottom / self.cell)
        field = self.grid.resize((self.width, bottom - top), Image.Resampling.BICUBIC, box=box)
        return np.asarray(field) * self.scale


def _mixed_padding(src: np.ndarray, canvas: Canvas, rng: np.random.Generator) -> Image.Image:
    """The canvas padded by mirror and by edge repeat, mixed by exp(-d / FADE), seeded warp."""
    box = canvas.box
    mean_side = (box.width + box.height) / 2
    cell = max(WARP_CELL * mean_side, 8.0)
    warp_x = _SmoothNoise(rng, canvas.width, canvas.height, cell)
    warp_y = _SmoothNoise(rng, canvas.width, canvas.height, cell)
    cols = np.arange(canvas.width, dtype=np.float32) - box.left
    mixed = Image.new("RGB", (canvas.width, canvas.height))
    for top, bottom in _strips(canvas.width, canvas.height):
        dist = _distance(canvas, top, bottom)
        # the warp starts flat at the seam (quadratic in d) and saturates far away
        amplitude = WARP * mean_side * (1 - np.exp(-dist / FADE)) ** 2
        rows = np.arange(top, bottom, dtype=np.float32)[:, None] - box.top
        x = np.rint(cols[None, :] + amplitude * warp_x.rows(top, bottom)).astype(np.intp)
        y = np.rint(rows + amplitude * warp_y.rows(top, bottom)).astype(np.intp)
        mirror = src[_reflect(y, box.height), _reflect(x, box.width)].astype(np.float32)
        edge = src[np.clip(y, 0, box.height - 1), np.clip(x, 0, box.width - 1)].astype(np.float32)
        weight = np.exp(-dist / FADE)[..., None]
        strip = (edge + weight * (mirror - edge) + 0.5).astype(np.uint8)
        mixed.paste(Image.fromarray(strip), (0, top))
    return mixed


def _ring(box: Box, reach: float, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Rectangles (x0, y0, x1, y1) covering the canvas within `reach` px of `box`, minus `box`."""
    r = math.ceil(reach)
    left, top = max(box.left - r, 0), max(box.top - r, 0)
    right, bottom = min(box.right + r, width), min(box.bottom + r, height)
    rects = [
        (left, top, right, box.top),
        (left, box.bottom, right, bottom),
        (left, box.top, box.left, box.bottom),
        (box.right, box.top, right, box.bottom),
    ]
    return [(x0, y0, x1, y1) for x0, y0, x1, y1 in rects if x1 > x0 and y1 > y0]


def _level_weight(sigma: np.ndarray, k: int) -> np.ndarray:
    """How much blur level `k` contributes at each pixel: a tent over the neighbouring levels."""
    level = LEVELS[k]
    if k > 0:
        lower = LEVELS[k - 1]
        rising = (sigma - lower) / (level - lower)
    else:
        rising = np.ones_like(sigma)
    if k + 1 < len(LEVELS):
        upper = LEVELS[k + 1]
        falling = (upper - sigma) / (upper - level)
    else:
        falling = np.ones_like(sigma)
    return np.clip(np.minimum(rising, falling), 0, 1)


def _pyramid(mixed: Image.Image) -> dict[int, Image.Image]:
    """`mixed` box-downsampled by every factor (a power of two) that some blur level uses."""
    pyramid = {1: mixed}
    for level in LEVELS:
        factor = _level_factor(level)
        while factor not in pyramid:
            finest = max(pyramid)
            pyramid[finest * 2] = pyramid[finest].reduce(2)
    return pyramid


def _level_factor(level: float) -> int:
    """The downsampling factor (a power of two) at which blur `level` is computed."""
    factor = 1
    while level / (factor * 2) >= LOW_RES_SIGMA:
        factor *= 2
    return factor


def _progressive_blur(
    pyramid: dict[int, Image.Image], dist: np.ndarray, box: Box, top: int
) -> np.ndarray:
    """Float RGB of a strip of canvas rows (from `top`) blurred with sigma growing with `dist`.

    The box itself is left 0. One blur level is held at a time and added into the result with
    its per-pixel weight. Each level is blurred only around the pixels that use it, the strong
    levels on a box-downsampled copy that is scaled back up bilinearly.
    """
    width, height = pyramid[1].size
    bottom = top + dist.shape[0]
    out = np.zeros((*dist.shape, 3), np.float32)
    for k, level in enumerate(LEVELS):
        factor = _level_factor(level)
        # pixels beyond the next level's sigma give this level no weight
        reach = LEVELS[k + 1] / SIGMA_PER_PX if k + 1 < len(LEVELS) else max(width, height)
        for x0, y0, x1, y1 in _ring(box, reach, width, height):
            y0, y1 = max(y0, top), min(y1, bottom)
            if y1 <= y0:
                continue
            part = _blurred_part(pyramid[factor], factor, level, (x0, y0, x1, y1))
            sigma = np.minimum(dist[y0 - top : y1 - top, x0:x1] * SIGMA_PER_PX, MAX_SIGMA)
            weighted = _level_weight(sigma, k)[..., None] * np.asarray(part, np.float32)
            out[y0 - top : y1 - top, x0:x1] += weighted
    return out


def _blurred_part(
    small: Image.Image, factor: int, sigma: float, rect: tuple[int, int, int, int]
) -> Image.Image:
    """Canvas rectangle `rect` of `small` (the canvas reduced by `factor`) blurred by `sigma`."""
    x0, y0, x1, y1 = rect
    context = math.ceil(3 * sigma) + 2  # full-size pixels the blur reaches
    region = (
        max((x0 - context) // factor, 0),
        max((y0 - context) // factor, 0),
        min(math.ceil((x1 + context) / factor), small.width),
        min(math.ceil((y1 + context) / factor), small.height),
    )
    around = small.crop(region)
    if sigma > 0:
        around = around.filter(ImageFilter.GaussianBlur(sigma / factor))
    left, top = x0 / factor - region[0], y0 / factor - region[1]
    if factor == 1:
        return around.crop((int(left), int(top), int(left) + x1 - x0, int(top) + y1 - y0))
    right, bottom = x1 / factor - region[0], y1 / factor - region[1]
    return around.resize(
        (x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=(left, top, right, bottom)
    )
