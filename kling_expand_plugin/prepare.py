"""Preparing an item for upload: decide it is an image, and fit it into the API's input limits.

`decode` reads any image Pillow can, safely, into 8-bit RGB or RGBA with its orientation
applied; `prepare` scales it so both sides reach 300 px (and, optionally, under a pixel cap),
plans the expansion, crops or pads it as the plan says, and encodes it within 10 MB. Every
change is recorded, so the result can be mapped back onto the original.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from hooks import Item

from . import limits
from .geometry import Box, Canvas
from .localserver.fill import fill
from .plan import Plan, PlanError, Target, plan_expansion

JPEG_QUALITIES = (95, 90, 85, 80, 75, 70)
ANIMATED_POLICIES = ("first", "reject")
DEFAULT_MAX_PIXELS = 100_000_000
RGB_LIKE_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "I;16", "I;16B", "I;16L", "I", "F")
SRGB = ImageCms.createProfile("sRGB")


class FitError(ValueError):
    """An item that cannot be made into a valid upload: names the item and the rule it broke."""

    def __init__(self, key: str, problem: str, rule: str) -> None:
        super().__init__(f"item {key!r}: {problem} (rule: {rule})")
        self.key = key
        self.problem = problem
        self.rule = rule


@dataclass(frozen=True)
class FitOptions:
    """How to treat inputs: the stage's fitting options."""

    animated: str = "first"
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_upload_pixels: int | None = None


@dataclass
class Decoded:
    """An input decoded to 8-bit and upright: `image` in sRGB for the upload; `original`, the
    pixels the result keeps, in the colour space of `icc_profile` when the file had one."""

    image: Image.Image
    original: Image.Image
    data: bytes
    format: str | None
    changes: list[str] = field(default_factory=list)
    icc_profile: bytes | None = None

    @property
    def as_sent(self) -> bool:
        """Whether the file itself is a valid upload, if its geometry needs no change."""
        return (
            self.format in limits.FORMATS
            and not self.changes
            and self.image.mode in ("RGB", "L")
            and self.icc_profile is None
            and len(self.data) <= limits.MAX_FILE_BYTES
        )


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
    item: Item, target: Target, options: FitOptions | None = None
) -> tuple[Decoded, Upload, Plan]:
    """The decoded input, the first upload for `item`, and the plan of the calls."""
    options = options or FitOptions()
    decoded = decode(item, options)
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
                f"padding {content[0]} x {content[1]} into the API's aspect range would take "
                f"{padded[0]} x {padded[1]} pixels",
                f"max_pixels = {options.max_pixels}",
            )
        upload = _build_upload(item, decoded, plan, scale, options.background)
        if upload is not None:
            return decoded, upload, plan
        if min(content) * 0.8 < limits.MIN_SIDE:
            raise FitError(item.key, "cannot be encoded within 10 MB", "an input is at most 10 MB")
        pixel_cap = int(content[0] * content[1] * 0.64)  # 80% per side, the last resort


def decode(item: Item, options: FitOptions | None = None) -> Decoded:
    """The item's image, fully decoded to 8-bit RGB/RGBA and upright; FitError if it is not one."""
    options = options or FitOptions()
    data = item.read_bytes()
    if not data:
        raise FitError(item.key, "the file is empty", "an input must be an image")
    try:
        with warnings.catch_warnings():
            # max_pixels below is the limit; Pillow's own (at twice its warning) stays a backstop.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.width * image.height > options.max_pixels:
                raise FitError(
                    item.key,
                    f"{image.width} x {image.height} is more pixels than max_pixels allows",
                    f"decompression-bomb limit of {options.max_pixels} pixels",
                )
            source_format = image.format
            changes = []
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                if options.animated == "reject":
                    raise FitError(item.key, "the image is animated", 'animated = "reject"')
                changes.append(f"took the first of {frames} frames")
            image.load()
    except FitError:
        raise
    except UnidentifiedImageError:
        raise FitError(
            item.key, "not an image Pillow can read", "an input must be an image"
        ) from None
    except Image.DecompressionBombError as exc:
        raise FitError(item.key, f"too many pixels: {exc}", "decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FitError(
            item.key, f"the image is corrupt or truncated: {exc}", "a complete image file"
        ) from None
    if image.width < 1 or image.height < 1:
        raise FitError(item.key, "the image has no pixels", "an input must be an image")
    icc = image.info.get("icc_profile")
    orientation = image.getexif().get(0x0112)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        changes.append(f"applied EXIF orientation {orientation}")
    profile = _profile(icc, changes) if icc and not _is_srgb(icc) else None
    if profile is not None and image.mode not in RGB_LIKE_MODES:
        # CMYK, Lab and the like: into sRGB through their profile; the output cannot keep it.
        converted = ImageCms.profileToProfile(image, profile, SRGB, outputMode="RGB")
        assert converted is not None
        changes.append(f"converted {image.mode} to sRGB with its ICC profile")
        image, profile = converted, None
    original = _to_8bit(image, changes)
    upload_image = original
    if profile is not None and original.mode in ("RGB", "RGBA"):
        converted = ImageCms.profileToProfile(original, profile, SRGB, outputMode=original.mode)
        assert converted is not None
        changes.append("converted from its ICC profile to sRGB for the upload")
        upload_image = converted
    else:
        icc = None
    return Decoded(upload_image, original, data, source_format, changes, icc)


def _profile(icc: bytes, changes: list[str]) -> ImageCms.ImageCmsProfile | None:
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, ValueError):
        changes.append("ignored an unreadable ICC profile")
        return None


def _to_8bit(image: Image.Image, changes: list[str]) -> Image.Image:
    """8-bit RGB or L, or RGBA where the image has transparency; colours left as they are."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 1.0 if mode == "F" and array.max(initial=0) <= 1.0 else 65535.0
        if mode == "I" and array.max(initial=0) <= 255:
            peak = 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        changes.append(f"converted {mode} to 8-bit")
        return Image.fromarray(array, "L")
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    wanted = "RGBA" if has_alpha else "RGB"
    if mode == "L" and not has_alpha:
        return image
    if mode != wanted:
        image = image.convert(wanted)
        if mode not in ("RGB", "RGBA"):
            changes.append(f"converted {mode} to {wanted}")
    if wanted == "RGBA" and image.getchannel("A").getextrema()[0] == 255:  # opaque everywhere
        image = image.convert("RGB")
    return image


def _is_srgb(icc: bytes) -> bool:
    try:
        description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except (ImageCms.PyCMSError, OSError):
        return False
    return "srgb" in description.lower()


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
