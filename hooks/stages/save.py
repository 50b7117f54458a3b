"""The built-in `save` stage: write each item's image to a folder."""

from __future__ import annotations

import io
import os
import string
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from ..errors import OptionError
from ..item import Item
from ..markers import hookimpl
from ..registry import Register, Stage

FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "TIFF": "tif", "GIF": "gif"}


@hookimpl
def register_stages(register: Register) -> None:
    register("save", save)


def save(
    *,
    folder: str,
    name: str = "{stem}.{ext}",
    format: str = "keep",
    quality: int = 95,
) -> Stage:
    """Write each item to `folder` and pass it on with `metadata["saved_path"]` set.

    `name` is a format string over `key`, `stem` (the key without its extension), `ext`,
    `index` (the item's position in the stream) and any metadata value. `format` is `keep`
    (the item's own encoding, written byte for byte) or one of png, jpeg, webp, tiff.
    Files are written atomically; two items of one run may not write the same file.
    """
    if not isinstance(folder, str) or not folder:
        raise OptionError("folder", "must be a folder path")
    if format != "keep" and format.lower() not in FORMATS:
        raise OptionError("format", f"{format!r} is not keep or one of {', '.join(FORMATS)}")
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise OptionError("quality", f"{quality!r} is not a whole number from 1 to 100")
    fields = {field for _, field, _, _ in string.Formatter().parse(name) if field}
    if not fields:
        raise OptionError("name", f"{name!r} uses no field, so every item would get one name")
    target_format = None if format == "keep" else FORMATS[format.lower()]

    def stage(items: Iterable[Item]) -> Iterator[Item]:
        written: dict[Path, str] = {}
        for index, item in enumerate(items):
            data, pil_format = _encode(item, target_format, quality)
            path = Path(folder) / _relative_name(
                name, item, index, EXTENSIONS.get(pil_format, "bin")
            )
            if path in written:
                raise ValueError(
                    f"save: items {written[path]!r} and {item.key!r} would both be written to "
                    f"{path}; put a distinguishing field such as {{key}} in name"
                )
            written[path] = item.key
            _write_atomically(path, data)
            item.metadata["saved_path"] = str(path)
            yield item

    return stage


def _encode(item: Item, target_format: str | None, quality: int) -> tuple[bytes, str]:
    """The bytes to write and their Pillow format name."""
    data = item.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        source_format = image.format or "PNG"
        if target_format is None or target_format == source_format:
            return data, source_format
        converted: Image.Image = image
        if target_format == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
            converted = image.convert("RGB")
        buffer = io.BytesIO()
        options: dict[str, Any] = {"quality": quality} if target_format in ("JPEG", "WEBP") else {}
        converted.save(buffer, target_format, **options)
        return buffer.getvalue(), target_format


def _relative_name(pattern: str, item: Item, index: int, ext: str) -> PurePosixPath:
    stem = PurePosixPath(item.key).with_suffix("").as_posix() if item.key else f"item{index}"
    values = {**item.metadata, "key": item.key, "stem": stem, "ext": ext, "index": index}
    try:
        rendered = pattern.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"save: item {item.key!r}: name {pattern!r} cannot be filled: {exc}"
        ) from None
    relative = PurePosixPath(rendered.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"save: item {item.key!r}: name {rendered!r} leaves the folder")
    return relative


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
