"""Encoding images for output: PNG, JPEG, WebP (and TIFF), keeping the colour profile, the EXIF
data (less the orientation, since pixels are written upright) and the mode where the format
allows it."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageCms

FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "TIFF": "tif", "GIF": "gif"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "TIFF": "image/tiff"}
DEFAULT_QUALITY = 92
DEFAULT_PNG_COMPRESSION = 1
"""zlib level 1: measured on a 9 MP photo, half the CPU of Pillow's default (6) for a file 14%
larger; levels 2 and 3 gave the same size for more time."""
WEBP_METHOD = 2
"""libwebp's effort, 0..6: on a 36 MP photo, 2 took 1.7 s and 4 (Pillow's default) 11 s, for
the same size; 0 and 1 failed on it (partition overflow)."""

MODES = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"),
    "JPEG": ("L", "RGB", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
}
"""The modes each format writes as they are; anything else is converted to the nearest."""

ORIENTATION = 0x0112
_ICC_SPACES = {"GRAY": ("1", "L", "LA", "I;16", "I", "F"), "RGB": ("RGB", "RGBA", "P")}


def encode(
    image: Image.Image,
    format: str,
    *,
    quality: int = DEFAULT_QUALITY,
    png_compression: int = DEFAULT_PNG_COMPRESSION,
    icc_profile: bytes | None = None,
    exif: bytes | Image.Exif | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> bytes:
    """`image` encoded as `format` (a Pillow name: PNG, JPEG, WEBP, TIFF).

    Converts the mode only where the format requires it (transparency is flattened onto
    `background` for JPEG; grey is widened to RGB for WebP). `icc_profile` (default: the
    image's own) is embedded when it fits the written mode; `exif` is kept without its
    orientation tag.
    """
    image = _writable(image, format, background)
    icc = icc_profile if icc_profile is not None else image.info.get("icc_profile")
    options: dict[str, Any] = {}
    if icc and _fits(icc, image.mode):
        options["icc_profile"] = icc
    exif_bytes = upright_exif(exif)
    if exif_bytes:
        options["exif"] = exif_bytes
    if format == "PNG":
        options["compress_level"] = png_compression
    elif format in ("JPEG", "WEBP"):
        options["quality"] = quality
    if format == "WEBP":
        options["method"] = WEBP_METHOD
    buffer = io.BytesIO()
    try:
        image.save(buffer, format, **options)
    except ValueError:  # libwebp's fast methods overflow on some large images: the slow one
        if format != "WEBP":
            raise
        buffer = io.BytesIO()
        image.save(buffer, format, **{**options, "method": 4})
    return buffer.getvalue()


def upright_exif(exif: bytes | Image.Exif | None) -> bytes | None:
    """EXIF data without its orientation tag (None when there is nothing else to keep)."""
    if exif is None:
        return None
    if isinstance(exif, bytes):
        parsed = Image.Exif()
        try:
            parsed.load(exif)
        except Exception:  # a damaged EXIF block is dropped, not a reason to lose the image
            return None
        exif = parsed
    exif.pop(ORIENTATION, None)
    return exif.tobytes() if len(exif) or exif.get_ifd(0x8769) else None


def _writable(image: Image.Image, format: str, background: tuple[int, int, int]) -> Image.Image:
    allowed = MODES.get(format, ("RGB", "RGBA"))
    mode = image.mode
    if mode in allowed:
        return image
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        if "I" in allowed and mode != "F":
            return image.convert("I")
        info = image.info
        peak = 1.0 if mode == "F" else 65535.0
        image = image.convert("F").point(lambda v: v * 255.0 / peak).convert("L")
        image.info = info
        if image.mode in allowed:
            return image
        mode = "L"
    grey = mode in ("1", "L", "LA", "La")
    if has_alpha and "RGBA" not in allowed and "LA" not in allowed:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        flat.info = dict(image.info)
        return flat.convert("L") if grey and "L" in allowed else flat
    if grey and has_alpha and "LA" in allowed:
        wanted = "LA"
    elif grey and not has_alpha and "L" in allowed:
        wanted = "L"
    else:
        wanted = "RGBA" if has_alpha else "RGB"
    converted = image.convert(wanted)
    converted.info = {k: v for k, v in image.info.items() if k != "transparency"}
    return converted


def _fits(icc: bytes, mode: str) -> bool:
    """Whether an ICC profile describes the colour space of `mode` (a grey profile on an RGB
    image, or a CMYK one on RGB, would make viewers reject the file or shift its colours)."""
    try:
        space = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, ValueError, AttributeError):
        return False
    if space == "CMYK":
        return mode == "CMYK"
    return mode in _ICC_SPACES.get(space, ())
