"""The ledger in a PostgreSQL database, shared by every worker of a cluster (psycopg 3).

Same rows and guarantees as the SQLite ledger: one row per (endpoint, external id) for the
whole cluster (the primary key), an intent committed before the create is posted, and each
result committed before `store_result` returns. The result images are stored in the database
itself (a `bytea` column), not on a local disk: a worker on another machine, or the retry of a
task whose machine died, reads them back from where they were recorded. Expand results are a
few MB each, which PostgreSQL holds without trouble; prune old rows as the ledger grows.
"""

from __future__ import annotations

import threading
import time
from typing import Any, LiteralString

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .ledger import Entry, StoredBytes
from .models import Task

SCHEMA = """
CREATE TABLE IF NOT EXISTS kling_expand_tasks (
    endpoint TEXT NOT NULL,
    external_id TEXT NOT NULL,
    source_key TEXT NOT NULL,
    task_id TEXT,
    status TEXT NOT NULL,
    status_msg TEXT,
    units TEXT,
    images INTEGER,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (endpoint, external_id)
);
CREATE TABLE IF NOT EXISTS kling_expand_results (
    endpoint TEXT NOT NULL,
    external_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (endpoint, external_id, idx)
);
"""

SCHEMA_LOCK = 0x6B6C696E67
"""Advisory lock key held while creating the tables: workers starting at once would otherwise
race on `CREATE TABLE IF NOT EXISTS`."""

INTENT = "creating"


class PostgresLedger:
    """The record of paid work in PostgreSQL; one connection, shared by the stage's threads."""

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        self.path = describe(url)
        self._lock = threading.Lock()
        self._db = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._db.execute(SCHEMA)

    def __repr__(self) -> str:
        return f"PostgresLedger({self.path!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def entry(self, endpoint: str, external_id: str) -> Entry | None:
        """The ledger's record of a task, or None if it never saw it."""
        with self._lock:
            row = self._db.execute(
                "SELECT source_key, task_id, status, status_msg, units, images "
                "FROM kling_expand_tasks WHERE endpoint = %s AND external_id = %s",
                (endpoint, external_id),
            ).fetchone()
            if row is None:
                return None
            stored = self._db.execute(
                "SELECT data FROM kling_expand_results WHERE endpoint = %s AND external_id = %s "
                "ORDER BY idx",
                (endpoint, external_id),
            ).fetchall()
        source_key, task_id, status, status_msg, units, images = row
        results = tuple(StoredBytes(bytes(data)) for (data,) in stored)
        return Entry(external_id, source_key, task_id, status, status_msg, units, images, results)

    def intend(self, endpoint: str, external_id: str, source_key: str) -> None:
        """Record that a create is about to be posted (before it is, so a crash leaves a trace)."""
        now = time.time()
        self._execute(
            "INSERT INTO kling_expand_tasks "
            "(endpoint, external_id, source_key, status, created, updated) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (endpoint, external_id) DO UPDATE SET "
            "source_key = excluded.source_key, updated = excluded.updated",
            (endpoint, external_id, source_key, INTENT, now, now),
        )

    def record(self, endpoint: str, task: Task) -> None:
        """Record what the API said of a task: its id, status, units and number of images."""
        external_id = task.external_task_id
        if not external_id:
            raise ValueError(f"task {task.task_id} has no external_task_id to record it under")
        self._execute(
            "UPDATE kling_expand_tasks SET task_id = %s, status = %s, status_msg = %s, "
            "units = %s, images = %s, updated = %s WHERE endpoint = %s AND external_id = %s",
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

    def store_result(self, endpoint: str, external_id: str, index: int, data: bytes) -> None:
        """Store a result image in the database; committed when this returns."""
        self._execute(
            "INSERT INTO kling_expand_results (endpoint, external_id, idx, data) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (endpoint, external_id, idx) DO UPDATE SET "
            "data = excluded.data",
            (endpoint, external_id, index, data),
        )

    def _execute(self, statement: LiteralString, parameters: tuple[Any, ...]) -> None:
        """One statement in its own transaction (autocommit: committed when it returns)."""
        with self._lock:
            self._db.execute(statement, parameters)


def describe(url: str) -> str:
    """A connection URL fit for logs: user, host, port and database, never the password."""
    parts = conninfo_to_dict(url)
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"
