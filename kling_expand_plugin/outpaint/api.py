"""The Python API: expand one image, or stream a batch, without writing a pipeline.

Both functions build an `OutpaintStage` from their keyword arguments and default to the local
server, so nothing is paid for unless an endpoint URL is named. Their keyword parameters are
written out, so that an editor and mypy see them; tests/test_options.py holds them to the
stage's option schema (`options.OPTIONS`).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from PIL import Image

from imgpipe import Item
from kling_expand_plugin.batch.budget import Budget
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.imaging.prepare import DEFAULT_MAX_PIXELS
from kling_expand_plugin.outpaint.stage import OutpaintStage

Source = str | os.PathLike[str] | bytes | Image.Image
"""An image to expand: a file path, an http(s) URL, the encoded bytes, or a Pillow image."""


class Expanded(NamedTuple):
    """One input of a batch: its key, its result images, and the error if it failed.

    `metadata` holds each image's `metadata["outpaint"]`, with the same keys for every result
    (canvas, box, passes, units, unchanged, ...). An input that already had the target shape
    comes back as one image, itself, with no task (`unchanged` is true).
    """

    key: str
    images: list[Image.Image]
    error: str | None
    metadata: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.error is None


def expand(
    image: Source,
    *,
    endpoint: str = "local",
    aspect: str | float | None = None,
    area: float | str | None = None,
    size: str | list[int] | None = None,
    ratios: list[float] | dict[str, float] | None = None,
    anchor: str | list[float] = "center",
    max_passes: int = 1,
    aspect_policy: str = "pad",
    n: int = 1,
    prompt: str = "",
    watermark: bool = False,
    concurrency: int = 4,
    order: str = "input",
    ledger: str = "auto",
    budget: float | Budget | None = None,
    retry_failed: bool = False,
    recreate_lost: bool | None = None,
    callback: str | None = None,
    callback_url: str | None = None,
    timeout: float = 6 * 3600,
    attempts: int = 5,
    blend: int = 8,
    colour_match: bool = False,
    animated: str = "first",
    background: str | list[int] = "white",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_pixels: int | None = None,
    local_latency: float = 1.0,
    format: str = "auto",
    quality: int = 92,
    png_compression: int = 1,
    slots: Slots | None = None,
) -> list[Image.Image]:
    """The `n` expanded versions of one image; raises the error that stopped it, if any.

    The keyword options are the stage's (`options.OPTIONS`, the README's table).
    """
    options = {name: value for name, value in locals().items() if name != "image"}
    [result] = expand_many([image], on_error="raise", **options)
    return result.images


def expand_many(
    images: Iterable[Source] | Mapping[str, Source],
    *,
    endpoint: str = "local",
    aspect: str | float | None = None,
    area: float | str | None = None,
    size: str | list[int] | None = None,
    ratios: list[float] | dict[str, float] | None = None,
    anchor: str | list[float] = "center",
    max_passes: int = 1,
    aspect_policy: str = "pad",
    n: int = 1,
    prompt: str = "",
    watermark: bool = False,
    concurrency: int = 4,
    order: str = "input",
    on_error: str = "passthrough",
    ledger: str = "auto",
    budget: float | Budget | None = None,
    retry_failed: bool = False,
    recreate_lost: bool | None = None,
    callback: str | None = None,
    callback_url: str | None = None,
    timeout: float = 6 * 3600,
    attempts: int = 5,
    blend: int = 8,
    colour_match: bool = False,
    animated: str = "first",
    background: str | list[int] = "white",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_pixels: int | None = None,
    local_latency: float = 1.0,
    format: str = "auto",
    quality: int = 92,
    png_compression: int = 1,
    slots: Slots | None = None,
) -> Iterator[Expanded]:
    """Expand a batch, yielding one `Expanded` per input, in input order, as each finishes.

    `images` is an iterable of sources (keyed by file name, URL name or position) or a mapping
    of key to source; it is read lazily. A failed input is yielded with its `error` set
    (`on_error="passthrough"`, the default), or stops the batch (`on_error="raise"`).
    The other keyword options are the stage's (`options.OPTIONS`, the README's table).
    The stage is built, and its options checked, before the first input is read.
    """
    options = {name: value for name, value in locals().items() if name != "images"}
    if on_error not in ("passthrough", "raise"):
        raise ValueError(f'on_error must be "passthrough" or "raise", not {on_error!r}')
    return _expanded(OutpaintStage(**options), _items(images))


def _expanded(stage: OutpaintStage, items: Iterable[Item]) -> Iterator[Expanded]:
    # Leaving the loop early closes the stage's run, which stops its workers.
    with contextlib.closing(stage(items)) as outputs:
        yield from _grouped(outputs)


def _grouped(outputs: Iterable[Item]) -> Iterator[Expanded]:
    for key, results in by_source(outputs):
        error = failure_of(results[0])
        if error is not None:
            yield Expanded(key, [], error, [])
            continue
        yield Expanded(
            key,
            [_decoded(result) for result in results],
            None,
            [result.metadata.get("outpaint", {}) for result in results],
        )


def by_source(results: Iterable[Item]) -> Iterator[tuple[str, list[Item]]]:
    """The stage's output grouped per input: (source key, its items), each as soon as complete.

    An input gives as many results as its task returned (`variants` in each one's metadata),
    or one item handed on unchanged (already the target shape, or failed with
    `on_error="passthrough"`). Results are matched to their input by key, never by position.
    """
    group: list[Item] = []
    for item in results:
        if group and source_key(item) != source_key(group[0]):  # the stage stopped an input short
            yield source_key(group[0]), group
            group = []
        group.append(item)
        if len(group) >= int(item.metadata.get("outpaint", {}).get("variants", 1)):
            yield source_key(group[0]), group
            group = []
    if group:  # only when the stage stopped early
        yield source_key(group[0]), group


def source_key(item: Item) -> str:
    """The key of the input an output item came from."""
    return str(item.metadata.get("outpaint", {}).get("source_key", item.key))


def failure_of(item: Item) -> str | None:
    """The error text of an input the stage handed on as failed; None otherwise."""
    error = item.metadata.get("outpaint", {}).get("error")
    return None if error is None else str(error)


def to_item(image: Source, key: str | None = None) -> Item:
    """An `Item` for a source; the key defaults to the file's or the URL's name."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        if image.mode in ("F", "I", "CMYK", "YCbCr", "LAB", "HSV"):  # modes PNG cannot hold
            image.save(buffer, "TIFF")
            return Item(key or "image.tif", buffer.getvalue(), "image/tiff")
        image.save(buffer, "PNG")
        return Item(key or "image.png", buffer.getvalue(), "image/png")
    if isinstance(image, bytes):
        return Item(key or "image", image)
    text = os.fspath(image)
    if text.startswith(("http://", "https://")):
        return Item(key or url_name(text), text)
    return Item(key or Path(text).name, Path(text))


def url_name(url: str) -> str:
    """A file name for a URL: the last part of its path, or "image"."""
    return PurePosixPath(urlsplit(url).path).name or "image"


def _items(images: Iterable[Source] | Mapping[str, Source]) -> Iterator[Item]:
    """Items with distinct keys: a repeated name gets its position appended."""
    pairs: Iterable[tuple[str | None, Source]] = (
        images.items() if isinstance(images, Mapping) else ((None, image) for image in images)
    )
    seen: set[str] = set()
    for index, (key, image) in enumerate(pairs):
        item = to_item(image, key)
        path, tag = PurePosixPath(item.key), str(index)
        while item.key in seen:  # a repeated name: its position, then more, until it is new
            item.key = f"{path.stem}-{tag}{path.suffix}"
            tag += "-1"
        seen.add(item.key)
        yield item


def _decoded(item: Item) -> Image.Image:
    image = Image.open(io.BytesIO(item.read_bytes()))
    image.load()
    return image
