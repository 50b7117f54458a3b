"""The ledger in a SQLite file (WAL), with results in files beside it: one machine's."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kling_expand_plugin.batch.ledger.sql import (
    KEY_COLUMNS,
    SCHEMA_VERSION,
    TASK_COLUMNS,
    LedgerError,
    SqlLedger,
    StoredBytes,
    Writer,
)


class SqliteLedger(SqlLedger):
    """The record of paid work in a SQLite file, shared safely by the stage's threads (and by
    the processes of one machine)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.results_dir = self.path.with_name(self.path.name + ".results")
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path)
        except (sqlite3.Error, OSError) as error:
            raise LedgerError(_unreadable(self.path, error)) from None
        _clean_parts(self.results_dir)

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, statement: str, parameters: tuple[Any, ...] = ()) -> tuple[list[Any], int]:
        with self._lock, self._db:
            cursor = self._db.execute(statement, parameters)
            return cursor.fetchall(), cursor.rowcount

    def _results(self, endpoint: str, external_id: str) -> tuple[Path | StoredBytes, ...]:
        rows, _ = self._run(
            "SELECT path FROM results WHERE endpoint = ? AND external_id = ? ORDER BY idx",
            (endpoint, external_id),
        )
        return tuple(Path(path) for (path,) in rows)

    def _store(self, endpoint: str, external_id: str, index: int, write: Writer) -> Path:
        """Have `write` write a result image to disk (atomically, synced), then record it; its
        path."""
        folder = self.results_dir / _safe(external_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.png"
        with _atomic_file(path) as file:
            write(file)
        self._run(
            "INSERT OR REPLACE INTO results (endpoint, external_id, idx, path) VALUES (?, ?, ?, ?)",
            (endpoint, external_id, index, str(path)),
        )
        return path


def _connect(path: Path, *, patience: float = 30.0) -> sqlite3.Connection:
    """A connection to the ledger in WAL mode with this version's tables. Processes opening a
    new ledger at once can find it locked in ways SQLite does not wait out (switching to WAL):
    they try again, a moment apart, for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        db = sqlite3.connect(path, timeout=patience, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across crashes
            _migrate(db)
            return db
        except sqlite3.OperationalError as error:
            db.close()
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.02, 0.2))
        except BaseException:
            db.close()
            raise


def _migrate(db: sqlite3.Connection) -> None:
    """Create the tables, or bring an older ledger's to this version (columns added), holding
    the database's write lock: processes starting at once on a new ledger take turns."""
    db.execute("BEGIN IMMEDIATE")
    try:
        present = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        if not present:
            columns = ", ".join(f"{name} {kind}" for name, kind in TASK_COLUMNS.items())
            db.execute(f"CREATE TABLE tasks ({columns}, PRIMARY KEY (endpoint, external_id))")
        elif not set(KEY_COLUMNS) <= present:
            raise sqlite3.DatabaseError("its tasks table is not a kling-expand ledger's")
        for name, kind in TASK_COLUMNS.items():
            if present and name not in present:
                db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS results (endpoint TEXT NOT NULL, "
            "external_id TEXT NOT NULL, idx INTEGER NOT NULL, path TEXT NOT NULL, "
            "PRIMARY KEY (endpoint, external_id, idx))"
        )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.rollback()
        raise
    db.commit()


def _unreadable(path: Path, error: BaseException) -> str:
    return (
        f"the ledger {path} cannot be used ({error}). It records what was paid for: move it "
        f"aside (the results stored beside it in {path.name}.results/ stay readable) and run "
        "again to start a new one, or name another file with --ledger (the stage's `ledger`)"
    )


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Any]:
    """A file object whose contents replace `path` (synced) only when the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w+b") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean_parts(folder: Path) -> None:
    """Remove what a killed process left half-written in the results folder (over an hour old,
    so that another process's write under way is left alone)."""
    if not folder.is_dir():
        return
    cutoff = time.time() - 3600
    for part in folder.glob("*/.*.part"):
        with contextlib.suppress(OSError):
            if part.stat().st_mtime < cutoff:
                part.unlink()


def _safe(external_id: str) -> str:
    """A folder name for an external id (ours are "kep-" and hex; others are escaped)."""
    return "".join(c if c.isalnum() or c in "-_" else f"%{ord(c):02x}" for c in external_id)
