"""The ledger: the record of every task the stage pays for, and of its results.

Keyed by the endpoint and the deterministic id of a piece of work (the `external_task_id` the
stage derives from the input and the parameters), so that re-running a pipeline, resuming one
killed at any point, or running two at once never pays twice for the same work, and never loses
a result already paid for:

- a process *claims* a piece of work before its create is posted: one row per work id, inserted
  only if there is none, so of several processes exactly one creates; the others wait for the
  task id and re-attach. A claim whose owner died (its process is gone, or it stopped renewing
  the claim) is taken over, and its task is looked up by its external id before any create;
- the task id is recorded as soon as it is known, its status and units when it ends;
- each result image is stored (durably) and recorded before the stage hands it on;
- a task that failed, or whose results the server no longer has, is created again only when the
  user asks (`restart`), under a new external id (`<work id>-r<attempt>`), since the old one is
  taken on the server.

`open_ledger` picks the implementation: a SQLite file (WAL) with results in
`<ledger>.results/` for one machine (`SqliteLedger`, here), or a PostgreSQL database shared by
every worker of a cluster, results included (`PostgresLedger`, in `ledger_postgres`). Both are
`SqlLedger`s: the same statements, in each database's placeholder style.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .models import Task

SCHEMA_VERSION = 2

TASK_COLUMNS = {
    "endpoint": "TEXT NOT NULL",
    "external_id": "TEXT NOT NULL",
    "source_key": "TEXT NOT NULL DEFAULT ''",
    "task_id": "TEXT",
    "status": "TEXT NOT NULL DEFAULT 'creating'",
    "status_msg": "TEXT",
    "units": "TEXT",
    "images": "INTEGER",
    "created": "REAL NOT NULL DEFAULT 0",
    "updated": "REAL NOT NULL DEFAULT 0",
    "attempt": "INTEGER NOT NULL DEFAULT 0",
    "sent_id": "TEXT",
    "owner": "TEXT",
    "heartbeat": "REAL NOT NULL DEFAULT 0",
}
"""The tasks table. `external_id` is the work id (the key); `sent_id` the external_task_id
actually sent (the work id, or `<work id>-r<attempt>` after a restart); `owner` and `heartbeat`
the process holding the claim while the create is under way."""

KEY_COLUMNS = ("endpoint", "external_id")

INTENT = "creating"
"""The status of a task whose create may or may not have reached the API."""

DEFAULT_STALE_AFTER = 600.0
"""Seconds after which a claim whose owner stopped renewing it is taken over (an owner on this
machine whose process is gone is taken over at once)."""

DATABASE_SCHEMES = ("postgresql://", "postgres://")
"""Ledger specs with these prefixes are PostgreSQL connection URLs; anything else is a path."""


class LedgerError(RuntimeError):
    """The ledger cannot be opened or read: the message names it and what to do."""


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
    """What the ledger knows of one piece of work."""

    external_id: str
    source_key: str
    task_id: str | None
    status: str
    status_msg: str | None
    units: str | None
    images: int | None
    results: tuple[Path | StoredBytes, ...]
    attempt: int = 0
    sent_id: str | None = None
    owner: str | None = None
    heartbeat: float = 0.0

    @property
    def sent_external_id(self) -> str:
        """The external_task_id its task was (or will be) created with."""
        return self.sent_id or self.external_id

    @property
    def succeeded(self) -> bool:
        return self.status in ("succeed", "succeeded")

    @property
    def complete(self) -> bool:
        """Whether every result image of a succeeded task is stored (and, for files, still on
        disk)."""
        return (
            self.images is not None
            and self.succeeded
            and len(self.results) == self.images
            and all(isinstance(result, StoredBytes) or result.is_file() for result in self.results)
        )


@dataclass(frozen=True)
class Claim:
    """The outcome of `SqlLedger.claim`: ours to create (`mine`), and whether a create of an
    earlier owner may have reached the API (`in_doubt`: look the task up before posting)."""

    mine: bool
    in_doubt: bool
    entry: Entry


def owner_id() -> str:
    """This process's name in claims: host, pid and a random part (a pid can be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_gone(owner: str | None) -> bool:
    """Whether the process named `owner` is known to be gone (only this machine's can be)."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    if int(pid_text) == os.getpid():
        return owner != _OWN  # an earlier process that had the same pid
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_OWN = owner_id()


def is_database_url(spec: str | Path) -> bool:
    """Whether a ledger spec names a PostgreSQL database rather than a SQLite file."""
    return isinstance(spec, str) and spec.startswith(DATABASE_SCHEMES)


def open_ledger(spec: str | Path) -> SqlLedger:
    """The ledger a spec names: a postgresql:// URL (shared by a cluster; needs the `ray` or
    `postgres` extra, for psycopg), or else the path of a SQLite file. LedgerError when it
    cannot be opened, read, or brought to this version's schema."""
    if is_database_url(spec):
        from .ledger_postgres import PostgresLedger

        return PostgresLedger(str(spec))
    return SqliteLedger(spec)


