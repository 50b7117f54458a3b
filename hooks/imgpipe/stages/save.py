"""The built-in `save` stage: write each item's image to a folder."""

from __future__ import annotations

import difflib
import io
import logging
import shutil
import string
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from PIL import Image

from ..encoding import DEFAULT_PNG_COMPRESSION, EXTENSIONS, FORMATS, encode
from ..errors import ConfigError, OptionError
from ..files import ExistsError, clean_leftovers, fit_name, is_inside, write_atomically
from ..item import Item
from ..markers import hookimpl
from ..registry import Register, Stage
from ..runner import Failure

log = logging.getLogger(__name__)
ESTIMATED_BYTES = "_estimated_bytes"
"""A previewed item's metadata key: about how many bytes it will take (for the space check)."""


@hookimpl
def register_stages(register: Register) -> None:
    register("save", save)


def save(
    *,
    folder: str,
    name: str = "{stem}.{ext}",
    format: str = "keep",
    quality: int = 95,
    png_compression: int = DEFAULT_PNG_COMPRESSION,
    overwrite: bool = False,
) -> Stage:
    """Write each item to `folder` and pass it on with `metadata["saved_path"]` set.

    `name` is a format string over `key`, `stem` (the key without its extension), `ext`,
    `index` (the item's position in the stream) and any metadata value. `format` is `keep`
    (the item's own encoding, written byte for byte) or one of png, jpeg, webp, tiff; a
    conversion keeps the colour profile and the EXIF data. Files are written atomically, with
    the umask's permissions; an existing file with other content is replaced only with
    `overwrite`. An item that cannot be written is logged as an error (its
    `metadata["save_error"]` says why) and the rest go on.
    """
    if not isinstance(folder, str) or not folder:
        raise OptionError("folder", "must be a folder path")
    if format != "keep" and (not isinstance(format, str) or format.lower() not in FORMATS):
        raise OptionError("format", f"{format!r} is not keep or one of {', '.join(FORMATS)}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise OptionError("quality", f"{quality!r} is not a whole number from 1 to 100")
    if not isinstance(png_compression, int) or not 0 <= png_compression <= 9:
        raise OptionError("png_compression", f"{png_compression!r} is not a whole number 0..9")
    if not isinstance(overwrite, bool):
        raise OptionError("overwrite", f"{overwrite!r} is not true or false")
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(name) if field}
    except ValueError as exc:
        raise OptionError("name", f"{name!r} is not a valid name pattern: {exc}") from None
    if not fields:
        raise OptionError("name", f"{name!r} uses no field, so every item would get one name")
    target = None if format == "keep" else FORMATS[format.lower()]
    return Save(Path(folder), name, target, quality, png_compression, overwrite)


