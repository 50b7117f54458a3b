"""The ledger: the record of every task the stage pays for, and of its results.

Keyed by the endpoint and the deterministic `external_task_id`, so that re-running a pipeline,
or resuming one killed at any point, never creates a second task for work already submitted,
and never loses a result already paid for:

- an intent is recorded before the create is posted, the task id as soon as it is known;
- each result image is stored (durably) and recorded before the stage hands it on;
- on a re-run, stored results are read back, submitted tasks are re-attached by id, and an
  intent without a task id is completed by the client's create, which looks the task up by
  its external id before posting.

`Ledger` is what the task runner needs of one; `open_ledger` picks the implementation: a SQLite
file (WAL) with results in `<ledger>.results/` for one machine (`SqliteLedger`, here), or a
PostgreSQL database shared by every worker of a cluster, results included
(`PostgresLedger`, in `ledger_postgres`).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .models import Task

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    endpoint TEXT NOT NULL,
    external_id TEXT NOT NULL,
    source_key TEXT NOT NULL,
    task_id TEXT,
    status TEXT NOT NULL,
    status_msg TEXT,
    units TEXT,
    images INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (endpoint, external_id)
);
CREATE TABLE IF NOT EXISTS results (
    endpoint TEXT NOT NULL,
    external_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (endpoint, external_id, idx)
);
"""

INTENT = "creating"
"""The status of a task whose create may or may not have reached the API."""

DATABASE_SCHEMES = ("postgresql://", "postgres://")
"""Ledger specs with these prefixes are PostgreSQL connection URLs; anything else is a path."""


@dataclass(frozen=True)
class StoredBytes:
    """A result image held in the database itself (the PostgreSQL ledger's results)."""

    data: bytes

    def __repr__(self) -> str:
        return f"StoredBytes({len(self.data)} bytes)"

    def read_bytes(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class Entry:
    """What the ledger knows of one task."""

    external_id: str
    source_key: str
    task_id: str | None
    status: str
    status_msg: str | None
    units: str | None
    images: int | None
    results: tuple[Path | StoredBytes, ...]

    @property
    def complete(self) -> bool:
        """Whether every result image of a succeeded task is stored (and, for files, still on
        disk)."""
        return (
            self.images is not None
            and self.status in ("succeed", "succeeded")
            and len(self.results) == self.images
            and all(isinstance(result, StoredBytes) or result.is_file() for result in self.results)
        )


class Ledger(Protocol):
    """What the task runner needs of a ledger; every method is safe to call from many threads.

    Guarantees of every implementation: one row per (endpoint, external id) wherever the
    workers run, and a result stored durably before `store_result` returns (so before the
    stage hands it on).
    """

    @property
    def path(self) -> Path | str:
        """Where the ledger is, for logs and messages (a file, or a URL without password)."""
        ...

    def entry(self, endpoint: str, external_id: str) -> Entry | None:
        """The ledger's record of a task, or None if it never saw it."""
        ...

    def intend(self, endpoint: str, external_id: str, source_key: str) -> None:
        """Record that a create is about to be posted (before it is, so a crash leaves a trace)."""
        ...

    def record(self, endpoint: str, task: Task) -> None:
        """Record what the API said of a task: its id, status, units and number of images."""
        ...

    def store_result(self, endpoint: str, external_id: str, index: int, data: bytes) -> object:
        """Store a result image durably, then record it."""
        ...

    def close(self) -> None:
        """Release the file or the connection."""
        ...


def is_database_url(spec: str | Path) -> bool:
    """Whether a ledger spec names a PostgreSQL database rather than a SQLite file."""
    return isinstance(spec, str) and spec.startswith(DATABASE_SCHEMES)


def open_ledger(spec: str | Path) -> Ledger:
    """The ledger a spec names: a postgresql:// URL (shared by a cluster; needs the `ray` or
    `postgres` extra, for psycopg), or else the path of a SQLite file."""
    if is_database_url(spec):
        from .ledger_postgres import PostgresLedger

        return PostgresLedger(str(spec))
    return SqliteLedger(spec)


def default_path() -> Path:
    """The user's data folder: $XDG_DATA_HOME/kling-expand/ledger.sqlite."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "kling-expand" / "ledger.sqlite"


class SqliteLedger:
    """The record of paid work in a SQLite file, shared safely by the stage's threads (and by
    the processes of one machine)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.results_dir = self.path.with_name(self.path.name + ".results")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
        self._db.executescript(SCHEMA)
        self._db.commit()

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def entry(self, endpoint: str, external_id: str) -> Entry | None:
        """The ledger's record of a task, or None if it never saw it."""
        with self._lock:
            row = self._db.execute(
                "SELECT source_key, task_id, status, status_msg, units, images FROM tasks "
                "WHERE endpoint = ? AND external_id = ?",
                (endpoint, external_id),
            ).fetchone()
            if row is None:
                return None
            paths = self._db.execute(
                "SELECT path FROM results WHERE endpoint = ? AND external_id = ? ORDER BY idx",
                (endpoint, external_id),
            ).fetchall()
        source_key, task_id, status, status_msg, units, images = row
        results = tuple(Path(p) for (p,) in paths)
        return Entry(external_id, source_key, task_id, status, status_msg, units, images, results)

    def intend(self, endpoint: str, external_id: str, source_key: str) -> None:
        """Record that a create is about to be posted (before it is, so a crash leaves a trace)."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO tasks (endpoint, external_id, source_key, status, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint, external_id) DO UPDATE SET "
                "source_key = excluded.source_key, updated = excluded.updated",
                (endpoint, external_id, source_key, INTENT, now, now),
            )

    def record(self, endpoint: str, task: Task) -> None:
        """Record what the API said of a task: its id, status, units and number of images."""
        external_id = task.external_task_id
        if not external_id:
            raise ValueError(f"task {task.task_id} has no external_task_id to record it under")
        with self._lock, self._db:
            self._db.execute(
                "UPDATE tasks SET task_id = ?, status = ?, status_msg = ?, units = ?, "
                "images = ?, updated = ? WHERE endpoint = ? AND external_id = ?",
                (
                    task.task_id,
                    task.status.value,
                    task.status_msg,
                    task.units,
                    len(task.images) if task.finished else None,
                    time.time(),
                    endpoint,
                    external_id,
                ),
            )

    def store_result(self, endpoint: str, external_id: str, index: int, data: bytes) -> Path:
        """Write a result image to disk (atomically, synced), then record it; its path."""
        folder = self.results_dir / _safe(external_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.png"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{index}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO results (endpoint, external_id, idx, path) "
                "VALUES (?, ?, ?, ?)",
                (endpoint, external_id, index, str(path)),
            )
        return path


def _safe(external_id: str) -> str:
    """A folder name for an external id (ours are "kep-" and hex; others are escaped)."""
    return "".join(c if c.isalnum() or c in "-_" else f"%{ord(c):02x}" for c in external_id)
