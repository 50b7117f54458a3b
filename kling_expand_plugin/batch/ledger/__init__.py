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
`<ledger>.results/` for one machine (`SqliteLedger`, in `sqlite`), or a PostgreSQL database
shared by every worker of a cluster, results included (`PostgresLedger`, in `postgres`). Both are
`SqlLedger`s: the same statements, in each database's placeholder style.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from kling_expand_plugin.batch.ledger.sql import (
    DATABASE_SCHEMES,
    INTENT,
    Claim,
    Entry,
    LedgerError,
    SqlLedger,
    StoredBytes,
    owner_is_gone,
)
from kling_expand_plugin.batch.ledger.sqlite import SqliteLedger

__all__ = [
    "INTENT",
    "Claim",
    "Entry",
    "LedgerError",
    "SqlLedger",
    "SqliteLedger",
    "StoredBytes",
    "default_path",
    "is_database_url",
    "normalise_endpoint",
    "open_ledger",
    "owner_is_gone",
]


def is_database_url(spec: str | Path) -> bool:
    """Whether a ledger spec names a PostgreSQL database rather than a SQLite file."""
    return isinstance(spec, str) and spec.startswith(DATABASE_SCHEMES)


def open_ledger(spec: str | Path) -> SqlLedger:
    """The ledger a spec names: a postgresql:// URL (shared by a cluster; needs the `ray` or
    `postgres` extra, for psycopg), or else the path of a SQLite file. LedgerError when it
    cannot be opened, read, or brought to this version's schema."""
    if is_database_url(spec):
        from kling_expand_plugin.batch.ledger.postgres import PostgresLedger

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