class Save:
    """The stage `save` builds; `check` and `preview` serve the host's checks before work."""

    def __init__(
        self,
        folder: Path,
        pattern: str,
        target: str | None,
        quality: int,
        png_compression: int,
        overwrite: bool,
    ) -> None:
        self.folder, self.pattern, self.target = folder, pattern, target
        self.quality, self.png_compression, self.overwrite = quality, png_compression, overwrite

    def check(self, items: list[Item] | None) -> None:
        """Before any work: the folder can be written, the name renders for every item the
        pipeline will give (when the stages before can say), and no two items get one file
        (names compared without case)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.folder).close()
        except OSError as exc:
            raise ConfigError(
                f"save: option 'folder': {self.folder} cannot be written: {exc.strerror}"
            ) from None
        for path in clean_leftovers(self.folder):
            log.info("save: removed %s, left by a writer that was killed", path)
        folder = self.folder.resolve()
        for item in items or []:
            if isinstance(item.image, Path) and is_inside(item.image.resolve(), [folder]):
                raise ConfigError(
                    f"save: {item.image} is read from {self.folder}, where the results are "
                    "written, so results would be processed again; write elsewhere, or add the "
                    "folder to load's exclude"
                )
        needed = sum(int(item.metadata.get(ESTIMATED_BYTES) or 0) for item in items or [])
        free = shutil.disk_usage(self.folder).free
        if needed > free:
            raise ConfigError(
                f"save: option 'folder': {self.folder} has {free / 1e6:.1f} MB free; the "
                f"results need about {needed / 1e6:.1f} MB (an estimate)"
            )
        written: dict[str, Item] = {}
        existing = []
        for index, item in enumerate(items or []):
            try:
                path = self.folder / self.relative_name(item, index, self._extension_of(item))
            except ValueError as exc:
                raise ConfigError(f"save: option 'name': {exc}") from None
            other = written.setdefault(str(path).casefold(), item)
            if other is not item:
                raise ConfigError(
                    f"save: items {other.key!r} and {item.key!r} would both be written to "
                    f"{path}; put a field that tells them apart, such as {{key}}, in name"
                )
            existing += [path] if path.exists() else []
        if existing and not self.overwrite:
            log.warning(
                "save: %d of the files to write exist in %s (the first: %s); those that come "
                "out the same are left as they are, the others are not replaced (each is an "
                "error) unless overwrite = true",
                len(existing),
                self.folder,
                existing[0],
            )

    def preview(self, items: list[Item]) -> list[Item]:
        return items

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        self.failures: list[Failure] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        written: dict[str, tuple[int, str]] = {}  # not the items: their images would stay
        for index, item in enumerate(items):
            try:
                path = self._save(item, index, written)
                item.metadata["saved_path"] = str(path)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                log.error("save: item %r not written: %s", item.key, reason)
                item.metadata["save_error"] = reason
                self.failures.append(Failure(item.key, f"not written: {reason}"))
            yield item

    def _save(self, item: Item, index: int, written: dict[str, tuple[int, str]]) -> Path:
        data, pil_format = self._encode(item)
        path = self.folder / self.relative_name(item, index, EXTENSIONS.get(pil_format, "bin"))
        index_before, key_before = written.setdefault(str(path).casefold(), (index, item.key))
        if index_before != index:
            raise ValueError(f"item {key_before!r} was written to {path} already in this run")
        try:
            write_atomically(path, data, overwrite=self.overwrite)
        except ExistsError as exc:
            raise ExistsError(f"{exc}; overwrite = true replaces it") from None
        return path

    def _extension_of(self, item: Item) -> str:
        if self.target is not None:
            return EXTENSIONS[self.target]
        return PurePosixPath(item.key).suffix.lstrip(".").lower() or "png"

    def _encode(self, item: Item) -> tuple[bytes, str]:
        """The bytes to write and their Pillow format name."""
        data = item.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            source_format = image.format or "PNG"
            if self.target is None or self.target == source_format:
                return data, source_format
            encoded = encode(
                image,
                self.target,
                quality=self.quality,
                png_compression=self.png_compression,
                exif=image.info.get("exif"),
            )
            return encoded, self.target

    def relative_name(self, item: Item, index: int, ext: str) -> PurePosixPath:
        """The file an item is written to, relative to the folder; ValueError if the name
        cannot be filled or leaves the folder."""
        stem = PurePosixPath(item.key).with_suffix("").as_posix() if item.key else f"item{index}"
        values = {**item.metadata, "key": item.key, "stem": stem, "ext": ext, "index": index}
        try:
            rendered = self.pattern.format(**values)
        except KeyError as exc:
            field = str(exc.args[0])
            known = sorted(str(key) for key in values if not str(key).startswith("_"))
            close = difflib.get_close_matches(field, known, n=1)
            hint = f"; did you mean {{{close[0]}}}?" if close else ""
            raise ValueError(
                f"item {item.key!r}: name {self.pattern!r} has {{{field}}}, which is not a "
                f"field of the item{hint} (fields: {', '.join(known)})"
            ) from None
        except (IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"item {item.key!r}: name {self.pattern!r} cannot be filled: {exc}"
            ) from None
        relative = PurePosixPath(rendered.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"item {item.key!r}: name {rendered!r} leaves the folder")
        return PurePosixPath(fit_name(relative.as_posix()))
