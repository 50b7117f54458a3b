"""Stitching: from the last call's output back to the canvas the user asked for, at the
original's full resolution, with the original's own pixels in their rectangle."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms, ImageStat

from kling_expand_plugin.imaging.colour import SRGB
from kling_expand_plugin.imaging.decode import Decoded
from kling_expand_plugin.imaging.geometry import Box, Canvas
from kling_expand_plugin.imaging.plan import Plan


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


def stitch(
    expanded: Image.Image,
    plan: Plan,
    decoded: Decoded,
    scale: float,
    *,
    blend: int = 8,
    match_colour: bool = False,
) -> tuple[Image.Image, Canvas]:
    """The user's canvas cut from `expanded`, at the original's resolution, original pasted in.

    `expanded` is the last call's output (or the padded upload when no call was needed); it is
    brought to its nominal size first, since the API does not promise the exact size. With
    `match_colour`, the generated area's colours are shifted so that the API's rendering of the
    original matches the original. Within `blend` pixels of the original, the generated area is
    corrected by the difference between the original and the API's rendering of its edge, so
    that no seam shows. Then the original's pixels, alpha included, replace whatever the API
    returned in their rectangle; an original with an ICC profile keeps it, and the generated
    area is converted into it. Returns the image and its canvas (size and original's box).

    To hold one canvas-sized image rather than three, `expanded` itself becomes the result
    when it is already the canvas (RGB, nothing to cut or scale): pass a copy to keep it.
    """
    # One canvas-sized image at a time where possible: a 48 MP canvas is 144 MB per copy.
    nominal = (plan.expanded.width, plan.expanded.height)
    if expanded.size != nominal:
        expanded = expanded.resize(nominal, Image.Resampling.LANCZOS)
    if expanded.mode != "RGB":
        expanded = expanded.convert("RGB")
    region = plan.canvas_in_expanded.as_tuple()
    cut = expanded if region == (0, 0, *expanded.size) else expanded.crop(region)
    del expanded
    content = content_of(decoded.original, plan, scale)
    target = canvas_at_original(plan.canvas, scale, content.size)
    if cut.size != (target.width, target.height):
        cut = cut.resize((target.width, target.height), Image.Resampling.LANCZOS)
    cut.load()
    if match_colour:
        cut = _match_colour(cut, target.box, content_of(decoded.image, plan, scale))
    if decoded.icc_profile is not None:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(decoded.icc_profile))
        ImageCms.profileToProfile(cut, SRGB, profile, inPlace=True)
    if blend > 0:
        cut = _blend_seam(cut, content, target.box, blend)
    if content.mode == "RGBA":
        cut = cut.convert("RGBA")
    cut.paste(content, (target.box.left, target.box.top))
    if decoded.icc_profile is not None:
        cut.info["icc_profile"] = decoded.icc_profile
    if plan.output_size is not None:
        factor_x = plan.output_size[0] / target.width
        factor_y = plan.output_size[1] / target.height
        cut = cut.resize(plan.output_size, Image.Resampling.LANCZOS)
        box = target.box
        target = Canvas(
            *plan.output_size,
            Box(
                round(box.left * factor_x),
                round(box.top * factor_y),
                round(box.width * factor_x),
                round(box.height * factor_y),
            ),
        )
    return cut, target


def generated_mask(canvas: Canvas) -> Image.Image:
    """A bilevel image of the canvas (mode "1", a third as costly to encode as grey): 255 where
    pixels were generated, 0 where the original is."""
    mask = Image.new("1", (canvas.width, canvas.height), 255)
    mask.paste(0, canvas.box.as_tuple())
    return mask


MASK_ROWS_AT_ONCE = 256


def mask_png(canvas: Canvas) -> bytes:
    """`generated_mask(canvas)` as a PNG, written directly: its rows are of two kinds, so this
    takes milliseconds where encoding the image takes a tenth of a second at 48 MP."""
    width, height, box = canvas.width, canvas.height, canvas.box
    row = Image.new("1", (width, 1), 255)
    full = b"\0" + row.tobytes()  # filter type 0, then the packed bits
    row.paste(0, (box.left, 0, box.right, 1))
    middle = b"\0" + row.tobytes()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    # Runs of one byte: run-length matching is 3x faster than zlib's default, and smaller. Fed
    # a few hundred rows at a time, not as one 6 MB buffer of fresh pages.
    deflate = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    parts = [
        deflate.compress(kind * min(MASK_ROWS_AT_ONCE, count - start))
        for kind, count in ((full, box.top), (middle, box.height), (full, height - box.bottom))
        for start in range(0, count, MASK_ROWS_AT_ONCE)
    ]
    compressed = b"".join(parts) + deflate.flush()
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        _chunk(kind, data)
        for kind, data in ((b"IHDR", header), (b"IDAT", compressed), (b"IEND", b""))
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _match_colour(cut: Image.Image, box: Box, reference: Image.Image) -> Image.Image:
    """Shift each channel by the mean error of the API's rendering of the original (sRGB)."""
    rendered = ImageStat.Stat(cut.crop(box.as_tuple())).mean
    wanted = ImageStat.Stat(reference.convert("RGB")).mean
    table = [
        min(255, max(0, round(value + wanted[band] - rendered[band])))
        for band in range(3)
        for value in range(256)
    ]
    return cut.point(table)


def _blend_seam(cut: Image.Image, content: Image.Image, box: Box, width: int) -> Image.Image:
    """Carry the difference between the original's edge and the API's rendering of it
    outwards, fading to nothing over `width` pixels.

    Only the ring of `width` pixels around the box changes, and each of its pixels takes the
    difference at the nearest pixel of the box's border, so the work is four thin strips, each
    read and written back on its own (`cut` is changed in place and returned).
    """
    original = content if content.mode == "RGB" else content.convert("RGB")
    top, left = max(box.top - width, 0), max(box.left - width, 0)
    bottom = min(box.bottom + width, cut.height)
    right = min(box.right + width, cut.width)
    strips = (
        (top, box.top, left, right),
        (box.bottom, bottom, left, right),
        (box.top, box.bottom, left, box.left),
        (box.top, box.bottom, box.right, right),
    )
    for row0, row1, col0, col1 in strips:
        if row1 <= row0 or col1 <= col0:
            continue
        rows = np.arange(row0, row1)[:, None]
        cols = np.arange(col0, col1)[None, :]
        near_rows = np.clip(rows, box.top, box.bottom - 1)
        near_cols = np.clip(cols, box.left, box.right - 1)
        # The border pixels these strips take their difference from, in both images.
        edge_box = (
            int(near_cols.min()),
            int(near_rows.min()),
            int(near_cols.max()) + 1,
            int(near_rows.max()) + 1,
        )
        rendered = np.asarray(cut.crop(edge_box), dtype=np.float32)
        inside = (edge_box[0] - box.left, edge_box[1] - box.top)
        edge = np.asarray(
            original.crop((inside[0], inside[1], inside[0] + rendered.shape[1],
                           inside[1] + rendered.shape[0])),
            dtype=np.float32,
        )  # fmt: skip
        at = (near_rows - edge_box[1], near_cols - edge_box[0])
        difference = edge[at] - rendered[at]
        dy = np.maximum(np.maximum(box.top - rows, rows - (box.bottom - 1)), 0)
        dx = np.maximum(np.maximum(box.left - cols, cols - (box.right - 1)), 0)
        weight = np.clip(1.0 - np.hypot(dx, dy) / (width + 1), 0.0, 1.0)[..., None]
        strip = np.asarray(cut.crop((col0, row0, col1, row1)), dtype=np.float32)
        blended = (np.clip(strip + difference * weight, 0, 255) + 0.5).astype(np.uint8)
        cut.paste(Image.fromarray(blended, "RGB"), (col0, row0))
    return cut
