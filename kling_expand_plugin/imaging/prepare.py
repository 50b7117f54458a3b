"""Preparing an item for upload: decide it is an image, and fit it into the API's input limits.

`decode` reads any image Pillow can, safely, into 8-bit RGB or RGBA with its orientation
applied, in one guarded step: whatever the file, it is decoded or refused with a FitError that
says why in words, and codec chatter goes to the debug log, not stderr. `prepare` scales it so
both sides reach 300 px (and, optionally, under a pixel cap), plans the expansion, crops or pads
it as the plan says, and encodes it within 10 MB. Every change is recorded, so the result can be
mapped back onto the original.
"""

from __future__ import annotations

import base64
import ctypes
import io
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import (
    EpsImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    ImageOps,
    PngImagePlugin,
    UnidentifiedImageError,
)

from imgpipe import FetchError, Item
from kling_expand_plugin.imaging.fill import fill
from kling_expand_plugin.imaging.geometry import Box, Canvas
from kling_expand_plugin.imaging.plan import Plan, PlanError, Target, plan_expansion
from kling_expand_plugin.kling import limits

JPEG_QUALITIES = (95, 90, 85, 80, 75, 70)
ANIMATED_POLICIES = ("first", "reject")
DEFAULT_MAX_PIXELS = 100_000_000
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
GREY_MODES = ("1", "L", "LA", "La", *HIGH_DEPTH_MODES)
RGB_LIKE_MODES = ("RGB", "RGBA", "P", "PA", *GREY_MODES)
SRGB = ImageCms.createProfile("sRGB")
PIXELS_PER_BYTE = 20_000
"""Past FREE_PIXELS, a file may claim this many pixels per byte it has: several times what the
best-compressing codecs reach on real pictures (PNG's deflate tops out near 1,032:1, so about
8,000 one-bit pixels a byte; a blank fax page in CCITT G4, some 14,000)."""
FREE_PIXELS = 1_000_000
MIN_LEVELS = 8
"""High-depth pixels whose values would span fewer 8-bit levels than this are stretched."""
COMPLETE = "a complete image file"
DECODABLE = "an input must be an image Pillow can decode"
UNIFORM = "an input must be a picture, not one flat colour"
UNREADABLE = {
    b"%PDF-": "PDF",
    b"<svg": "SVG",
    b"ftypheic": "HEIC",
    b"ftypheix": "HEIC",
    b"ftypmif1": "HEIF",
    b"ftypmsf1": "HEIF",
}
"""Signatures (in a file's first 256 bytes) of common formats Pillow itself cannot read."""

log = logging.getLogger(__name__)


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
    item: Item, target: Target, options: FitOptions | None = None
) -> tuple[Upload, Plan] | None:
    """The upload and plan of a JPEG that is sent as it is, without decoding it whole; None
    when the file needs `prepare` (any change to make, or anything in doubt).

    Such a file needs no pixels until its result is stitched: its header says everything the
    plan needs, and decoding it at an eighth of its size (which reads every byte of its
    compressed data, at a fraction of the cost) shows it is whole before anything is paid.
    """
    options = options or FitOptions()
    data = _read(item)
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
        if icc and _profile(icc, []) is not None:  # not sRGB: converted for the upload
            return None
        _check_size(item.key, image.size, len(data), options)
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


def decode(item: Item, options: FitOptions | None = None) -> Decoded:
    """The item's image, fully decoded to 8-bit RGB/RGBA and upright; FitError if it is not one.

    One guarded step: whatever Pillow, its codecs or the colour management raise becomes a
    FitError saying what is wrong in words (the library's own text goes to the debug log)."""
    options = options or FitOptions()
    data = _read(item)
    format = None
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        format = image.format
        missing = _missing_decoder(format)
        if missing is not None:
            raise FitError(item.key, *missing)
        _check_size(item.key, image.size, len(data), options)
        changes = []
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            if options.animated == "reject":
                raise FitError(item.key, "the image is animated", 'animated = "reject"')
            changes.append(f"took the first of {frames} frames")
        image.load()
        return _to_decoded(item.key, image, data, format, changes)
    except FitError:
        raise
    except Exception as error:
        log.debug("decoding %s failed: %s: %s", item.key, type(error).__name__, error)
        problem, rule = _refusal(error, format or _looks_like(data))
        raise FitError(item.key, problem, rule) from None


