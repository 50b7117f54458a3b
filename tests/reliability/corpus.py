"""Hand-made hostile and unusual image files, one of each kind issue 15 found, with what each
must get: planned, or refused with a reason that says what is wrong (and never a raw library
text). Every file is made here, byte by byte where Pillow would not write it."""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

PLANNED = "planned"


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def picture(size: tuple[int, int] = (400, 300)) -> np.ndarray:
    """A smooth two-way ramp with a bright square: a normal picture, 0..1 floats."""
    width, height = size
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    values = 0.2 + 0.5 * x * (1 - y) + 0.2 * y
    values[height // 4 : height // 2, width // 4 : width // 2] = 0.95
    return values


def grey_icc(description: str = "Generic Gray Gamma 2.2") -> bytes:
    """A valid ICC v2 grey display profile: gamma 2.2, D50 white, as Apple's generic grey."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    desc = description.encode("ascii") + b"\0"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(desc)) + desc + bytes(4 + 4 + 2 + 1 + 67),
        b"cprt": b"text\0\0\0\0" + b"No copyright\0",
        b"wtpt": b"XYZ \0\0\0\0" + s15(0.9642) + s15(1.0) + s15(0.8249),
        b"kTRC": b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0",
    }
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags.items():
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"mntrGRAYXYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(24)
        + struct.pack(">I", 0)
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"lcms"
    )
    header += bytes(128 - len(header))
    return header + table + body


def tiff_without_dimensions() -> bytes:
    """A two-page TIFF whose second page's tags leave out its width and length: Pillow opens
    the first page, and raises TypeError("Missing dimensions") counting the pages."""
    first = bytearray(encode(Image.fromarray(np.uint8(picture() * 255)), "TIFF"))
    (offset,) = struct.unpack("<I", first[4:8])
    (count,) = struct.unpack("<H", first[offset : offset + 2])
    next_pointer = offset + 2 + 12 * count
    first[next_pointer : next_pointer + 4] = struct.pack("<I", len(first))
    entries = [
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8),  # StripOffsets
        (279, 4, 1, 16),  # StripByteCounts
    ]
    second = struct.pack("<H", len(entries))
    for tag, kind, number, value in entries:
        second += struct.pack("<HHII", tag, kind, number, value)
    return bytes(first) + second + struct.pack("<I", 0)


def dds(fourcc: bytes, dxgi_format: int | None = None, size: tuple[int, int] = (64, 64)) -> bytes:
    """A DDS file of the pixel format `fourcc` (with a DX10 header when `dxgi_format` is given)."""
    width, height = size
    flags = 0x1 | 0x2 | 0x4 | 0x1000  # caps, height, width, pixel format
    pixel_format = struct.pack("<II4s5I", 32, 0x4, fourcc, 0, 0, 0, 0, 0)
    header = struct.pack("<7I", 124, flags, height, width, width * 4, 0, 0) + bytes(44)
    header += pixel_format + struct.pack("<4I", 0x1000, 0, 0, 0) + bytes(4)
    extra = struct.pack("<5I", dxgi_format, 3, 0, 1, 0) if dxgi_format is not None else b""
    return b"DDS " + header + extra + bytes(width * height * 4)


def eps() -> bytes:
    """A valid EPS: reading its pixels needs Ghostscript."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 400 300\n%%EndComments\n"
        b"0.2 0.4 0.8 setrgbcolor 0 0 400 300 rectfill showpage\n%%EOF\n"
    )


def wmf() -> bytes:
    """An Aldus placeable WMF header and a minimal metafile: Pillow cannot render it here."""
    bounds = struct.pack("<4h", 0, 0, 400, 300)
    head = b"\xd7\xcd\xc6\x9a" + b"\0\0" + bounds + struct.pack("<HI", 96, 0)
    checksum = 0
    for (word,) in struct.iter_unpack("<H", head):
        checksum ^= word
    metafile = struct.pack("<HHHIHIH", 1, 9, 0x300, 12, 0, 3, 0) + struct.pack("<IH", 3, 0)
    return head + struct.pack("<H", checksum) + metafile


