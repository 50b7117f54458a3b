"""Stitching a result back: the original's pixels exact, the seam blended, colours matched."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from imgpipe import Item
from kling_expand_plugin.imaging.decode import decode
from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.imaging.plan import plan_expansion
from kling_expand_plugin.imaging.stitch import generated_mask, stitch
from kling_expand_plugin.imaging.target import Target


def original_and_plan(size=(400, 300)):
    rng = np.random.default_rng(0)
    pixels = rng.integers(60, 200, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    decoded = decode(Item("o.png", _png(image)))
    plan = plan_expansion(*size, Target(ratios=Ratios(0.1, 0.1, 0.25, 0.25)))
    return image, decoded, plan


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def api_result(image: Image.Image, plan, shift: int) -> Image.Image:
    """What an API might return: the original re-rendered `shift` levels brighter, and a
    continuation consistent with that rendering (its edges repeated outwards)."""
    brighter = np.clip(np.asarray(image, dtype=np.int16) + shift, 0, 255).astype(np.uint8)
    box, canvas = plan.expanded.box, plan.expanded
    pad = ((box.top, canvas.height - box.bottom), (box.left, canvas.width - box.right), (0, 0))
    return Image.fromarray(np.pad(brighter, pad, mode="edge"), "RGB")


def test_the_original_is_exact_and_the_result_has_the_canvas_size():
    image, decoded, plan = original_and_plan()
    result, canvas = stitch(api_result(image, plan, 30), plan, decoded, 1.0)
    assert result.size == (canvas.width, canvas.height) == (600, 360)
    assert result.crop(canvas.box.as_tuple()).tobytes() == image.tobytes()


def test_blending_removes_the_step_at_the_seam_and_fades_out():
    image, decoded, plan = original_and_plan()
    expanded = api_result(image, plan, 30)
    hard, canvas = stitch(expanded.copy(), plan, decoded, 1.0, blend=0)
    soft, _ = stitch(expanded.copy(), plan, decoded, 1.0, blend=8)
    box = canvas.box
    row = box.top + 100
    edge = np.asarray(image, dtype=np.int16)[100, 0]
    hard_step = np.asarray(hard, dtype=np.int16)[row, box.left - 1] - edge
    soft_step = np.asarray(soft, dtype=np.int16)[row, box.left - 1] - edge
    assert (hard_step == 30).all() and (np.abs(soft_step) <= 4).all()
    far = np.asarray(soft, dtype=np.int16)[row, box.left - 20]
    assert (far - edge == 30).all()  # beyond the blend, the API's pixels are untouched


def test_colour_match_shifts_the_generated_area_by_the_rendering_error():
    image, decoded, plan = original_and_plan()
    expanded = api_result(image, plan, 30)
    matched, canvas = stitch(expanded, plan, decoded, 1.0, blend=0, match_colour=True)
    generated = np.asarray(matched, dtype=np.int16)[0, 0]
    assert (generated - np.asarray(image, dtype=np.int16)[0, 0] == 0).all()  # the 30 taken off
    assert matched.crop(canvas.box.as_tuple()).tobytes() == image.tobytes()


def test_an_original_with_alpha_keeps_it():
    rgba = Image.new("RGBA", (400, 300), (10, 20, 30, 0))
    rgba.paste((200, 100, 50, 255), (100, 100, 300, 200))
    decoded = decode(Item("logo.png", _png(rgba)))
    plan = plan_expansion(400, 300, Target(aspect=16 / 9))
    expanded = Image.new("RGB", (plan.expanded.width, plan.expanded.height), "white")
    result, canvas = stitch(expanded, plan, decoded, 1.0)
    assert result.mode == "RGBA"
    assert result.crop(canvas.box.as_tuple()).tobytes() == rgba.tobytes()
    assert result.getpixel((0, 0))[3] == 255


def test_the_mask_marks_generated_pixels():
    _, _, plan = original_and_plan()
    mask = generated_mask(plan.canvas)
    box = plan.canvas.box
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((box.left, box.top)) == 0
    assert mask.getpixel((box.right, box.top)) == 255


def test_the_mask_png_is_the_mask():
    from kling_expand_plugin.imaging.geometry import Box, Canvas
    from kling_expand_plugin.imaging.stitch import mask_png

    canvases = (
        Canvas(1001, 37, Box(3, 5, 990, 20)),
        Canvas(9, 9, Box(0, 0, 9, 9)),
        Canvas(40, 900, Box(3, 270, 30, 300)),  # more rows of each kind than are fed at once
    )
    for canvas in canvases:
        written = Image.open(io.BytesIO(mask_png(canvas)))
        assert written.mode == "1" and written.size == (canvas.width, canvas.height)
        assert written.tobytes() == generated_mask(canvas).tobytes()
