"""Writing output files: atomically, never over another file unless asked, with the user's umask,
under names any file system takes; and cleaning what a killed writer left behind."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path, PurePosixPath

MAX_NAME_BYTES = 200
"""A written file's name is at most this many bytes, leaving room under the usual limit of 255
for the hidden temporary name it is written under first."""
_PART = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.part$")


class ExistsError(FileExistsError):
    """The file exists with other content, and replacing it was not asked for."""


def write_atomically(path: Path, data: bytes, *, overwrite: bool = False) -> bool:
    """Write `data` to `path`, whole or not at all; False when `path` already held exactly
    `data` (nothing to do). An existing file with other content is replaced only with
    `overwrite`, else ExistsError. The file gets the mode the umask gives (0644 usually)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and _holds(path, data):
        return False
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        if overwrite:
            os.replace(temporary, path)
        else:
            _link_new(temporary, path, data)
    finally:
        if temporary.exists():
            temporary.unlink()
    return True


def _link_new(temporary: Path, path: Path, data: bytes) -> None:
    """Give `temporary` the name `path` only if no file has it (atomic where links work)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        if not _holds(path, data):
            raise ExistsError(f"{path} exists with other content") from None
    except OSError:  # no hard links here (FAT, some network shares): check, then rename
        if path.exists() and not _holds(path, data):
            raise ExistsError(f"{path} exists with other content") from None
        os.replace(temporary, path)


def _holds(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary files that writers killed mid-write left in `folder` and below
    (only ours, and only those whose process is gone); the paths removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for root, _, files in os.walk(folder):
        for name in files:
            match = _PART.match(name)
            if match and not _alive(int(match.group(1))):
                path = Path(root, name)
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def fit_name(relative: str, limit: int = MAX_NAME_BYTES) -> str:
    """`relative` (a/b/name.ext) with each part at most `limit` bytes: a longer part keeps its
    beginning and its extension, with a hash of the whole between, so it stays unique."""
    parts = []
    for part in PurePosixPath(relative).parts:
        encoded = os.fsencode(part)
        if len(encoded) <= limit:
            parts.append(part)
            continue
        suffix = PurePosixPath(part).suffix
        suffix = suffix if len(os.fsencode(suffix)) <= 16 else ""
        tag = "~" + hashlib.sha256(encoded).hexdigest()[:12]
        room = limit - len(tag) - len(os.fsencode(suffix))
        head = os.fsencode(part[: len(part) - len(suffix)] if suffix else part)[:room]
        parts.append(head.decode("utf-8", "ignore") + tag + suffix)
    return PurePosixPath(*parts).as_posix() if parts else relative


def escaped(text: str) -> str:
    """`text` as valid Unicode: each byte of a file name that was not UTF-8 (held by Python as
    a lone surrogate) written as %XX, so that the name can be printed, logged and stored."""
    return re.sub(r"[\udc80-\udcff]", lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)


def is_inside(path: Path, folders: list[Path]) -> bool:
    """Whether `path` is one of `folders` or in one of them (all resolved)."""
    return any(path == folder or folder in path.parents for folder in folders)
