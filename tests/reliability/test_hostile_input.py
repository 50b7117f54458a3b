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
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image

from imgpipe import Item
from kling_expand_plugin.imaging.decode import FitOptions, decode
from kling_expand_plugin.imaging.prepare import prepare
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.imaging.target import Target

from . import corpus
from .corpus import CORPUS, PLANNED, RAMP, picture

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


def small(make: Callable[[np.ndarray], bytes], scale: float) -> bytes:
    return make(picture((64, 48)) * scale)


VALID = {format: encoded(format) for format in FORMATS}
VALID["PNG-RGBA"] = encoded("PNG", mode="RGBA")
VALID["GIF-animated"] = animated_gif()
VALID["TIFF-LZW"] = corpus.encode(
    Image.open(io.BytesIO(VALID["PNG"])), "TIFF", compression="tiff_lzw"
)
VALID["TIFF-G4-grey-profile"] = corpus.encode(
    Image.open(io.BytesIO(VALID["PNG"])).convert("1"),
    "TIFF",
    compression="group4",
    icc_profile=corpus.grey_icc(),
)
VALID["PNG-LA-grey-profile"] = corpus.encode(
    Image.open(io.BytesIO(VALID["PNG-RGBA"])).convert("LA"), "PNG", icc_profile=corpus.grey_icc()
)
VALID["PNG-12-in-16-sBIT"] = small(lambda values: corpus.png_with_sbit(values, 12), 4095)
VALID["PNG-16-bit-RGB"] = small(corpus.deep_colour_png, 65535)
VALID["TIFF-float"] = small(corpus.floats, 1.0)
VALID["DDS-DXT1"] = corpus.encode(
    Image.open(io.BytesIO(VALID["PNG-RGBA"])), "DDS", pixel_format="DXT1"
)
RAW_TEXTS = (
    "decoder error",
    "MAX_TEXT_CHUNK",
    "Missing dimensions",
    "cannot build transform",
    "Unimplemented",
    "cannot find loader",
    "Unable to locate",
    "Error:",
    "Traceback",
)
"""Library texts that reached users before issue 15: none may appear in a refusal."""


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
        assert not [text for text in RAW_TEXTS if text in str(error)], error
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


# -- one of each kind issue 15 found, made by hand (tests/reliability/corpus.py) ----------------

NOT_CORRUPT = [name for name, (_, reason) in CORPUS.items() if "corrupt" not in reason]


@pytest.fixture
def no_ghostscript(monkeypatch, tmp_path):
    """No `gs` on PATH, and Pillow looks for it again."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    assert not EpsImagePlugin.has_ghostscript()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_kind_is_planned_or_refused_with_its_reason(name, no_ghostscript):
    make, expected = CORPUS[name]
    item = Item(name, make())
    if expected == PLANNED:
        _, upload, plan = prepare(item, TARGET)
        assert upload.data and plan.passes
        return
    with pytest.raises(FitError) as refused:
        prepare(item, TARGET)  # the default max_pixels: the bound per byte refuses the claim
    error = refused.value
    assert expected in error.problem, error
    assert str(error).startswith(f"item {name!r}: ") and f"(rule: {error.rule})" in str(error)
    assert not [text for text in RAW_TEXTS if text in str(error)]
    assert ("corrupt" in error.problem) == (name not in NOT_CORRUPT)


def block_means(image: Image.Image) -> np.ndarray:
    """Grey levels 0..1 averaged over 20 x 20 blocks (a bilevel image's dither averages out)."""
    grey = np.asarray(image.convert("L"), dtype=np.float64) / 255
    height, width = grey.shape
    return grey.reshape(height // 20, 20, width // 20, 20).mean(axis=(1, 3))


@pytest.mark.parametrize(
    "name, same_levels",
    [
        ("bilevel-g4-grey-profile.tif", True),
        ("g4-bad-tag-value.tif", True),
        ("grey-alpha-grey-profile.png", True),
        ("twelve-in-sixteen.tif", True),
        ("twelve-in-sixteen-sbit.png", True),
        ("eight-in-sixteen.png", True),
        ("sixteen-bit-full.png", True),
        ("float-unit.tif", True),
        ("float-1-255.tif", True),
        ("float-minus-pi-pi.tif", False),  # no convention: its own range, stretched
    ],
)
def test_grey_profiles_and_high_depths_stay_the_picture_they_are(name, same_levels):
    decoded = decode(Item(name, CORPUS[name][0]()))
    got, wanted = block_means(decoded.original), block_means(Image.fromarray(RAMP * 255))
    assert np.corrcoef(got.ravel(), wanted.ravel())[0, 1] > 0.98
    if same_levels:  # scaled as declared or by the convention: the same grey levels
        assert np.abs(got - wanted).mean() < 0.03
    assert 0.2 < got.mean() < 0.8  # not black, not white


def test_a_grey_profile_is_applied_not_dropped():
    """Grey gamma 2.2 and sRGB differ a little in the shadows: converted, not merely copied."""
    decoded = decode(Item("g.png", CORPUS["grey-alpha-grey-profile.png"][0]()))
    assert decoded.original.mode == "RGBA" and decoded.icc_profile is None
    assert "converted from its grey ICC profile to sRGB" in decoded.changes


@pytest.mark.timeout(120)
@FUZZ
@given(
    st.sampled_from(("I;16", "F")),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
)
def test_any_high_depth_picture_comes_out_a_picture_or_is_refused_as_flat(mode, low, span):
    if mode == "I;16":
        low, span = abs(int(low)) % 65536, int(span)
        values = np.clip(np.round(low + RAMP * span), 0, 65535).astype(np.uint16)
        data = encode_array(values, "PNG")
    else:
        values = (low + RAMP * span).astype(np.float32)
        data = encode_array(values, "TIFF")
    try:
        decoded = decode(Item("deep", data))
    except FitError as error:
        assert "one flat colour" in error.problem and np.ptp(values) == 0
        return
    eight = np.asarray(decoded.original, dtype=np.float64)
    assert np.ptp(eight) >= 7  # never near black, never one colour
    assert np.corrcoef(eight.ravel(), values.astype(np.float64).ravel())[0, 1] > 0.95


def encode_array(values: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format)
    return buffer.getvalue()
