"""Hostile input: random and corrupted image bytes through the fitting code.

Whatever the bytes, `prepare` either fits them or raises the project's own FitError naming the
item and the rule; nothing else escapes, and no case takes long (hypothesis deadline per case,
pytest-timeout per test). A flipped bit in a header can make a legitimately large image (a
GIF of 4160 x 1664 decodes from a few hundred bytes), whose fitting takes as long as any real
photo that size; the stage's own `max_pixels` option (2 MP here) bounds the work per case.

`max_pixels` bounds the padding that brings an extreme aspect ratio into the API's range too:
165 bytes of GIF claiming 16448 x 48 would otherwise become a 16448 x 6580 upload.
"""

from __future__ import annotations

import io
import struct
import zlib
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from hooks import Item
from kling_expand_plugin.plan import Target
from kling_expand_plugin.prepare import FitError, FitOptions, prepare

# Pillow warns (UserWarning) about the corrupt metadata this feeds it; expected, not news.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

TARGET = Target(aspect=16 / 9)
OPTIONS = FitOptions(max_pixels=2_000_000)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
FUZZ = settings(
    max_examples=400,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def encoded(format: str, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    """A small valid image file with some structure in it."""
    image = Image.new(mode, size, "teal")
    image.paste("orange", (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("P", (40, 30), colour) for colour in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


VALID = {format: encoded(format) for format in FORMATS}
VALID["PNG-RGBA"] = encoded("PNG", mode="RGBA")
VALID["GIF-animated"] = animated_gif()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` but whose data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 16)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def fit(data: bytes) -> None:
    """prepare() the bytes: a fitted upload, or FitError; anything else fails the test."""
    try:
        _, upload, _ = prepare(Item("fuzz.bin", data), TARGET, OPTIONS)
    except FitError as error:
        assert error.key == "fuzz.bin" and error.rule and str(error).startswith("item 'fuzz.bin'")
        return
    assert upload.data and upload.format in ("JPEG", "PNG")


@pytest.mark.timeout(60)
@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\x89PNG\r\n\x1a\n")
@example(b"\xff\xd8\xff")
@example(b"GIF89a")
@example(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
@example(b"II*\x00")
@example(png_claiming(100_000, 100_000))
@example(png_claiming(1, 60_000))
@example(png_claiming(1_600, 1_200))  # under the pixel cap, data missing
@example(png_claiming(0, 0))
def test_random_bytes_fit_or_raise_fit_error(data):
    fit(data)


@pytest.mark.timeout(90)
@FUZZ
@given(
    st.sampled_from(sorted(VALID)),
    st.data(),
)
def test_corrupted_images_fit_or_raise_fit_error(name, data):
    original = VALID[name]
    how = data.draw(st.sampled_from(("truncate", "flip", "overwrite", "splice")))
    position = data.draw(st.integers(0, len(original) - 1))
    if how == "truncate":
        corrupted = original[:position]
    elif how == "flip":
        bits = data.draw(st.lists(st.integers(0, 7), min_size=1, max_size=8))
        mutable = bytearray(original)
        for offset, bit in enumerate(bits):
            mutable[(position + offset * 7) % len(mutable)] ^= 1 << bit
        corrupted = bytes(mutable)
    elif how == "overwrite":
        junk = data.draw(st.binary(min_size=1, max_size=16))
        corrupted = original[:position] + junk + original[position + len(junk) :]
    else:
        junk = data.draw(st.binary(min_size=1, max_size=64))
        corrupted = original[:position] + junk + original[position:]
    fit(corrupted)


@pytest.mark.parametrize("name", sorted(VALID))
def test_the_valid_seeds_fit(name):
    _, upload, plan = prepare(Item(f"seed.{name}", VALID[name]), TARGET, OPTIONS)
    assert min(upload.width, upload.height) >= 300 and plan.passes


@pytest.mark.timeout(60)
def test_padding_an_extreme_aspect_ratio_is_held_to_max_pixels():
    wide = encoded("GIF", size=(4_000, 20))  # 80 K pixels; padded, 4000 x 1600 = 6.4 M
    with pytest.raises(FitError, match="max_pixels"):
        prepare(Item("wide.gif", wide), TARGET, OPTIONS)
