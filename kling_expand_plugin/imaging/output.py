"""What a result is called and how it is encoded: one rule for the stage, the command, the Python
API and the `save` stage.

The name rule: a result of input `photo.jpg` is `photo-<variant>.<ext>`; when an earlier input
of the same run already took the name `photo` (`photo.png` after `photo.jpg`, compared without
case), the input's extension is kept in the name: `photo.png-0.png`. Names are handed out in
input order, so the same inputs always get the same names. A name too long for a file system
keeps its beginning and gets a hash of the whole (`imgpipe.files.fit_name`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath

from PIL import Image, ImageCms

from imgpipe.encoding import (
    DEFAULT_PNG_COMPRESSION,
    DEFAULT_QUALITY,
    EXTENSIONS,
    FORMATS,
    MEDIA_TYPES,
    encode,
)
from imgpipe.files import MAX_NAME_BYTES, fit_name

OUTPUT_FORMATS = ("auto", "png", "jpeg", "webp")
KEPT_FORMATS = ("PNG", "JPEG", "WEBP")
"""Input formats that `auto` keeps; any other input gives PNG."""
NAME_METADATA = "output_name"
"""An item's metadata key that, when set, names its results instead of the rule."""
NAME_BYTES = MAX_NAME_BYTES - 24
"""Room for `-<variant>.<ext>` after a name, within the longest file name written."""
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


class Namer:
    """Hands out result names for the inputs of one run, each distinct from the others."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def name(self, key: str) -> str:
        """The name (no variant, no extension) of the results of the input keyed `key`."""
        path = PurePosixPath(key) if key else PurePosixPath("image")
        whole = fit_name(path.as_posix(), NAME_BYTES)
        for candidate in (fit_name(path.with_suffix("").as_posix(), NAME_BYTES), whole):
            if self.take(candidate):
                return candidate
        number = 2
        while not self.take(f"{whole}-{number}"):
            number += 1
        return f"{whole}-{number}"

    def take(self, name: str) -> bool:
        """Reserve `name`; False when an earlier input has it (names compare without case)."""
        folded = name.casefold()
        if folded in self._taken:
            return False
        self._taken.add(folded)
        return True


def result_key(name: str, variant: int, extension: str) -> str:
    """`name-<variant>.<extension>`: the key (and the relative path) of one result."""
    return f"{name}-{variant}.{extension}"


@dataclass(frozen=True)
class OutputFormat:
    """How results are encoded: `format` is auto (the input's own format when it is JPEG, PNG
    or WebP, else PNG), png, jpeg or webp."""

    format: str = "auto"
    quality: int = DEFAULT_QUALITY
    png_compression: int = DEFAULT_PNG_COMPRESSION

    def pillow_format(self, source_format: str | None) -> str:
        """The Pillow format name results of an input in `source_format` are written in."""
        if self.format == "auto":
            return source_format if source_format in KEPT_FORMATS else "PNG"
        return FORMATS[self.format]

    def extension(self, source_format: str | None) -> str:
        return EXTENSIONS[self.pillow_format(source_format)]


@dataclass(frozen=True)
class Source:
    """What of the input file its results keep: format, mode, colour profile and EXIF."""

    format: str | None
    mode: str
    icc_profile: bytes | None
    exif: bytes | None

    @classmethod
    def of(cls, data: bytes) -> Source:
        """Read from the file's header (no pixels are decoded)."""
        with Image.open(io.BytesIO(data)) as image:
            exif = image.info.get("exif")
            return cls(image.format, image.mode, image.info.get("icc_profile"), exif)


def encode_result(
    image: Image.Image,
    source: Source,
    output: OutputFormat,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[bytes, str, str]:
    """(the encoded result, its file extension, its media type).

    The result keeps the original's mode where the format allows it: grey stays grey, a
    CMYK original gives a CMYK JPEG (through its ICC profile when it has one), transparency
    stays where the format has it. Palette and 16-bit originals come back 8-bit RGB or grey,
    since the generated area does not fit their palette or their precision.
    """
    format = output.pillow_format(source.format)
    icc = image.info.get("icc_profile")
    if source.mode in GREY_MODES and image.mode in ("RGB", "RGBA"):
        info = image.info
        image = image.convert("LA" if image.mode == "RGBA" else "L")
        image.info = info
        icc = icc or source.icc_profile
    elif source.mode == "CMYK" and format == "JPEG" and image.mode == "RGB":
        image, icc = _to_cmyk(image, source.icc_profile)
    elif icc is None and source.mode not in ("CMYK",):
        icc = source.icc_profile  # sRGB-tagged originals: the result is sRGB too
    data = encode(
        image,
        format,
        quality=output.quality,
        png_compression=output.png_compression,
        icc_profile=icc,
        exif=source.exif,
        background=background,
    )
    return data, EXTENSIONS[format], MEDIA_TYPES[format]


def _to_cmyk(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(
                image, ImageCms.createProfile("sRGB"), profile, outputMode="CMYK"
            )
            if converted is not None:
                return converted, icc
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return image.convert("CMYK"), None


BYTES_PER_PIXEL = {"PNG": 2.0, "JPEG": 0.6, "WEBP": 0.5}
"""Generous bytes per pixel of a photo-like result in each format, for disk-space estimates
(measured: a grainy 9 MP photo is 1.9 B/px as PNG level 1, 0.16 as JPEG 90)."""


def estimated_bytes(canvas_pixels: int, results: int, pillow_format: str) -> int:
    """About how many bytes `results` images of `canvas_pixels` take in `pillow_format`."""
    return int(canvas_pixels * results * BYTES_PER_PIXEL.get(pillow_format, 3.0))


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count < 1e9 else f"{count / 1e9:.2f} GB"