def normalise_endpoint(url: str) -> str:
    """The ledger's key for a base URL: one spelling per server (case, default port, a trailing
    slash, and the loopback names folded), so that no spelling pays for work again."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if host in ("localhost", "::1") or host.startswith("127."):
        host = "127.0.0.1"
    scheme = parts.scheme.lower()
    port = parts.port
    netloc = (
        host
        if port is None or (scheme, port) in (("http", 80), ("https", 443))
        else (f"{host}:{port}")
    )
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def default_path() -> Path:
    """The user's data folder: $XDG_DATA_HOME/kling-expand/ledger.sqlite."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "kling-expand" / "ledger.sqlite"


class SqlLedger:
    """The ledger's logic over SQL, for one database connection shared by the stage's threads.

    Subclasses give `_run` (a statement with `?` placeholders, in its own transaction; the rows
    it returns and the count it changed) and the storage of result bytes.
    """

    path: Path | str
    owner: str = _OWN
    stale_after: float = DEFAULT_STALE_AFTER
    tasks_table = "tasks"
    results_table = "results"

    def close(self) -> None:
        raise NotImplementedError

    def _run(self, statement: str, parameters: tuple[Any, ...] = ()) -> tuple[list[Any], int]:
        raise NotImplementedError

    def _results(self, endpoint: str, external_id: str) -> tuple[Path | StoredBytes, ...]:
        raise NotImplementedError

    def _store(self, endpoint: str, external_id: str, index: int, data: bytes) -> Any:
        raise NotImplementedError

    def _forget_results(self, endpoint: str, external_id: str) -> None:
        self._run(
            f"DELETE FROM {self.results_table} WHERE endpoint = ? AND external_id = ?",
            (endpoint, external_id),
        )

    # -- reading -------------------------------------------------------------------------------

    def entry(self, endpoint: str, external_id: str) -> Entry | None:
        """The ledger's record of a piece of work, or None if it never saw it."""
        rows, _ = self._run(
            "SELECT source_key, task_id, status, status_msg, units, images, attempt, sent_id, "
            f"owner, heartbeat FROM {self.tasks_table} WHERE endpoint = ? AND external_id = ?",
            (endpoint, external_id),
        )
        if not rows:
            return None
        source_key, task_id, status, status_msg, units, images, attempt, sent, owner, beat = rows[0]
        return Entry(
            external_id,
            source_key,
            task_id,
            status,
            status_msg,
            units,
            images,
            self._results(endpoint, external_id),
            attempt,
            sent,
            owner,
            beat,
        )

    def counts(self) -> dict[str, int]:
        """Tasks by status, for `doctor`."""
        rows, _ = self._run(f"SELECT status, COUNT(*) FROM {self.tasks_table} GROUP BY status")
        return {status: count for status, count in rows}

    # -- claiming and recording ----------------------------------------------------------------

    def claim(self, endpoint: str, external_id: str, source_key: str) -> Claim:
        """Make this process the one that creates this work's task, if nobody holds it.

        Mine when there was no row (a fresh claim), or the row is an intent whose owner is
        gone or stopped renewing it (taken over: in doubt, since that owner may have posted).
        Otherwise not mine: the entry says who has it, or what became of it.
        """
        now = time.time()
        _, inserted = self._run(
            f"INSERT INTO {self.tasks_table} (endpoint, external_id, source_key, status, "
            "created, updated, attempt, sent_id, owner, heartbeat) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (endpoint, external_id) DO NOTHING",
            (endpoint, external_id, source_key, INTENT, now, now, external_id, self.owner, now),
        )
        entry = self.entry(endpoint, external_id)
        assert entry is not None
        if inserted:
            return Claim(True, False, entry)
        if entry.status != INTENT or entry.task_id is not None or not self._stale(entry):
            return Claim(False, False, entry)
        _, taken = self._run(
            f"UPDATE {self.tasks_table} SET owner = ?, heartbeat = ?, updated = ? "
            "WHERE endpoint = ? AND external_id = ? AND status = ? AND task_id IS NULL "
            "AND heartbeat = ? AND " + ("owner IS NULL" if entry.owner is None else "owner = ?"),
            (self.owner, now, now, endpoint, external_id, INTENT, entry.heartbeat)
            + (() if entry.owner is None else (entry.owner,)),
        )
        fresh = self.entry(endpoint, external_id)
        assert fresh is not None
        return Claim(bool(taken), bool(taken), fresh)

    def renew(self, endpoint: str, external_id: str) -> None:
        """Show that this process still works on its claim (say, while 1303 is waited out)."""
        self._run(
            f"UPDATE {self.tasks_table} SET heartbeat = ? "
            "WHERE endpoint = ? AND external_id = ? AND owner = ?",
            (time.time(), endpoint, external_id, self.owner),
        )

    def release(self, endpoint: str, external_id: str, *, posted: bool) -> None:
        """Give up a claim that has no task id. If a create was `posted` (it may have reached
        the API), the next claimant takes it over at once and looks the task up first; if not,
        a first attempt's row is deleted, as if never claimed."""
        where = "WHERE endpoint = ? AND external_id = ? AND owner = ? AND task_id IS NULL"
        parameters = (endpoint, external_id, self.owner)
        if not posted:
            _, deleted = self._run(
                f"DELETE FROM {self.tasks_table} {where} AND attempt = 0", parameters
            )
            if deleted:
                return
        self._run(f"UPDATE {self.tasks_table} SET owner = NULL, heartbeat = 0 {where}", parameters)

    def restart(self, endpoint: str, entry: Entry) -> Entry | None:
        """Claim this work again for a new task (after a failure, or lost results), under the
        next attempt's external id; None if another process restarted it first."""
        attempt = entry.attempt + 1
        now = time.time()
        _, changed = self._run(
            f"UPDATE {self.tasks_table} SET attempt = ?, sent_id = ?, task_id = NULL, status = ?, "
            "status_msg = NULL, units = NULL, images = NULL, owner = ?, heartbeat = ?, "
            "updated = ? WHERE endpoint = ? AND external_id = ? AND attempt = ?",
            (
                attempt,
                f"{entry.external_id}-r{attempt}",
                INTENT,
                self.owner,
                now,
                now,
                endpoint,
                entry.external_id,
                entry.attempt,
            ),
        )
        if not changed:
            return None
        self._forget_results(endpoint, entry.external_id)
        return self.entry(endpoint, entry.external_id)

    def record(self, endpoint: str, external_id: str, task: Task) -> None:
        """Record what the API said of the work's task: its id, status, units and images."""
        self._run(
            f"UPDATE {self.tasks_table} SET task_id = ?, status = ?, status_msg = ?, units = ?, "
            "images = ?, updated = ?, owner = NULL WHERE endpoint = ? AND external_id = ?",
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

    def store_result(self, endpoint: str, external_id: str, index: int, data: bytes) -> object:
        """Store a result image durably, then record it."""
        return self._store(endpoint, external_id, index, data)

    def forget_result(self, endpoint: str, external_id: str) -> None:
        """Drop the stored results of a piece of work (say, one was found damaged): the next
        read fetches them again from the task."""
        self._forget_results(endpoint, external_id)

    def _stale(self, entry: Entry) -> bool:
        if entry.owner == self.owner:
            return False  # our own claim: another thread of ours will finish it
        return owner_is_gone(entry.owner) or time.time() - entry.heartbeat > self.stale_after


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

    def _store(self, endpoint: str, external_id: str, index: int, data: bytes) -> Path:
        """Write a result image to disk (atomically, synced), then record it; its path."""
        folder = self.results_dir / _safe(external_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.png"
        with _atomic_file(path) as file:
            file.write(data)
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
        with os.fdopen(fd, "wb") as file:
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
