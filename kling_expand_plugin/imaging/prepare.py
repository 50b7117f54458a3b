"""Fitting an input into the API's input limits: `prepare` scales the decoded image so both
sides reach 300 px (and, optionally, under a pixel cap), plans the expansion, crops or pads it
as the plan says, and encodes it within 10 MB; `prepare_as_sent` takes a JPEG that is a valid
upload as it is without decoding it whole. Every change is recorded, so the result can be
mapped back onto the original.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from dataclasses import dataclass

from PIL import Image

from imgpipe import Item
from kling_expand_plugin.imaging.colour import profile_of
from kling_expand_plugin.imaging.decode import (
    Decoded,
    FitOptions,
    check_size,
    decode,
    quiet_codecs,
    read_input,
)
from kling_expand_plugin.imaging.fill import fill
from kling_expand_plugin.imaging.geometry import Box, Canvas
from kling_expand_plugin.imaging.plan import Plan, plan_expansion
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.imaging.target import PlanError, Target
from kling_expand_plugin.kling import limits

JPEG_QUALITIES = (95, 90, 85, 80, 75, 70)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    """What is sent as the first call's `image`, and how it relates to the original."""

    data: bytes
    format: str
    width: int
    height: int
    scale: float
    """Upload pixels per original pixel."""
    url: str | None = None
    """The item's own URL, sent instead of the bytes when the file is sent unchanged."""
    changes: tuple[str, ...] = ()

    def image_field(self) -> str:
        """The create call's `image`: the URL, or the file as raw base64 (no `data:` prefix)."""
        return self.url or base64.b64encode(self.data).decode("ascii")


def prepare(
    item: Item, target: Target, options: FitOptions | None = None, data: bytes | None = None
) -> tuple[Decoded, Upload, Plan]:
    """The decoded input, the first upload for `item`, and the plan of the calls (`data`: the
    item's file, when already read)."""
    options = options or FitOptions()
    decoded = decode(item, options, data)
    pixel_cap = options.max_upload_pixels
    while True:
        scale = _scale_for(decoded.image.size, target.aspect_policy, pixel_cap)
        content = _scaled_size(decoded.image.size, scale)
        if content[0] * content[1] > options.max_pixels:
            raise FitError(
                item.key,
                f"fitting {decoded.image.width} x {decoded.image.height} would take "
                f"{content[0]} x {content[1]} pixels",
                f"max_pixels = {options.max_pixels}",
            )
        try:
            plan = plan_expansion(*content, target, scale=scale)
        except PlanError as exc:
            raise FitError(item.key, str(exc), "the API's expansion limits") from None
        padded = plan.upload_size
        if padded[0] * padded[1] > options.max_pixels:
            raise FitError(
                item.key,
                f"padding {decoded.image.width} x {decoded.image.height} into the API's aspect "
                f"range would make an upload of {padded[0]} x {padded[1]} pixels",
                f"max_pixels = {options.max_pixels}",
            )
        upload = _build_upload(item, decoded, plan, scale, options.background)
        if upload is not None:
            return decoded, upload, plan
        if min(content) * 0.8 < limits.MIN_SIDE:
            raise FitError(item.key, "cannot be encoded within 10 MB", "an input is at most 10 MB")
        pixel_cap = int(content[0] * content[1] * 0.64)  # 80% per side, the last resort


