"""Refusing an input in words: `FitError` names the item, what is wrong and the rule it broke;
`refusal` says what a Pillow failure means for a file that could not be decoded."""

from __future__ import annotations

import sys

from PIL import EpsImagePlugin, Image, ImageFile, PngImagePlugin, UnidentifiedImageError

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


class FitError(ValueError):
    """An item that cannot be made into a valid upload: names the item and the rule it broke."""

    def __init__(self, key: str, problem: str, rule: str) -> None:
        super().__init__(f"item {key!r}: {problem} (rule: {rule})")
        self.key = key
        self.problem = problem
        self.rule = rule


def refusal(error: Exception, format: str | None) -> tuple[str, str]:
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
    missing = missing_decoder(format)
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


def missing_decoder(format: str | None) -> tuple[str, str] | None:
    """Why a file of `format` cannot be decoded here at all, whatever its content; or None."""
    if format == "EPS" and not EpsImagePlugin.has_ghostscript():
        return "an EPS file: reading it needs Ghostscript (gs), which is not installed", DECODABLE
    if format is not None and _stub_without_handler(format):
        return f"a file in {format} format, which Pillow cannot decode here", DECODABLE
    return None


def looks_like(data: bytes) -> str | None:
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
