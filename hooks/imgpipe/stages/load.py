"""The built-in `load` stage: items from files, folders, globs and URLs."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import OptionError
from ..files import escaped, is_inside
from ..item import Item
from ..markers import hookimpl
from ..registry import Register, Stage
from ..urls import is_url, redact_url

log = logging.getLogger(__name__)


@hookimpl
def register_stages(register: Register) -> None:
    register("load", load)


def load(
    *,
    paths: str | list[str],
    recursive: bool = True,
    hidden: bool = False,
    exclude: str | list[str] | None = None,
) -> Stage:
    """Yield the upstream items, then one item per file named by `paths`.

    Each of `paths` is a file, a folder (every file in it, sorted; subfolders too when
    `recursive`), a glob (`photos/*.jpg`, `**/*.png`) or an http(s) URL; files and folders
    named in `exclude` are left out. Files are not opened here: deciding what is an image is
    the job of the stage that reads them. Keys are the path relative to the folder or glob
    named, the file's name, or the URL with its query redacted; where two folders give the
    same key, the second file's key is its path. Bytes of a file name that are not UTF-8 are
    %XX in its key.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise OptionError("paths", "must be a path, a glob or a URL, or a list of them")
    for path in paths:
        local = not is_url(path) and not glob.has_magic(path)
        if local and not Path(path).exists():
            raise OptionError("paths", f"{path!r} does not exist")
    excluded = [exclude] if isinstance(exclude, str) else list(exclude or [])
    if not all(isinstance(p, str) and p for p in excluded):
        raise OptionError("exclude", "must be a path, or a list of paths")
    return Load(paths, recursive, hidden, [Path(p).resolve() for p in excluded])


class Load:
    """The stage `load` builds; `preview` lists the files, for the host's checks."""

    def __init__(self, paths: list[str], recursive: bool, hidden: bool, exclude: list[Path]):
        self.paths, self.recursive, self.hidden, self.exclude = paths, recursive, hidden, exclude

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        yield from items
        yield from self._listing()

    def preview(self, items: list[Item]) -> list[Item]:
        return [*items, *self._listing()]

    def _listing(self) -> Iterator[Item]:
        keys: set[str] = set()
        sources: set[str] = set()
        for path in self.paths:
            for key, source in _expand(path, self.recursive, self.hidden):
                resolved = source if is_url(source) else str(Path(source).resolve())
                if resolved in sources:
                    log.warning("load: %s is named twice in paths; loading it once", source)
                    continue
                if self.exclude and not is_url(source) and is_inside(Path(resolved), self.exclude):
                    continue
                sources.add(resolved)
                key = escaped(key)
                if key in keys:  # two folders hold the same relative path, or two URLs differ
                    key = f"{key}#{len(keys)}" if is_url(source) else escaped(source)
                keys.add(key)
                yield Item(key=key, image=source if is_url(source) else Path(source))


def _expand(path: str, recursive: bool, hidden: bool) -> Iterator[tuple[str, str]]:
    """(key, source) for each file `path` names."""
    if is_url(path):
        yield redact_url(path), path
    elif glob.has_magic(path):
        root = _glob_root(path)
        for match in sorted(glob.glob(path, recursive=True, include_hidden=hidden)):
            if Path(match).is_file():
                yield Path(match).relative_to(root).as_posix(), match
    elif Path(path).is_dir():
        for file in _walk(Path(path), recursive, hidden):
            yield file.relative_to(path).as_posix(), str(file)
    else:
        yield Path(path).name, path


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    first_magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:first_magic])


def _walk(folder: Path, recursive: bool, hidden: bool) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if hidden or not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if hidden or not name.startswith("."):
                yield Path(root, name)
