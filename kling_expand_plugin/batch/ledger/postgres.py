"""The ledger in a PostgreSQL database, shared by every worker of a cluster (psycopg 3).

The same rows, statements and guarantees as the SQLite ledger (`SqlLedger`): one row per
(endpoint, work id) for the whole cluster, claimed by one worker before its create is posted,
and each result committed before `store_result` returns. The result images are stored in the
database itself (a `bytea` column), not on a local disk: a worker on another machine, or the
retry of a task whose machine died, reads them back from where they were recorded. Expand
results are a few MB each, which PostgreSQL holds without trouble; prune old rows as the ledger
grows.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from kling_expand_plugin.batch.ledger.sql import (
    KEY_COLUMNS,
    TASK_COLUMNS,
    LedgerError,
    SqlLedger,
    StoredBytes,
    Writer,
)

SCHEMA_LOCK = 0x6B6C696E67
"""Advisory lock key held while creating the tables: workers starting at once would otherwise
race on `CREATE TABLE IF NOT EXISTS`."""


class PostgresLedger(SqlLedger):
    """The record of paid work in PostgreSQL; one connection, shared by the stage's threads."""

    tasks_table = "kling_expand_tasks"
    results_table = "kling_expand_results"

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        self.path = describe(url)
        self._lock = threading.Lock()
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for statement in _schema():
                    self._db.execute(statement)
        except psycopg.Error as error:
            raise LedgerError(f"the ledger {self.path} cannot be used: {error}") from None

    def __repr__(self) -> str:
        return f"PostgresLedger({self.path!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, statement: str, parameters: tuple[Any, ...] = ()) -> tuple[list[Any], int]:
        """One statement in its own transaction (autocommit: committed when it returns)."""
        with self._lock:
            cursor = self._db.execute(statement.replace("?", "%s"), parameters)
            rows = cursor.fetchall() if cursor.description else []
            return rows, cursor.rowcount

    def _results(self, endpoint: str, external_id: str) -> tuple[StoredBytes, ...]:
        rows, _ = self._run(
            f"SELECT data FROM {self.results_table} WHERE endpoint = ? AND external_id = ? "
            "ORDER BY idx",
            (endpoint, external_id),
        )
        return tuple(StoredBytes(bytes(data)) for (data,) in rows)

    def _store(self, endpoint: str, external_id: str, index: int, write: Writer) -> bytes:
        """Store a result image in the database; committed when this returns. Its bytes."""
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        self._run(
            f"INSERT INTO {self.results_table} (endpoint, external_id, idx, data) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (endpoint, external_id, idx) DO UPDATE SET "
            "data = excluded.data",
            (endpoint, external_id, index, data),
        )
        return data


def _schema() -> list[str]:
    """The tables, created or brought to this version (columns added to an older ledger)."""
    kinds = {name: kind.replace("REAL", "DOUBLE PRECISION") for name, kind in TASK_COLUMNS.items()}
    keys = {name: kinds[name] for name in KEY_COLUMNS}
    columns = ", ".join(f"{name} {kind}" for name, kind in keys.items())
    statements = [
        f"CREATE TABLE IF NOT EXISTS {PostgresLedger.tasks_table} ({columns}, "
        "PRIMARY KEY (endpoint, external_id))",
        f"CREATE TABLE IF NOT EXISTS {PostgresLedger.results_table} (endpoint TEXT NOT NULL, "
        "external_id TEXT NOT NULL, idx INTEGER NOT NULL, data BYTEA NOT NULL, "
        "PRIMARY KEY (endpoint, external_id, idx))",
    ]
    statements += [
        f"ALTER TABLE {PostgresLedger.tasks_table} ADD COLUMN IF NOT EXISTS {name} {kind}"
        for name, kind in kinds.items()
        if name not in KEY_COLUMNS
    ]
    return statements


def describe(url: str) -> str:
    """A connection URL fit for logs: user, host, port and database, never the password."""
    parts = conninfo_to_dict(url)
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"