def _read(item: Item) -> bytes:
    try:
        data = item.read_bytes()
    except FetchError as error:
        raise FitError(
            item.key,
            f"could not be fetched: {error}",
            f"a URL input is fetched once, within {item.url_limits.deadline:g} s and "
            f"{item.url_limits.max_bytes / 2**20:g} MiB",
        ) from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise FitError(item.key, f"cannot be read: {reason}", "an input must be readable") from None
    if not data:
        raise FitError(item.key, "the file is empty", "an input must be an image")
    return data


def _check_size(key: str, size: tuple[int, int], file_bytes: int, options: FitOptions) -> None:
    """Refuse, before decoding, what has no pixels, too many, or more than its bytes could hold."""
    width, height = size
    if width < 1 or height < 1:
        raise FitError(key, "the image has no pixels", "an input must be an image")
    if width * height > options.max_pixels:
        raise FitError(
            key,
            f"{width} x {height} is more pixels than max_pixels allows",
            f"decompression-bomb limit of {options.max_pixels} pixels",
        )
    if width * height > FREE_PIXELS + PIXELS_PER_BYTE * file_bytes:
        raise FitError(
            key,
            f"its header claims {width} x {height} pixels, more than its {file_bytes} bytes "
            "could hold",
            f"at most {PIXELS_PER_BYTE} pixels per byte of file beyond the first {FREE_PIXELS}",
        )


def _refusal(error: Exception, format: str | None) -> tuple[str, str]:
    """What is wrong with a file Pillow could not decode, in words, and the rule it broke."""
    if isinstance(error, Image.DecompressionBombError):
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return (
            "more pixels than Pillow decodes safely",
            f"decompression-bomb limit of {limit} pixels",
        )
    if isinstance(error, UnidentifiedImageError) and format is None:
        return "not an image Pillow can read", "an input must be an image"
    if isinstance(error, UnidentifiedImageError) and format in UNREADABLE.values():
        return f"a file in {format} format, which Pillow cannot read", DECODABLE
    if isinstance(error, UnidentifiedImageError):
        return f"it starts as {format} files do, but its header is damaged or incomplete", COMPLETE
    missing = _missing_decoder(format)
    if missing is not None:
        return missing
    if isinstance(error, NotImplementedError):
        return f"a variant of {format or 'its format'} that Pillow cannot decode", DECODABLE
    if isinstance(error, MemoryError):
        return "too large to decode in the memory available", "max_pixels"
    if isinstance(error, ValueError) and "MAX_TEXT_CHUNK" in str(error):
        return (
            f"its text metadata inflates past {PngImagePlugin.MAX_TEXT_CHUNK} bytes",
            "metadata within Pillow's safety limits",
        )
    return f"the {format or 'image'} file is corrupt or truncated", COMPLETE


def _missing_decoder(format: str | None) -> tuple[str, str] | None:
    """Why a file of `format` cannot be decoded here at all, whatever its content; or None."""
    if format == "EPS" and not EpsImagePlugin.has_ghostscript():
        return "an EPS file: reading it needs Ghostscript (gs), which is not installed", DECODABLE
    if format is not None and _stub_without_handler(format):
        return f"a file in {format} format, which Pillow cannot decode here", DECODABLE
    return None


def _looks_like(data: bytes) -> str | None:
    """The format whose signature the file starts with, when Pillow could not open it."""
    for signature, format in UNREADABLE.items():
        if signature in data[:256]:
            return format
    Image.init()
    prefix = data[:16]
    for format in Image.ID:
        accept = Image.OPEN[format][1]
        try:
            if accept is not None and accept(prefix):
                return format
        except Exception:  # a plugin's check on hostile bytes: not this format
            continue
    return None


def _stub_without_handler(format: str) -> bool:
    """Whether Pillow only recognises `format` (WMF, GRIB, HDF5, BUFR) and decodes it with a
    handler nobody installed (Windows has one for WMF; the others are the user's to register)."""
    factory = Image.OPEN.get(format, (None, None))[0]
    if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)):
        return False
    return getattr(sys.modules.get(factory.__module__), "_handler", None) is None