def png(width: int, height: int, body: bytes, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG with the header given and `body` (chunks) before its IEND."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + body + chunk(b"IEND", b"")


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_claiming_many_pixels() -> bytes:
    """Under 300 bytes claiming 1 x 83,886,338 pixels: under the pixel limit, not its bytes."""
    return png(1, 83_886_338, chunk(b"IDAT", zlib.compress(b"\0\0" * 64)), depth=8, colour=0)


def png_with_a_text_bomb() -> bytes:
    """A valid PNG whose zTXt chunk inflates past Pillow's MAX_TEXT_CHUNK."""
    image = encode(Image.fromarray(np.uint8(picture() * 255)), "PNG")
    bomb = chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b" " * (4 << 20), 9))
    return image[:33] + bomb + image[33:]


def sixteen_bit(values: np.ndarray, format: str, **options: object) -> bytes:
    return encode(Image.fromarray(values.astype(np.uint16)), format, **options)


def floats(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), "F"), "TIFF")


def png_with_sbit(values: np.ndarray, bits: int) -> bytes:
    """A 16-bit grey PNG holding `bits`-bit data, as its sBIT chunk declares."""
    data = sixteen_bit(values, "PNG")
    return data[:33] + chunk(b"sBIT", bytes([bits])) + data[33:]


