"""The Python API: `expand` for one image, `expand_many` streaming a batch."""

from __future__ import annotations

import io
import itertools

import pytest
from PIL import Image

from imgpipe import OptionError
from kling_expand_plugin import expand, expand_many
from kling_expand_plugin.imaging.refusals import FitError

from .conftest import noisy_image

FAST = {"local_latency": 0.05}


def test_expand_a_pillow_image_keeps_its_pixels_in_the_box():
    original = noisy_image(400, 300, 1)
    (result,) = expand(original, aspect="16:9", area=2, **FAST)
    assert result.width / result.height == pytest.approx(16 / 9, abs=0.01)
    left = (result.width - 400) // 2
    top = (result.height - 300) // 2
    box = next(
        (x, y, x + 400, y + 300)
        for x, y in itertools.product(range(left - 1, left + 2), range(top - 1, top + 2))
        if result.convert("RGB").crop((x, y, x + 400, y + 300)).tobytes() == original.tobytes()
    )
    assert box


def test_expand_a_path_with_n_variants_and_an_anchor(photos):
    images = expand(photos / "a.png", size="800x300", anchor="left", n=2, **FAST)
    assert [image.size for image in images] == [(800, 300), (800, 300)]
    original = Image.open(photos / "a.png").convert("RGB")
    assert images[1].convert("RGB").crop((0, 0, 400, 300)).tobytes() == original.tobytes()


def test_expand_raises_the_error_of_an_input_it_cannot_use():
    with pytest.raises(FitError, match="not an image"):
        expand(b"plain text", aspect="16:9", **FAST)


def test_expand_refuses_a_bad_option_before_any_work():
    with pytest.raises(OptionError, match="'n'"):
        expand(b"never read", aspect="16:9", n=10)


def test_expand_many_streams_in_input_order_with_failures_in_place(photos):
    jpeg = io.BytesIO()
    noisy_image(360, 320, 2).save(jpeg, "JPEG")
    sources = [photos / "a.png", b"not an image", jpeg.getvalue(), noisy_image(480, 270, 3)]
    results = list(expand_many(sources, aspect="16:9", n=2, **FAST))
    assert [result.key for result in results] == ["a.png", "image", "image-2", "image.png"]
    first, failed, third, same = results
    assert first.ok and len(first.images) == 2 and first.metadata[0]["units"] > 0
    assert not failed.ok and "not an image" in failed.error and failed.images == []
    assert third.ok and third.images[0].width / third.images[0].height == pytest.approx(
        16 / 9, abs=0.01
    )
    assert same.ok and same.images[0].size == (480, 270) and same.metadata[0]["unchanged"]
    assert same.metadata[0]["canvas"] == [480, 270] and same.metadata[0]["box"] == [0, 0, 480, 270]
    assert set(same.metadata[0]) == set(first.metadata[0])
    key, images, error, _ = first  # a named tuple
    assert (key, len(images), error) == ("a.png", 2, None)


def test_expand_many_takes_a_mapping_and_reads_lazily(photos):
    pulled = []

    def sources():
        for name in ("x.png", "y.png"):
            pulled.append(name)
            yield photos / "a.png"

    stream = expand_many(sources(), ratios=[0, 0, 0.5, 0], **FAST)
    assert pulled == []  # nothing read until the first result is asked for
    assert [result.key for result in stream] == ["a.png", "a-1.png"]
    assert pulled == ["x.png", "y.png"]
    mapping = {"left.png": photos / "a.png", "right.png": photos / "b.jpg"}
    assert [r.key for r in expand_many(mapping, aspect="2", **FAST)] == ["left.png", "right.png"]
    with pytest.raises(OptionError):
        expand_many([], aspect="16:9", ratios=[0, 0, 0.5, 0])  # checked at once, not on iteration


def test_expand_many_on_error_raise_stops_the_batch():
    with pytest.raises(FitError):
        list(expand_many([b"nope"], aspect="16:9", on_error="raise", **FAST))
    with pytest.raises(ValueError, match="on_error"):
        expand_many([], aspect="16:9", on_error="skip")


@pytest.mark.parametrize("mode", ["F", "I", "CMYK"])
def test_an_in_memory_image_of_any_mode_is_expanded(mode):
    import numpy as np

    ramp = np.tile(np.linspace(10, 240, 480, dtype=np.float32), (320, 1))
    grey = Image.fromarray(ramp.astype(np.uint8)).convert("RGB")
    image = Image.fromarray(ramp, "F") if mode == "F" else grey.convert("L").convert(mode)
    [result] = expand(image, aspect="16:9", local_latency=0.05)
    assert result.width / result.height == pytest.approx(16 / 9, rel=0.01)
