"""Fitting inputs: a corpus of awkward images, each fitted into a request the local server
accepts, or refused with a clear error naming the item and the rule."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from imgpipe import Item
from kling_expand_plugin.imaging.decode import FitOptions, decode
from kling_expand_plugin.imaging.prepare import prepare
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.imaging.target import Target
from kling_expand_plugin.kling import limits
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import ExpandRequest, KlingClient
from kling_expand_plugin.localserver import LocalServer

PHOTOS = Path(__file__).parents[1] / "sample_data" / "photos"
WIDE = Target(aspect=16 / 9, max_passes=3)
SECRET = "a-secret-key-long-enough-for-hs256"


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def photo(size=(480, 320)) -> Image.Image:
    return Image.open(PHOTOS / "coffee.png").convert("RGB").resize(size)


def with_orientation(orientation: int) -> bytes:
    image = photo((600, 400))
    exif = image.getexif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (400, 300), colour) for colour in ("red", "green", "blue")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def adobe_rgb_jpeg() -> bytes:
    icc = Image.open(PHOTOS / "rocket.jpg").info["icc_profile"]
    return encode(photo(), "JPEG", icc_profile=icc)


def sixteen_bit_png() -> bytes:
    import numpy as np

    ramp = (np.arange(400 * 300, dtype=np.uint32).reshape(300, 400) * 7 % 65536).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def float_tiff() -> bytes:
    import numpy as np

    return encode(Image.fromarray(np.random.default_rng(0).random((300, 400), np.float32)), "TIFF")


CORPUS = {
    "rotated-6.jpg": lambda: with_orientation(6),
    "rotated-8.jpg": lambda: with_orientation(8),
    "cmyk.jpg": lambda: encode(photo().convert("CMYK"), "JPEG"),
    "adobe-rgb.jpg": adobe_rgb_jpeg,
    "palette-transparent.png": lambda: encode(photo().convert("P"), "PNG", transparency=0),
    "la.png": lambda: encode(photo().convert("LA"), "PNG"),
    "rgba.png": lambda: encode(photo().convert("RGBA"), "PNG"),
    "grey.png": lambda: encode(photo().convert("L"), "PNG"),
    "bilevel.png": lambda: encode(photo().convert("1"), "PNG"),
    "sixteen-bit.png": sixteen_bit_png,
    "float.tif": float_tiff,
    "photo.webp": lambda: encode(photo(), "WEBP"),
    "photo.bmp": lambda: encode(photo(), "BMP"),
    "animated.gif": animated_gif,
    "thumbnail.png": lambda: encode(photo((200, 133)), "PNG"),
    "one-pixel.png": lambda: encode(Image.new("RGB", (1, 1), "red"), "PNG"),
    "tall-banner.png": lambda: encode(photo((300, 1200)), "PNG"),
    "wide-banner.jpg": lambda: encode(photo((1600, 400)), "JPEG"),
    "sliver.png": lambda: encode(photo((2, 500)), "PNG"),
    "forty-megapixels.tif": lambda: encode(photo((8000, 5000)), "TIFF"),
}

REFUSED = {
    "empty.png": (b"", "the file is empty"),
    "notes.txt": (b"just some notes, not a picture", "not an image Pillow can read"),
    "truncated.jpg": (encode(photo(), "JPEG")[:3000], "corrupt or truncated"),
    "truncated.png": (encode(photo(), "PNG")[:300], "corrupt or truncated"),
    "bomb.png": (encode(Image.new("1", (12000, 12000)), "PNG"), "decompression-bomb limit"),
}


@pytest.fixture(scope="module")
def client():
    with (
        LocalServer(
            access_key="ak", secret_key=SECRET, fill_method="fast", latency=60.0, concurrency=100
        ) as server,
        KlingClient(server.url, Credentials(access_key="ak", secret_key=SECRET)) as client,
    ):
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_awkward_input_is_fitted_into_a_request_the_server_accepts(client, name):
    _decoded, upload, plan = prepare(Item(name, CORPUS[name]()), WIDE)
    image = Image.open(io.BytesIO(upload.data))
    assert image.format in limits.FORMATS and len(upload.data) <= limits.MAX_FILE_BYTES
    assert min(image.size) >= limits.MIN_SIDE
    assert limits.MIN_ASPECT <= image.width / image.height <= limits.MAX_ASPECT
    assert (upload.width, upload.height) == image.size == plan.upload_size
    task = client.create(ExpandRequest(image=upload.image_field(), ratios=plan.passes[0]))
    assert task.task_id


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_cannot_be_fitted_is_refused_naming_the_item_and_the_rule(name):
    data, problem = REFUSED[name]
    with pytest.raises(FitError) as error:
        prepare(Item(name, data), WIDE)
    message = str(error.value)
    assert message.startswith(f"item {name!r}: ") and problem in message and "(rule: " in message


def test_a_conforming_jpeg_is_sent_byte_for_byte():
    data = (PHOTOS / "coffee.png").read_bytes()
    _decoded, upload, _plan = prepare(Item("coffee.png", data), WIDE)
    assert upload.data == data and upload.changes == () and upload.scale == 1.0
    assert base64.b64decode(upload.image_field()) == data


def test_a_conforming_url_is_passed_through_untouched(http_server):
    data = encode(photo(), "JPEG")
    url = http_server({"/p.jpg": data}) + "/p.jpg"
    _decoded, upload, _plan = prepare(Item(url, url), WIDE)
    assert upload.image_field() == url and upload.data == data


def test_a_small_image_is_upscaled_and_the_change_recorded():
    _decoded, upload, _plan = prepare(Item("thumb.png", encode(photo((200, 150)), "PNG")), WIDE)
    assert (upload.width, upload.height) == (400, 300) and upload.scale == 2.0
    assert "upscaled 200 x 150 to 400 x 300" in upload.changes


def test_exif_orientation_is_applied():
    decoded, upload, _plan = prepare(Item("phone.jpg", with_orientation(6)), WIDE)
    assert (upload.width, upload.height) == (400, 600)
    assert decoded.changes[0] == "applied EXIF orientation 6"


def test_an_icc_profile_is_honoured_for_the_upload_and_kept_for_the_result():
    decoded = decode(Item("adobe.jpg", adobe_rgb_jpeg()))
    assert decoded.icc_profile is not None
    assert decoded.original.tobytes() != decoded.image.tobytes()  # sRGB for the upload differs
    assert "converted from its ICC profile to sRGB for the upload" in decoded.changes


def test_sixteen_bit_is_scaled_not_clipped():
    decoded = decode(Item("deep.png", sixteen_bit_png()))
    low, high = decoded.original.getextrema()
    assert decoded.original.mode == "L" and high > 200 and low < 50


def test_transparency_is_flattened_onto_the_background_for_the_upload_only():
    data = encode(Image.new("RGBA", (400, 300), (0, 0, 0, 0)), "PNG")
    options = FitOptions(background=(0, 255, 0))
    decoded, upload, _plan = prepare(Item("logo.png", data), WIDE, options)
    assert decoded.original.mode == "RGBA"
    assert Image.open(io.BytesIO(upload.data)).convert("RGB").getpixel((5, 5)) == (0, 255, 0)


def test_an_animated_image_can_be_refused():
    with pytest.raises(FitError, match=r"item 'a.gif': the image is animated"):
        prepare(Item("a.gif", animated_gif()), WIDE, FitOptions(animated="reject"))


@pytest.mark.slow
def test_an_upload_pixel_cap_downscales_but_never_below_300_px():
    _, upload, _ = prepare(
        Item("big.png", encode(photo((2000, 1500)), "PNG")),
        WIDE,
        FitOptions(max_upload_pixels=10**6),
    )
    assert upload.width * upload.height <= 10**6 * 1.01 and upload.scale < 1
    _decoded, upload, _plan = prepare(
        Item("big.png", encode(photo((2000, 1500)), "PNG")),
        WIDE,
        FitOptions(max_upload_pixels=1000),
    )
    assert min(upload.width, upload.height) == 300


@pytest.mark.slow
def test_a_file_over_10_mb_is_re_encoded_under_it():
    noise = Image.effect_noise((2400, 2400), 100).convert("RGB")
    data = encode(noise, "PNG")
    assert len(data) > limits.MAX_FILE_BYTES
    _decoded, upload, _plan = prepare(Item("big.png", data), WIDE)
    assert len(upload.data) <= limits.MAX_FILE_BYTES and upload.format == "JPEG"


def test_a_banner_is_padded_within_the_target_and_reject_refuses_it():
    data = encode(photo((1200, 300)), "PNG")
    _decoded, upload, plan = prepare(Item("banner.png", data), WIDE)
    assert (upload.width, upload.height) == (1200, 480) and plan.pad == (0, 90, 0, 90)
    with pytest.raises(FitError, match=r"item 'banner.png': .*aspect_policy"):
        prepare(Item("banner.png", data), Target(aspect=3.0, aspect_policy="reject"))


@pytest.mark.slow
def test_the_corpus_is_not_all_sent_unchanged():
    # The corpus must exercise fitting: only conforming PNGs may be sent as they are.
    unchanged = {
        name for name in CORPUS if not prepare(Item(name, CORPUS[name]()), WIDE)[1].changes
    }
    assert unchanged == {"rgba.png", "grey.png"}  # opaque RGBA and 8-bit grey are valid as is


@pytest.mark.parametrize(
    "size, target, expected",
    [
        ((200, 32), Target(aspect=1.0, area="max"), "no 1 canvas holds 200 x 32 within"),
        ((200, 80), Target(aspect=16 / 9, area=4.0), "growing 200 x 80 to 337 x 190 needs more"),
        ((200, 80), Target(aspect=16 / 9, area=1.1), "of 1.1x the area of 200 x 80 would have"),
    ],
)
def test_a_refusal_quotes_the_inputs_own_size_not_the_upscaled_one(size, target, expected):
    """A strip of 200 px is upscaled to 750 px for the upload; the user never sees that."""
    with pytest.raises(FitError) as refused:
        prepare(Item("strip.png", encode(photo(size), "PNG")), target)
    assert expected in str(refused.value) and "750" not in str(refused.value)


def test_a_jpeg_sent_as_it_is_is_planned_without_a_full_decode():
    from kling_expand_plugin.imaging.prepare import prepare_as_sent
    from kling_expand_plugin.imaging.target import parse_aspect

    data = encode(photo((900, 600)), "JPEG", quality=90)
    target = Target(aspect=parse_aspect("16:9"), area=2.0)
    light = prepare_as_sent(Item("p.jpg", data), target)
    _, upload, plan = prepare(Item("p.jpg", data), target)
    assert light is not None and light == (upload, plan)
    assert light[0].data == data  # byte for byte


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(photo((900, 600)), "JPEG", quality=90)[:-3000],  # cut off
        lambda: with_orientation(6),  # turned by its EXIF
        lambda: adobe_rgb_jpeg(),  # converted to sRGB for the upload
        lambda: encode(photo((900, 600)), "PNG"),  # only JPEGs take the short way
        lambda: encode(photo((200, 120)), "JPEG"),  # upscaled
    ],
)
def test_anything_else_takes_the_full_decode(make):
    from kling_expand_plugin.imaging.prepare import prepare_as_sent
    from kling_expand_plugin.imaging.target import parse_aspect

    target = Target(aspect=parse_aspect("16:9"), area=2.0)
    assert prepare_as_sent(Item("x.jpg", make()), target) is None
