"""Stitching: from the last call's output back to the canvas the user asked for, at the
original's full resolution, with the original's own pixels in their rectangle."""

from __future__ import annotations

import io

from PIL import Image, ImageCms

from .geometry import Box, Canvas
from .plan import Plan
from .prepare import SRGB, Decoded


def canvas_at_original(canvas: Canvas, scale: float, original_size: tuple[int, int]) -> Canvas:
    """`canvas` (upload pixels) at the original's resolution; the box is the original's size."""
    box = Box(round(canvas.box.left / scale), round(canvas.box.top / scale), *original_size)
    width = max(round(canvas.width / scale), box.right)
    height = max(round(canvas.height / scale), box.bottom)
    return Canvas(width, height, box)


def content_of(original: Image.Image, plan: Plan, scale: float) -> Image.Image:
    """The part of the original the plan expands: all of it, unless the plan crops."""
    if plan.crop is None:
        return original
    crop = plan.crop
    left, top = round(crop.left / scale), round(crop.top / scale)
    right = min(round(crop.right / scale), original.width)
    bottom = min(round(crop.bottom / scale), original.height)
    return original.crop((left, top, right, bottom))


def stitch(expanded: Image.Image, plan: Plan, decoded: Decoded, scale: float) -> Image.Image:
    """The user's canvas cut from `expanded`, at the original's resolution, original pasted in.

    `expanded` is the last call's output (or the padded upload when no call was needed); it is
    brought to its nominal size first, since the API does not promise the exact size. The
    original's pixels, alpha included, replace whatever the API returned in their rectangle;
    an original with an ICC profile keeps it, and the generated area is converted into it.
    """
    original = decoded.original
    nominal = (plan.expanded.width, plan.expanded.height)
    if expanded.size != nominal:
        expanded = expanded.resize(nominal, Image.Resampling.LANCZOS)
    cut = expanded.convert("RGB").crop(plan.canvas_in_expanded.as_tuple())
    content = content_of(original, plan, scale)
    target = canvas_at_original(plan.canvas, scale, content.size)
    if cut.size != (target.width, target.height):
        cut = cut.resize((target.width, target.height), Image.Resampling.LANCZOS)
    if decoded.icc_profile is not None:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(decoded.icc_profile))
        converted = ImageCms.profileToProfile(cut, SRGB, profile, outputMode="RGB")
        assert converted is not None
        cut = converted
        cut.info["icc_profile"] = decoded.icc_profile
    if content.mode == "RGBA":
        cut = cut.convert("RGBA")
    cut.paste(content, (target.box.left, target.box.top))
    if plan.output_size is not None:
        cut = cut.resize(plan.output_size, Image.Resampling.LANCZOS)
    return cut