def prepare_as_sent(
    item: Item, target: Target, options: FitOptions | None = None, data: bytes | None = None
) -> tuple[Upload, Plan] | None:
    """The upload and plan of a JPEG that is sent as it is, without decoding it whole; None
    when the file needs `prepare` (any change to make, or anything in doubt).

    Such a file needs no pixels until its result is stitched: its header says everything the
    plan needs, and decoding it at an eighth of its size (which reads every byte of its
    compressed data, at a fraction of the cost) shows it is whole before anything is paid.
    """
    quiet_codecs()
    options = options or FitOptions()
    data = read_input(item) if data is None else data
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        if (
            image.format != "JPEG"
            or image.mode not in ("RGB", "L")
            or len(data) > limits.MAX_FILE_BYTES
            or getattr(image, "n_frames", 1) > 1
            or image.getexif().get(0x0112) not in (None, 1)
        ):
            return None
        icc = image.info.get("icc_profile")
        if icc and profile_of(icc, []) is not None:  # not sRGB: converted for the upload
            return None
        check_size(item.key, image.size, len(data), options)
        if _scale_for(image.size, target.aspect_policy, options.max_upload_pixels) != 1.0:
            return None
        plan = plan_expansion(*image.size, target, scale=1.0)
        if (
            plan.crop is not None
            or any(plan.pad)
            or image.width * image.height > options.max_pixels
        ):
            return None
        width, height = image.size
        image.draft(image.mode, (max(width // 8, 1), max(height // 8, 1)))
        image.load()
    except Exception as error:  # prepare() says what is wrong, in words
        log.debug("%s: not sent as it is: %s: %s", item.key, type(error).__name__, error)
        return None
    url = str(item.image) if item.is_url else None
    return Upload(data, "JPEG", width, height, 1.0, url), plan


def _scale_for(size: tuple[int, int], policy: str, pixel_cap: int | None) -> float:
    """Upload pixels per original pixel: up so that both sides of the upload reach 300 px once
    its aspect ratio is in range (by padding or cropping, as `policy` says); down under the cap
    where that leaves both sides at 300 px or more."""
    width, height = size
    if policy == "crop":
        short = min(width, height, max(width, height) / limits.MAX_ASPECT)
    else:
        short = min(max(width, height * limits.MIN_ASPECT), max(height, width / limits.MAX_ASPECT))
    least = max(1.0, limits.MIN_SIDE / short)
    if pixel_cap and width * height * least * least > pixel_cap:
        return max(math.sqrt(pixel_cap / (width * height)), limits.MIN_SIDE / short)
    return least


def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    if scale == 1.0:
        return size
    return (max(round(size[0] * scale), 1), max(round(size[1] * scale), 1))


def _build_upload(
    item: Item, decoded: Decoded, plan: Plan, scale: float, background: tuple[int, int, int]
) -> Upload | None:
    """The upload the plan starts from, or None if it cannot be encoded within 10 MB."""
    changes = list(decoded.changes)
    unchanged_geometry = scale == 1.0 and plan.crop is None and not any(plan.pad)
    if unchanged_geometry and decoded.as_sent:
        url = str(item.image) if item.is_url else None
        return Upload(decoded.data, str(decoded.format), *decoded.image.size, scale, url)
    image = decoded.image
    if scale != 1.0:
        size = _scaled_size(image.size, scale)
        verb = "upscaled" if scale > 1 else "downscaled"
        changes.append(f"{verb} {image.width} x {image.height} to {size[0]} x {size[1]}")
        image = image.resize(size, Image.Resampling.LANCZOS)
    if plan.crop is not None:
        changes.append(f"cropped to {plan.crop.as_tuple()} (left, top, right, bottom)")
        image = image.crop(plan.crop.as_tuple())
    if image.mode == "RGBA":
        changes.append(f"flattened transparency onto {background} for the upload")
        image = flatten(image, background)
    if any(plan.pad):
        left, top, right, bottom = plan.pad
        size = (image.width + left + right, image.height + top + bottom)
        canvas = Canvas(*size, Box(left, top, *image.size))
        changes.append(f"padded by {plan.pad} px (left, top, right, bottom) into the aspect range")
        image = fill(image, canvas, seed=0)
    encoded = encode_within_limit(image, lossless=decoded.format not in ("JPEG", "WEBP"))
    if encoded is None:
        return None
    data, format = encoded
    changes.append(f"encoded as {format}")
    return Upload(data, format, *image.size, scale, None, tuple(changes))


def flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """An RGBA image composited onto an opaque background colour."""
    base = Image.new("RGB", image.size, background)
    base.paste(image, mask=image.getchannel("A"))
    return base


def encode_within_limit(image: Image.Image, *, lossless: bool) -> tuple[bytes, str] | None:
    """PNG (when `lossless`) or the best JPEG quality within 10 MB; None if neither fits."""
    # Photos rarely compress 3:1 as PNG: past that, do not spend seconds finding out.
    if lossless and image.width * image.height * len(image.getbands()) <= 3 * limits.MAX_FILE_BYTES:
        data = _save(image, "PNG")
        if len(data) <= limits.MAX_FILE_BYTES:
            return data, "PNG"
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    for quality in JPEG_QUALITIES:
        data = _save(rgb, "JPEG", quality=quality)
        if len(data) <= limits.MAX_FILE_BYTES:
            return data, "JPEG"
    return None


def _save(image: Image.Image, format: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()
