from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from hooks import Item
from kling_expand_plugin import limits
from kling_expand_plugin.prepare import FitError, prepare


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def test_a_conforming_jpeg_is_sent_byte_for_byte():
    data = encode(Image.new("RGB", (640, 427), (10, 20, 30)), "JPEG")
    upload = prepare(Item("rocket.jpg", data))
    assert upload.data == data and upload.format == "JPEG" and upload.changes == ()
    assert base64.b64decode(upload.as_base64()) == data
    assert (upload.width, upload.height, upload.scale) == (640, 427, 1.0)


def test_a_small_image_is_upscaled_to_300_px_and_the_change_recorded():
    upload = prepare(Item("thumb.png", encode(Image.new("RGB", (200, 150)), "PNG")))
    assert (upload.width, upload.height) == (400, 300)
    assert upload.scale == 2.0 and upload.original_size == (200, 150)
    assert "upscaled 200 x 150 to 400 x 300" in upload.changes[0]


def test_an_unsupported_format_is_re_encoded():
    upload = prepare(Item("photo.webp", encode(Image.new("RGB", (400, 400), "red"), "WEBP")))
    assert upload.format == "JPEG" and "re-encoded WEBP as JPEG" in upload.changes[-1]
    assert Image.open(io.BytesIO(upload.data)).format == "JPEG"


def test_transparency_is_kept_in_png():
    upload = prepare(Item("logo.gif", encode(Image.new("RGBA", (400, 400), (0, 0, 0, 0)), "PNG")))
    assert upload.format == "PNG"  # conforming PNG, sent as is


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (600, 400))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees
    upload = prepare(Item("phone.jpg", encode(image, "JPEG", exif=exif)))
    assert (upload.width, upload.height) == (400, 600)
    assert upload.changes[0] == "applied EXIF orientation 6"


def test_a_file_over_10_mb_is_re_encoded_under_it():
    noise = Image.effect_noise((2400, 2400), 100).convert("RGB")
    data = encode(noise, "PNG")
    assert len(data) > limits.MAX_FILE_BYTES
    upload = prepare(Item("big.png", data))
    assert len(upload.data) <= limits.MAX_FILE_BYTES and upload.format == "JPEG"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "the file is empty"),
        (b"just some notes, not a picture", "not an image Pillow can read"),
        (encode(Image.new("RGB", (400, 400)), "PNG")[:200], "corrupt or truncated"),
    ],
)
def test_what_is_not_an_image_is_refused_naming_the_item(data, problem):
    with pytest.raises(FitError) as error:
        prepare(Item("notes.txt", data))
    assert str(error.value).startswith("item 'notes.txt': ") and problem in str(error.value)


def test_an_aspect_ratio_outside_the_limits_is_refused_naming_the_rule():
    with pytest.raises(FitError, match=r"item 'banner.png': aspect ratio 1200 x 300 .*1:2.5"):
        prepare(Item("banner.png", encode(Image.new("RGB", (1200, 300)), "PNG")))