def deep_colour_png(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow does not write them) of `values` in each channel."""
    rgb = np.stack([values, values / 2, values], axis=-1).astype(">u2")
    rows = b"".join(b"\0" + row.tobytes() for row in rgb)
    height, width = values.shape
    return png(width, height, chunk(b"IDAT", zlib.compress(rows)), depth=16, colour=2)


def deep_colour_tiff(values: np.ndarray) -> bytes:
    """An uncompressed 16-bit RGB TIFF (Pillow does not write them) of `values`."""
    height, width = values.shape
    pixels = np.stack([values, values / 2, values], axis=-1).astype("<u2").tobytes()
    bits_at = 8 + 2 + 9 * 12 + 4  # after the header and the IFD
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, bits_at),  # BitsPerSample: 16, 16, 16, stored after the IFD
        (259, 3, 1, 1),
        (262, 3, 1, 2),  # RGB
        (273, 4, 1, bits_at + 6),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<3H", 16, 16, 16) + pixels


def bilevel_g4_with_grey_profile() -> bytes:
    bits = Image.fromarray(np.uint8(picture() * 255)).convert("1")
    return encode(bits, "TIFF", compression="group4", icc_profile=grey_icc())


def grey_alpha_with_grey_profile() -> bytes:
    grey = Image.fromarray(np.uint8(picture() * 255))
    alpha = Image.fromarray(np.uint8(np.clip(picture()[::-1] * 400, 0, 255)))
    return encode(Image.merge("LA", (grey, alpha)), "PNG", icc_profile=grey_icc())


def g4_with_a_bad_tag_value() -> bytes:
    """A fine bilevel G4 TIFF but for a ResolutionUnit of 7: libtiff complains, then reads it."""
    bits = Image.fromarray(np.uint8(picture() * 255)).convert("1")
    data = encode(bits, "TIFF", compression="group4", dpi=(300, 300))
    entry = struct.pack("<HHI", 296, 3, 1)
    at = data.index(entry) + len(entry)
    return data[:at] + struct.pack("<H", 7) + data[at + 2 :]


def truncated_jpeg() -> bytes:
    return encode(Image.fromarray(np.uint8(picture() * 255)).convert("RGB"), "JPEG")[:900]


def bit_flipped_png() -> bytes:
    data = bytearray(encode(Image.fromarray(np.uint8(picture() * 255)), "PNG"))
    for offset in range(60, len(data) - 20, 97):
        data[offset] ^= 0x5A
    return bytes(data)


RAMP = picture()

CORPUS: dict[str, tuple[Callable[[], bytes], str]] = {
    # kind: (the file, PLANNED or a phrase its refusal must hold)
    "missing-dimensions.tif": (tiff_without_dimensions, "TIFF file is corrupt"),
    "unimplemented-fourcc.dds": (
        lambda: dds(b"UYVY"),
        "a variant of DDS that Pillow cannot decode",
    ),
    "unimplemented-dx10.dds": (
        lambda: dds(b"DX10", 2),
        "a variant of DDS that Pillow cannot decode",
    ),
    "no-ghostscript.eps": (eps, "needs Ghostscript"),
    "drawing.wmf": (wmf, "WMF format, which Pillow cannot decode"),
    "document.pdf": (
        lambda: encode(Image.new("RGB", (400, 300), "red"), "PDF"),
        "PDF format, which Pillow cannot read",
    ),
    "drawing.svg": (
        lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>\n',
        "SVG format, which Pillow cannot read",
    ),
    "photo.heic": (
        lambda: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(100),
        "HEIC format, which Pillow cannot read",
    ),
    "stub.grib": (lambda: b"GRIB\0\0\0\x01" + bytes(64), "GRIB format, which Pillow cannot decode"),
    "stub.h5": (
        lambda: b"\x89HDF\r\n\x1a\n" + bytes(64),
        "HDF5 format, which Pillow cannot decode",
    ),
    "claims-83-megapixels.png": (png_claiming_many_pixels, "could hold"),
    "text-bomb.png": (png_with_a_text_bomb, "text metadata"),
    "truncated.jpg": (truncated_jpeg, "corrupt or truncated"),
    "bit-flipped.png": (bit_flipped_png, "corrupt or truncated"),
    "bilevel-g4-grey-profile.tif": (bilevel_g4_with_grey_profile, PLANNED),
    "g4-bad-tag-value.tif": (g4_with_a_bad_tag_value, PLANNED),
    "grey-alpha-grey-profile.png": (grey_alpha_with_grey_profile, PLANNED),
    "twelve-in-sixteen.tif": (lambda: sixteen_bit(RAMP * 4095, "TIFF"), PLANNED),
    "twelve-in-sixteen-sbit.png": (lambda: png_with_sbit(RAMP * 4095, 12), PLANNED),
    "eight-in-sixteen.png": (lambda: sixteen_bit(RAMP * 255, "PNG"), PLANNED),
    "sixteen-bit-full.png": (lambda: sixteen_bit(RAMP * 65535, "PNG"), PLANNED),
    "float-unit.tif": (lambda: floats(RAMP), PLANNED),
    "float-1-255.tif": (lambda: floats(1 + RAMP * 254), PLANNED),
    "float-minus-pi-pi.tif": (lambda: floats((RAMP * 2 - 1) * math.pi), PLANNED),
    "float-nan-and-inf.tif": (
        lambda: floats(np.where(RAMP > 0.9, np.nan, np.where(RAMP < 0.25, -np.inf, RAMP))),
        PLANNED,
    ),
    "deep-colour-full.png": (lambda: deep_colour_png(RAMP * 65535), PLANNED),
    "deep-colour-twelve-bits.png": (lambda: deep_colour_png(RAMP * 4095), "near black"),
    "deep-colour-full.tif": (lambda: deep_colour_tiff(RAMP * 65535), PLANNED),
    "deep-colour-twelve-bits.tif": (lambda: deep_colour_tiff(RAMP * 4095), "near black"),
    "deep-colour-eight-bits.png": (lambda: deep_colour_png(RAMP * 255), "one flat colour"),
    "float-uniform.tif": (lambda: floats(np.full((300, 400), 0.5)), "one flat colour"),
    "sixteen-bit-uniform.png": (
        lambda: sixteen_bit(np.full((300, 400), 1000), "PNG"),
        "one flat colour",
    ),
}
