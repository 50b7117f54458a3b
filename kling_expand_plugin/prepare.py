"""Preparing an item for upload: decide it is an image, and fit it into the API's input limits."""

from __future__ import annotations

import base64
import io
import math
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

from hooks import Item

from . import limits

JPEG_QUALITIES = (95, 90, 85, 80, 75, 70)


class FitError(ValueError):
    """An item that cannot be made into a valid upload: names the item and the rule it broke."""

    def __init__(self, key: str, problem: str, rule: str) -> None:
        super().__init__(f"item {key!r}: {problem} (rule: {rule})")
        self.key = key
        self.problem = problem
        self.rule = rule


@dataclass(frozen=True)
class Upload:
    """What is sent as the create call's `image`, and how it relates to the original."""

    data: bytes
    format: str
    width: int
    height: int
    original_size: tuple[int, int]
    changes: tuple[str, ...] = field(default=())

    @property
    def scale(self) -> float:
        """Upload pixels per original pixel."""
        return self.width / self.original_size[0]

    def as_base64(self) -> str:
        """The file as raw base64, as the API takes it (no `data:` prefix)."""
        return base64.b64encode(self.data).decode("ascii")


def prepare(item: Item) -> Upload:
    """The upload for `item`: its own bytes when they conform, otherwise a fitted re-encode."""
    data = item.read_bytes()
    if not data:
        raise FitError(item.key, "the file is empty", "an input must be a .jpg or .png image")
    image = _decode(item.key, data)
    changes: list[str] = []
    orientation = image.getexif().get(0x0112)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        changes.append(f"applied EXIF orientation {orientation}")
    original_size = width, height = image.size
    aspect = width / height
    if not limits.MIN_ASPECT <= aspect <= limits.MAX_ASPECT:
        raise FitError(
            item.key,
            f"aspect ratio {width} x {height} = {aspect:.3f} is outside the accepted range",
            "width / height between 1:2.5 and 2.5:1",
        )
    if min(width, height) < limits.MIN_SIDE:
        factor = limits.MIN_SIDE / min(width, height)
        size = (math.ceil(width * factor), math.ceil(height * factor))
        image = image.resize(size, Image.Resampling.LANCZOS)
        changes.append(f"upscaled {width} x {height} to {size[0]} x {size[1]} (300 px minimum)")

    conforming = image.format in limits.FORMATS and len(data) <= limits.MAX_FILE_BYTES
    if conforming and not changes:
        return Upload(data, str(image.format), *image.size, original_size=original_size)
    return _encode(item.key, image, original_size, changes, source_format=image.format)


def _decode(key: str, data: bytes) -> Image.Image:
    """The image, fully decoded, or a FitError saying why it is not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except UnidentifiedImageError:
        raise FitError(key, "not an image Pillow can read", "an input must be an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FitError(
            key, f"too many pixels to decode safely: {exc}", "decompression-bomb limit"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FitError(
            key, f"the image is corrupt or truncated: {exc}", "a complete image file"
        ) from None
    return image


def _encode(
    key: str,
    image: Image.Image,
    original_size: tuple[int, int],
    changes: list[str],
    source_format: str | None,
) -> Upload:
    """Re-encode as PNG (lossless sources, transparency) or JPEG, within the size limit."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    lossless = has_alpha or source_format not in ("JPEG", "WEBP", None)
    if lossless:
        converted = image.convert("RGBA" if has_alpha else "RGB")
        data = _save(converted, "PNG")
        if len(data) <= limits.MAX_FILE_BYTES:
            changes.append(f"re-encoded {source_format} as PNG")
            return Upload(data, "PNG", *converted.size, original_size, tuple(changes))
    rgb = image.convert("RGB")
    while True:
        for quality in JPEG_QUALITIES:
            data = _save(rgb, "JPEG", quality=quality)
            if len(data) <= limits.MAX_FILE_BYTES:
                changes.append(f"re-encoded {source_format} as JPEG quality {quality}")
                return Upload(data, "JPEG", *rgb.size, original_size, tuple(changes))
        smaller = (round(rgb.width * 0.8), round(rgb.height * 0.8))
        if min(smaller) < limits.MIN_SIDE:
            raise FitError(key, "cannot be encoded within 10 MB", "an input file is at most 10 MB")
        changes.append(f"downscaled {rgb.width} x {rgb.height} to {smaller[0]} x {smaller[1]}")
        rgb = rgb.resize(smaller, Image.Resampling.LANCZOS)


def _save(image: Image.Image, format: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, optimize=format == "JPEG", **options)
    return buffer.getvalue()