def _to_decoded(
    key: str, image: Image.Image, data: bytes, format: str | None, changes: list[str]
) -> Decoded:
    icc = image.info.get("icc_profile") or None
    if _is_deep_colour(image, data):
        _check_deep_colour(key, image)
    orientation = image.getexif().get(0x0112)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        changes.append(f"applied EXIF orientation {orientation}")
    profile = _profile(icc, changes) if icc else None
    if profile is not None and image.mode not in RGB_LIKE_MODES:
        # CMYK, Lab and the like: into sRGB through their profile; the output cannot keep it.
        image = _converted(image, profile, changes)
        profile = None
    grey = image.mode in GREY_MODES
    original = _to_8bit(key, image, _declared_peak(image, data), changes)
    upload_image = original
    space = profile.profile.xcolor_space.strip() if profile is not None else None
    if profile is not None and space == "GRAY" and grey:
        upload_image = original = _grey_to_srgb(original, profile, changes)
        icc = None  # an RGB result cannot carry a grey profile: both are sRGB now
    elif profile is not None and space == "RGB" and original.mode in ("RGB", "RGBA"):
        try:
            converted = ImageCms.profileToProfile(original, profile, SRGB, outputMode=original.mode)
            assert converted is not None
            changes.append("converted from its ICC profile to sRGB for the upload")
            upload_image = converted
        except ImageCms.PyCMSError:
            changes.append("ignored an ICC profile that cannot be applied")
            icc = None
    else:
        if profile is not None:
            changes.append(f"ignored an ICC profile for {space} on {image.mode} pixels")
        icc = None
    return Decoded(upload_image, original, data, format, changes, icc)


def _profile(icc: bytes, changes: list[str]) -> ImageCms.ImageCmsProfile | None:
    """The file's profile; None for sRGB (nothing to do) and for one that cannot be read."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        changes.append("ignored an unreadable ICC profile")
        return None
    return None if "srgb" in description.lower() else profile


def _converted(
    image: Image.Image, profile: ImageCms.ImageCmsProfile, changes: list[str]
) -> Image.Image:
    try:
        converted = ImageCms.profileToProfile(image, profile, SRGB, outputMode="RGB")
        assert converted is not None
        changes.append(f"converted {image.mode} to sRGB with its ICC profile")
        return converted
    except ImageCms.PyCMSError:
        changes.append(
            f"converted {image.mode} to RGB, ignoring an ICC profile that cannot be applied"
        )
        return image.convert("RGB")


def _grey_to_srgb(
    image: Image.Image, profile: ImageCms.ImageCmsProfile, changes: list[str]
) -> Image.Image:
    """Grey pixels (as L, or as grey RGB or RGBA) through their grey profile into sRGB."""
    grey = image if image.mode == "L" else image.convert("L")
    try:
        transform = ImageCms.buildTransform(profile, SRGB, "L", "RGB")
        converted = ImageCms.applyTransform(grey, transform)
        assert converted is not None
    except ImageCms.PyCMSError:
        changes.append("ignored a grey ICC profile that cannot be applied")
        return image
    if image.mode == "RGBA":
        converted.putalpha(image.getchannel("A"))
    changes.append("converted from its grey ICC profile to sRGB")
    return converted


def _to_8bit(key: str, image: Image.Image, peak: int | None, changes: list[str]) -> Image.Image:
    """8-bit RGB or L, or RGBA where the image has transparency; colours left as they are."""
    mode = image.mode
    if mode in HIGH_DEPTH_MODES:
        eight, how = _scaled_to_8bit(key, np.asarray(image, dtype=np.float64), mode, peak)
        changes.append(f"converted {mode} to 8-bit ({how})")
        return Image.fromarray(eight, "L")
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


def _scaled_to_8bit(
    key: str, values: np.ndarray, mode: str, peak: int | None
) -> tuple[np.ndarray, str]:
    """High-depth or float samples as 8-bit, scaled by what the file declares (its significant
    bits), else by the convention its values follow: 0..1 floats, 8-bit values in a deeper
    container, the smallest whole bit depth that holds them; else, or where that would leave
    fewer than MIN_LEVELS grey levels (near black), stretched from their own range.
    A picture of one flat colour is refused: there is nothing to expand."""
    finite = np.isfinite(values)
    if not finite.any():
        raise FitError(key, f"its {mode} pixels hold no finite value", UNIFORM)
    if not finite.all():
        values = np.clip(np.nan_to_num(values), values[finite].min(), values[finite].max())
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise FitError(
            key, f"its {mode} pixels are all {low:g}: the picture is one flat colour", UNIFORM
        )
    floor, top, how = low, high, f"stretched from its range {low:.4g}..{high:.4g}"
    if peak is not None and low >= 0 and high <= peak:
        floor, top, how = 0.0, float(peak), f"{peak.bit_length()} significant bits, as declared"
    elif mode == "F" and low >= 0 and high <= 1:
        floor, top, how = 0.0, 1.0, "floats from 0 to 1"
    elif low >= 0 and high <= 255:
        floor, top, how = 0.0, 255.0, "its values are 8-bit"
    elif mode != "F" and low >= 0 and high < 2**16:
        bits = next(bits for bits in (10, 12, 14, 16) if high < 2**bits)
        floor, top, how = 0.0, float(2**bits - 1), f"its values fit {bits} bits"
    if (high - low) / (top - floor) * 255 < MIN_LEVELS:
        floor, top, how = low, high, f"stretched from its range {low:.4g}..{high:.4g}"
    eight = np.clip((values - floor) / (top - floor) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return eight, how


def _is_deep_colour(image: Image.Image, data: bytes) -> bool:
    """Whether the file holds 16-bit colour, which Pillow reads as its high 8 bits."""
    if image.mode not in ("RGB", "RGBA"):
        return False
    if data.startswith(b"\x89PNG") and len(data) > 25:
        return data[24] == 16
    bits = getattr(image, "tag_v2", {}).get(258)
    return isinstance(bits, tuple) and 16 in bits


def _check_deep_colour(key: str, image: Image.Image) -> None:
    """Refuse 16-bit colour whose values use so few of their bits that the high 8 bits Pillow
    keeps are black (12-bit data in 16-bit samples) or one flat colour."""
    colour = np.asarray(image)[..., :3]
    low, high = int(colour.min()), int(colour.max())
    if high < 2 * MIN_LEVELS:
        problem = (
            "its 16-bit colour values use no more than 12 of their 16 bits, and Pillow reads "
            "only the top 8: it would come out "
            + ("one flat colour" if low == high else "near black")
            + " (save it as 8-bit, scaled to its own range)"
        )
        raise FitError(key, problem, "16-bit colour must use its range")


def _declared_peak(image: Image.Image, data: bytes) -> int | None:
    """The largest sample value the file declares for its high-depth pixels, when it does: a
    TIFF's MaxSampleValue or BitsPerSample (12-bit data in 16-bit samples), a PNG's sBIT."""
    if image.mode not in HIGH_DEPTH_MODES or image.mode == "F":
        return None
    tags = getattr(image, "tag_v2", None)
    if tags is not None:
        for tag, as_peak in ((281, int), (258, lambda bits: 2 ** int(bits) - 1)):
            value = tags.get(tag)
            value = value[0] if isinstance(value, tuple) and value else value
            if isinstance(value, int) and 0 < as_peak(value) < 2**16 - 1:
                return as_peak(value)
    if data.startswith(b"\x89PNG"):
        bits = _png_chunk(data, b"sBIT")[:1]
        if bits and 0 < bits[0] < 16:
            return 2 ** bits[0] - 1
    return None


def _png_chunk(data: bytes, kind: bytes) -> bytes:
    """The data of a PNG's first `kind` chunk before its image data; b"" if it has none."""
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        name = data[position + 4 : position + 8]
        if name == kind:
            return data[position + 8 : position + 8 + length]
        if name == b"IDAT":
            return b""
        position += 12 + length
    return b""


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


