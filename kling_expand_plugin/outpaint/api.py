"""The Python API: expand one image, or stream a batch, without writing a pipeline.

Both functions build an `OutpaintStage` from their keyword arguments and default to the local
server, so nothing is paid for unless an endpoint URL is named. Their keywords are the stage's
options: `help()` and `inspect.signature` show them with their defaults (a signature made from
`options.OPTIONS`), and editors and mypy see their names and types (`StageOptions`).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, TypedDict, Unpack
from urllib.parse import urlsplit

from PIL import Image

from imgpipe import Item
from kling_expand_plugin.batch.budget import Budget
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.outpaint.options import SIGNATURE
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


class StageOptions(TypedDict, total=False):
    """The stage's options as keywords, for editors and mypy: each as `options.OPTIONS` (the
    README's table) names and types it, with its default there; tests/test_options.py holds the
    two the same."""

    endpoint: str
    aspect: str | float | None
    area: float | str | None
    size: str | list[int] | None
    ratios: list[float] | dict[str, float] | None
    anchor: str | list[float]
    max_passes: int
    aspect_policy: str
    n: int
    prompt: str
    watermark: bool
    concurrency: int
    order: str
    ledger: str
    budget: float | Budget | None
    retry_failed: bool
    recreate_lost: bool | None
    callback: str | None
    callback_url: str | None
    timeout: float
    attempts: int
    blend: int
    colour_match: bool
    animated: str
    background: str | list[int]
    max_pixels: int
    max_upload_pixels: int | None
    local_latency: float
    format: str
    quality: int
    png_compression: int
    slots: Slots | None


def expand(image: Source, **options: Unpack[StageOptions]) -> list[Image.Image]:
    """The `n` expanded versions of one image; raises the error that stopped it, if any.

    The keyword options are the stage's (`options.OPTIONS`, the README's table).
    """
    [result] = expand_many([image], on_error="raise", **options)
    return result.images


def expand_many(
    images: Iterable[Source] | Mapping[str, Source],
    *,
    on_error: str = "passthrough",
    **options: Unpack[StageOptions],
) -> Iterator[Expanded]:
    """Expand a batch, yielding one `Expanded` per input, in input order, as each finishes.

    `images` is an iterable of sources (keyed by file name, URL name or position) or a mapping
    of key to source; it is read lazily. A failed input is yielded with its `error` set
    (`on_error="passthrough"`, the default), or stops the batch (`on_error="raise"`).
    The other keyword options are the stage's (`options.OPTIONS`, the README's table).
    The stage is built, and its options checked, before the first input is read.
    """
    if on_error not in ("passthrough", "raise"):
        raise ValueError(f'on_error must be "passthrough" or "raise", not {on_error!r}')
    return _expanded(OutpaintStage(on_error=on_error, **options), _items(images))


def _with_options(first: list[inspect.Parameter], return_annotation: Any) -> inspect.Signature:
    options = [option for option in SIGNATURE.parameters.values() if option.name != "on_error"]
    return inspect.Signature(first + options, return_annotation=return_annotation)


expand.__signature__ = _with_options(  # type: ignore[attr-defined]
    [inspect.Parameter("image", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Source)],
    list[Image.Image],
)
expand_many.__signature__ = _with_options(  # type: ignore[attr-defined]
    [
        inspect.Parameter(
            "images",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Iterable[Source] | Mapping[str, Source],
        ),
        inspect.Parameter(
            "on_error", inspect.Parameter.KEYWORD_ONLY, default="passthrough", annotation=str
        ),
    ],
    Iterator[Expanded],
)


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
