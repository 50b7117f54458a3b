"""Results in every output format and from every input mode, over real HTTP on the embedded
local server: the format asked for, the original's mode where the format has it, its colour
profile and its EXIF data (less the orientation) kept."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from imgpipe.encoding import encode
from kling_expand_plugin import expand_many
from kling_expand_plugin.imaging.output import Namer, OutputFormat

FAST = {"local_latency": 0.05, "endpoint": "local"}
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
OTHER_RGB = SRGB.replace(b"sRGB", b"XRGB")
"""An RGB profile that is not called sRGB, so that the input's colours are managed through it."""


def photo(size=(400, 300), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None]
    base = rng.uniform(40, 200, 3) * x + 30 + rng.normal(0, 8, (size[1], size[0], 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def results(sources: dict[str, bytes], **options) -> dict[str, list[Image.Image]]:
    done = {}
    for result in expand_many(sources, aspect="16:9", **FAST, **options):
        assert result.ok, result.error
        done[result.key] = result.images
    return done


def test_auto_keeps_jpeg_png_and_webp_and_makes_png_of_anything_else():
    image = photo()
    sources = {
        f"p.{ext}": encoded(image, fmt) for ext, fmt in [("jpg", "JPEG"), ("png", "PNG"),
                                                         ("webp", "WEBP"), ("gif", "GIF"),
                                                         ("bmp", "BMP")]
    }  # fmt: skip
    formats = {key: images[0].format for key, images in results(sources).items()}
    assert formats == {"p.jpg": "JPEG", "p.png": "PNG", "p.webp": "WEBP", "p.gif": "PNG",
                       "p.bmp": "PNG"}  # fmt: skip


@pytest.mark.parametrize("format", ["png", "jpeg", "webp"])
def test_each_format_keeps_the_icc_profile_and_the_exif_less_its_orientation(format):
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"  # Make
    exif[0x0112] = 6  # Orientation: rotated; the pixels are written upright instead
    source = encoded(photo((400, 300)), "JPEG", quality=92, exif=exif, icc_profile=OTHER_RGB)
    [result] = expand_many({"p.jpg": source}, aspect="16:9", format=format, **FAST)
    [image], [meta] = result.images, result.metadata
    left, top, right, bottom = meta["box"]
    assert (right - left, bottom - top) == (300, 400)  # upright: the orientation was applied
    preview = Image.open(io.BytesIO(meta["preview"]))  # for the report: no second decode
    assert preview.format == "JPEG" and preview.width <= 512 and preview.height <= 320
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[format]
    assert image.info.get("icc_profile") == OTHER_RGB
    kept = image.getexif()
    assert kept.get(0x010F) == "Camera Maker" and 0x0112 not in kept


def test_an_srgb_tagged_input_keeps_its_tag():
    [image] = results({"p.png": encoded(photo(), "PNG", icc_profile=SRGB)})["p.png"]
    assert image.info.get("icc_profile") == SRGB


@pytest.mark.parametrize(
    ("mode", "format", "expected"),
    [
        ("L", "png", "L"),
        ("L", "jpeg", "L"),
        ("L", "webp", "RGB"),  # WebP has no grey
        ("LA", "png", "LA"),
        ("LA", "jpeg", "L"),  # no transparency in JPEG: flattened onto the background
        ("RGBA", "webp", "RGBA"),
        ("RGBA", "jpeg", "RGB"),
        ("1", "png", "L"),
        ("I;16", "png", "L"),  # 8-bit: the generated area has no more precision
        ("P", "png", "RGB"),  # the generated area does not fit a 256-colour palette
        ("CMYK", "jpeg", "CMYK"),
        ("CMYK", "png", "RGB"),
    ],
)
def test_every_input_mode_gives_a_result_in_the_mode_the_format_allows(mode, format, expected):
    image = photo()
    if mode == "RGBA" or mode == "LA":
        image = image.convert("RGBA")
        alpha = np.full((300, 400), 255, np.uint8)
        alpha[:, :50] = 0
        image.putalpha(Image.fromarray(alpha))
    if mode == "I;16":
        source_image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
        assert source_image.mode == "I;16"
    else:
        source_image = image.convert(mode)
    file_format = "TIFF" if mode == "CMYK" and format == "png" else "PNG"
    if mode == "CMYK" and format == "jpeg":
        file_format = "JPEG"
    source = encoded(source_image, file_format)
    [result] = results({"in.img": source}, format=format)["in.img"]
    assert result.mode == expected
    assert result.width / result.height == pytest.approx(16 / 9, abs=0.01)


def test_an_image_already_of_the_shape_in_cmyk_comes_back_as_a_cmyk_jpeg():
    source = encoded(photo((1600, 900)).convert("CMYK"), "JPEG", quality=90)
    [result] = results({"cmyk.jpg": source})["cmyk.jpg"]
    assert (result.format, result.mode, result.size) == ("JPEG", "CMYK", (1600, 900))


def test_quality_and_png_compression_change_the_files():
    source = encoded(photo((600, 400)), "PNG")
    low = results({"a.png": source}, format="jpeg", quality=30)["a.png"][0]
    high = results({"a.png": source}, format="jpeg", quality=95)["a.png"][0]
    assert len(encoded(low, "JPEG", quality=30)) < len(encoded(high, "JPEG", quality=95))
    image = photo((600, 400))
    fast, small = (encode(image, "PNG", png_compression=level) for level in (0, 9))
    assert len(small) < len(fast)
    assert Image.open(io.BytesIO(small)).tobytes() == image.tobytes()


def test_the_naming_rule_keeps_the_extension_only_when_a_name_is_taken():
    names = Namer()
    given = [names.name(key) for key in ("photo.jpg", "photo.png", "Photo.gif", "a/b.png", "x")]
    assert given == ["photo", "photo.png", "Photo.gif", "a/b", "x"]
    assert names.name("photo.png") == "photo.png-2"
    long = "é" * 150 + ".png"  # 300 bytes
    name = Namer().name(long)
    assert len(name.encode()) <= 176 and name.startswith("é") and "~" in name
    assert OutputFormat().extension("JPEG") == "jpg" and OutputFormat("webp").extension("PNG")