# -- codec chatter: to the debug log, never to stderr ----------------------------------------------

_PILLOW_DIR = os.path.dirname(Image.__file__)
_LIBTIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)


@_LIBTIFF_HANDLER
def _libtiff_message(module: bytes | None, text: bytes | None, _arguments: Any) -> None:
    # The arguments (a va_list) cannot be formatted portably: the template says enough.
    log.debug(
        "libtiff: %s: %s",
        (module or b"").decode(errors="replace"),
        (text or b"").decode(errors="replace"),
    )


def _quiet_codecs() -> None:
    """Send Pillow's warnings and log records, and libtiff's messages, to this module's log at
    debug level. Pillow warns and logs about the oddities of files it still reads ("Corrupt
    EXIF data"), libtiff prints straight to stderr; for a user, the outcome of each file (fitted,
    or refused with the reason) is the news."""
    show = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if filename.startswith(_PILLOW_DIR) or filename == __file__:
            log.debug("Pillow: %s: %s", category.__name__, message)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    Image.init()
    for name in list(logging.root.manager.loggerDict):
        if name == "PIL" or name.startswith("PIL."):
            logging.getLogger(name).addFilter(_as_debug)
    try:
        from PIL import _imaging

        library = ctypes.CDLL(_imaging.__file__)
        for setter_name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
            setter = getattr(library, setter_name)
            setter.argtypes, setter.restype = [_LIBTIFF_HANDLER], ctypes.c_void_p
            setter(_libtiff_message)
    except (OSError, AttributeError):  # a Pillow built without libtiff: nothing to quiet
        log.debug("libtiff's message handlers not found; its messages may reach stderr")


def _as_debug(record: logging.LogRecord) -> bool:
    """A logging filter: Pillow's records at debug level, shown only where debug is."""
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_quiet_codecs()
