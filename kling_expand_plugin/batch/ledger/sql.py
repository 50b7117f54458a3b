"""The ledger's records and its logic over SQL (`SqlLedger`), shared by the SQLite and the
PostgreSQL ledgers: the same statements, in each database's placeholder style."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kling_expand_plugin.kling.models import Task

Writer = Callable[[BinaryIO], object]
"""Writes a result image into the file object it is given (seekable, open for reading too)."""

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

    def _store(self, endpoint: str, external_id: str, index: int, write: Writer) -> Path | bytes:
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
        entry = None
        while entry is None:  # a row released between the insert and the read: claim again
            now = time.time()
            _, inserted = self._run(
                f"INSERT INTO {self.tasks_table} (endpoint, external_id, source_key, status, "
                "created, updated, attempt, sent_id, owner, heartbeat) VALUES "
                "(?, ?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (endpoint, external_id) DO NOTHING",
                (endpoint, external_id, source_key, INTENT, now, now, external_id, self.owner, now),
            )
            entry = self.entry(endpoint, external_id)
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
        return Claim(bool(taken), bool(taken), fresh or entry)

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

    def store_result(
        self, endpoint: str, external_id: str, index: int, write: Writer
    ) -> Path | bytes:
        """Store a result image durably, then record it: `write` puts the image into the file
        object it is given (a download streams into it). Returns the stored image: its file,
        or its bytes when the database holds it. Nothing is recorded when `write` raises."""
        return self._store(endpoint, external_id, index, write)

    def forget_result(self, endpoint: str, external_id: str) -> None:
        """Drop the stored results of a piece of work (say, one was found damaged): the next
        read fetches them again from the task."""
        self._forget_results(endpoint, external_id)

    def _stale(self, entry: Entry) -> bool:
        if entry.owner == self.owner:
            return False  # our own claim: another thread of ours will finish it
        return owner_is_gone(entry.owner) or time.time() - entry.heartbeat > self.stale_after
