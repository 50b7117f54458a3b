"""Pixels as the upload and the result need them: colour through the file's ICC profile into
sRGB, and high bit depths (16-bit, float) into 8 bits, scaled by what the file declares."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms

from kling_expand_plugin.imaging.refusals import UNIFORM, FitError

HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
GREY_MODES = ("1", "L", "LA", "La", *HIGH_DEPTH_MODES)
RGB_LIKE_MODES = ("RGB", "RGBA", "P", "PA", *GREY_MODES)
SRGB = ImageCms.createProfile("sRGB")
MIN_LEVELS = 8
"""High-depth pixels whose values would span fewer 8-bit levels than this are stretched."""


def profile_of(icc: bytes, changes: list[str]) -> ImageCms.ImageCmsProfile | None:
    """The file's profile; None for sRGB (nothing to do) and for one that cannot be read."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        changes.append("ignored an unreadable ICC profile")
        return None
    return None if "srgb" in description.lower() else profile


def converted_to_srgb(
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


def grey_to_srgb(
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


def to_8bit(key: str, image: Image.Image, peak: int | None, changes: list[str]) -> Image.Image:
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


def is_deep_colour(image: Image.Image, data: bytes) -> bool:
    """Whether the file holds 16-bit colour, which Pillow reads as its high 8 bits."""
    if image.mode not in ("RGB", "RGBA"):
        return False
    if data.startswith(b"\x89PNG") and len(data) > 25:
        return data[24] == 16
    bits = getattr(image, "tag_v2", {}).get(258)
    return isinstance(bits, tuple) and 16 in bits


def check_deep_colour(key: str, image: Image.Image) -> None:
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


def declared_peak(image: Image.Image, data: bytes) -> int | None:
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
