"""The local server's fill engine and the seam-quality metric that guards it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kling_expand_plugin.imaging.fill import METHODS, fill
from kling_expand_plugin.imaging.geometry import Box, Canvas, Ratios, canvas_for
from kling_expand_plugin.localserver import fillquality

PHOTOS = sorted((Path(__file__).resolve().parents[1] / "sample_data" / "photos").iterdir())
PHOTO_SIDE = 360
"""Originals are scaled so their longer side is this, to keep the file fast."""


def _sixteen_nine_at_3x(width: int, height: int) -> Ratios:
    """Symmetric ratios that make a 16:9 canvas of 3x the original's area."""
    new_width = math.sqrt(3 * width * height * 16 / 9)
    new_height = new_width * 9 / 16
    side = (new_width / width - 1) / 2
    updown = (new_height / height - 1) / 2
    return Ratios(up=updown, down=updown, left=side, right=side)


LAYOUTS = {
    "16:9 at 3x": _sixteen_nine_at_3x,
    "all four sides": lambda w, h: Ratios(up=0.3, down=0.3, left=0.3, right=0.3),
    "left at 2.0": lambda w, h: Ratios(up=0, down=0, left=2.0, right=0),
    "up and right only": lambda w, h: Ratios(up=0.5, down=0, left=0, right=0.6),
}


def _photo(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    scale = PHOTO_SIDE / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)))


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {path.stem: _photo(path) for path in PHOTOS}


def _flat_fill(original: Image.Image, canvas: Canvas) -> Image.Image:
    mean = np.asarray(original).reshape(-1, 3).mean(axis=0)
    flat = Image.new("RGB", (canvas.width, canvas.height), tuple(int(v) for v in mean))
    flat.paste(original, canvas.box.as_tuple())
    return flat


def test_sample_photos_are_there():
    assert len(PHOTOS) == 4


@pytest.mark.parametrize("method", METHODS)
def test_original_is_pasted_bit_exact_on_a_canvas_of_the_right_size(photos, method):
    original = photos["coffee"]
    canvas = canvas_for(
        original.width, original.height, Ratios(up=0.2, down=0.1, left=0.7, right=0.3)
    )
    result = fill(original, canvas, seed=3, method=method)
    assert result.mode == "RGB"
    assert result.size == (canvas.width, canvas.height)
    assert fillquality.preserved(result, original, canvas.box)


def test_an_original_with_alpha_is_filled_as_rgb():
    rgba = Image.new("RGBA", (320, 300), (10, 200, 30, 0))
    rgba.paste((250, 20, 20, 255), (100, 100, 200, 200))
    canvas = canvas_for(320, 300, Ratios(up=0.5, down=0.5, left=0.5, right=0.5))
    result = fill(rgba, canvas, seed=0)
    assert result.mode == "RGB"
    assert fillquality.preserved(result, rgba.convert("RGB"), canvas.box)


def test_no_expansion_returns_the_original():
    original = Image.new("RGB", (300, 320), (1, 2, 3))
    canvas = canvas_for(300, 320, Ratios(0, 0, 0, 0))
    assert np.array_equal(np.asarray(fill(original, canvas, seed=0)), np.asarray(original))


def test_same_seed_same_image(photos):
    original = photos["chelsea"]
    canvas = canvas_for(
        original.width, original.height, _sixteen_nine_at_3x(original.width, original.height)
    )
    first = fill(original, canvas, seed=42)
    second = fill(original, canvas, seed=42)
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_any_int_is_a_seed():
    original = Image.new("RGB", (300, 300), (90, 120, 150))
    canvas = canvas_for(300, 300, Ratios(0.2, 0.2, 0.2, 0.2))
    for seed in (-1, 0, 2**70):
        assert fill(original, canvas, seed=seed).size == (canvas.width, canvas.height)


def test_different_seeds_differ_visibly(photos):
    for name, original in photos.items():
        canvas = canvas_for(
            original.width, original.height, _sixteen_nine_at_3x(original.width, original.height)
        )
        # compared at 1/8 size, where the seeded grain averages out and only shapes remain
        first = np.asarray(fill(original, canvas, seed=1).reduce(8), np.float32)
        second = np.asarray(fill(original, canvas, seed=2).reduce(8), np.float32)
        difference = np.abs(first - second).mean(axis=2)
        assert difference.mean() > 1.2, name
        assert np.percentile(difference, 95) > 4.0, name


@pytest.mark.parametrize("seed", [7, 8])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mirror_fade_meets_the_quality_guards(photos, layout, seed):
    for name, original in photos.items():
        canvas = canvas_for(
            original.width, original.height, LAYOUTS[layout](original.width, original.height)
        )
        result = fill(original, canvas, seed=seed)
        scores = {
            "seam": fillquality.seam_score(result, canvas.box),
            "streaks": fillquality.streaks(result, canvas.box),
            "texture": fillquality.texture(result, canvas.box),
        }
        context = f"{name}, {layout}: {scores}"
        assert fillquality.preserved(result, original, canvas.box), context
        assert scores["seam"] < 2.5, context
        assert scores["streaks"] < 0.8, context
        assert scores["texture"] > 0.15, context


@pytest.mark.parametrize("layout", LAYOUTS)
def test_metric_catches_a_flat_fill(photos, layout):
    for name, original in photos.items():
        canvas = canvas_for(
            original.width, original.height, LAYOUTS[layout](original.width, original.height)
        )
        flat = _flat_fill(original, canvas)
        assert fillquality.seam_score(flat, canvas.box) > 10, f"{name}, {layout}"
        assert fillquality.texture(flat, canvas.box) < 0.1, f"{name}, {layout}"


def test_metric_catches_edge_repeat_streaks(photos):
    original = photos["rocket"]
    canvas = canvas_for(
        original.width, original.height, _sixteen_nine_at_3x(original.width, original.height)
    )
    box = canvas.box
    pad = ((box.top, canvas.height - box.bottom), (box.left, canvas.width - box.right), (0, 0))
    streaky = Image.fromarray(np.pad(np.asarray(original), pad, mode="edge"))
    assert fillquality.streaks(streaky, box) > 0.8


def test_metric_scores_a_real_photo_boundary_as_seamless(photos):
    original = photos["coffee"]
    box = Box(left=90, top=60, width=180, height=120)
    assert fillquality.streaks(original, box) < 0.5
    assert fillquality.texture(original, box) > 0.7


def test_preserved_notices_one_changed_pixel(photos):
    original = photos["coffee"]
    canvas = canvas_for(
        original.width, original.height, Ratios(up=0.2, down=0.2, left=0.2, right=0.2)
    )
    result = fill(original, canvas, seed=0, method="fast")
    pixels = np.array(result)
    pixels[canvas.box.top + 5, canvas.box.left + 5, 0] ^= 1
    assert not fillquality.preserved(Image.fromarray(pixels), original, canvas.box)


def test_unknown_method_is_refused_with_the_known_ones():
    original = Image.new("RGB", (300, 300))
    canvas = canvas_for(300, 300, Ratios(0.1, 0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match=r"'inpaint'.*mirror-fade.*fast"):
        fill(original, canvas, seed=0, method="inpaint")


def test_wrong_original_size_is_refused():
    canvas = canvas_for(300, 300, Ratios(0.1, 0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="300x300"):
        fill(Image.new("RGB", (301, 300)), canvas, seed=0)
