"""Decoding an input, guarded: `decode` reads any image Pillow can, safely, into 8-bit RGB or
RGBA with its orientation applied, in one step: whatever the file, it is decoded or refused with
a FitError that says why in words, and codec chatter goes to the debug log, not stderr. Files
whose header claims more pixels than the limit, or than their bytes could hold, are refused
before any pixel is decoded (`check_size`).
"""

from __future__ import annotations

import ctypes
import functools
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageCms, ImageOps

from imgpipe import FetchError, Item
from kling_expand_plugin.imaging.colour import (
    GREY_MODES,
    RGB_LIKE_MODES,
    SRGB,
    check_deep_colour,
    converted_to_srgb,
    declared_peak,
    grey_to_srgb,
    is_deep_colour,
    profile_of,
    to_8bit,
)
from kling_expand_plugin.imaging.refusals import FitError, looks_like, missing_decoder, refusal
from kling_expand_plugin.kling import limits

ANIMATED_POLICIES = ("first", "reject")
DEFAULT_MAX_PIXELS = 100_000_000
PIXELS_PER_BYTE = 20_000
"""Past FREE_PIXELS, a file may claim this many pixels per byte it has: several times what the
best-compressing codecs reach on real pictures (PNG's deflate tops out near 1,032:1, so about
8,000 one-bit pixels a byte; a blank fax page in CCITT G4, some 14,000)."""
FREE_PIXELS = 1_000_000

log = logging.getLogger(__name__)


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


def decode(item: Item, options: FitOptions | None = None, data: bytes | None = None) -> Decoded:
    """The item's image, fully decoded to 8-bit RGB/RGBA and upright; FitError if it is not one.
    `data`: the item's file, when the caller has read it already (`read_input`).

    One guarded step: whatever Pillow, its codecs or the colour management raise becomes a
    FitError saying what is wrong in words (the library's own text goes to the debug log)."""
    quiet_codecs()
    options = options or FitOptions()
    data = read_input(item) if data is None else data
    format = None
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        format = image.format
        missing = missing_decoder(format)
        if missing is not None:
            raise FitError(item.key, *missing)
        check_size(item.key, image.size, len(data), options)
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
        problem, rule = refusal(error, format or looks_like(data))
        raise FitError(item.key, problem, rule) from None


def read_input(item: Item) -> bytes:
    """The item's file, fetched or read once; FitError saying why when it cannot be."""
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


def check_size(key: str, size: tuple[int, int], file_bytes: int, options: FitOptions) -> None:
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


def _to_decoded(
    key: str, image: Image.Image, data: bytes, format: str | None, changes: list[str]
) -> Decoded:
    icc = image.info.get("icc_profile") or None
    if is_deep_colour(image, data):
        check_deep_colour(key, image)
    orientation = image.getexif().get(0x0112)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        changes.append(f"applied EXIF orientation {orientation}")
    profile = profile_of(icc, changes) if icc else None
    if profile is not None and image.mode not in RGB_LIKE_MODES:
        # CMYK, Lab and the like: into sRGB through their profile; the output cannot keep it.
        image = converted_to_srgb(image, profile, changes)
        profile = None
    grey = image.mode in GREY_MODES
    original = to_8bit(key, image, declared_peak(image, data), changes)
    upload_image = original
    space = profile.profile.xcolor_space.strip() if profile is not None else None
    if profile is not None and space == "GRAY" and grey:
        upload_image = original = grey_to_srgb(original, profile, changes)
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


# -- codec chatter: to the debug log, never to stderr ----------------------------------------------

_PILLOW_DIR = os.path.dirname(Image.__file__)
_IMAGING_DIR = os.path.dirname(__file__) + os.sep
_LIBTIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)


@_LIBTIFF_HANDLER
def _libtiff_message(module: bytes | None, text: bytes | None, _arguments: Any) -> None:
    # The arguments (a va_list) cannot be formatted portably: the template says enough.
    log.debug(
        "libtiff: %s: %s",
        (module or b"").decode(errors="replace"),
        (text or b"").decode(errors="replace"),
    )


@functools.cache
def quiet_codecs() -> None:
    """Send Pillow's warnings and log records, and libtiff's messages, to this module's log at
    debug level. Pillow warns and logs about the oddities of files it still reads ("Corrupt
    EXIF data"), libtiff prints straight to stderr; for a user, the outcome of each file (fitted,
    or refused with the reason) is the news. Done once, when the first input is read, not at
    import: a pipeline without this stage keeps Pillow's warnings as they are."""
    show = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if filename.startswith((_PILLOW_DIR, _IMAGING_DIR)):
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
