"""The PostgreSQL ledger against a real server: the SQLite ledger's guarantees, shared."""

from __future__ import annotations

import threading

import pytest

from imgpipe import Item
from kling_expand_plugin.batch.ledger import SqliteLedger, StoredBytes, open_ledger
from kling_expand_plugin.kling.models import Task
from kling_expand_plugin.kling.wire import task_from_json
from kling_expand_plugin.outpaint.stage import OutpaintStage
from tests.helpers import picture
from tests.servers import fast_server

from .conftest import require

ENDPOINT = "https://kling.example"


def task(external_id: str, status: str = "processing", images: int = 0) -> Task:
    return task_from_json(
        {
            "task_id": f"task-{external_id}",
            "task_status": status,
            "task_info": {"external_task_id": external_id},
            "final_unit_deduction": "1" if status == "succeed" else None,
            "task_result": {
                "images": [{"index": i, "url": f"http://x/{i}.png"} for i in range(images)]
            },
        }
    )


def test_open_ledger_picks_postgres_for_a_url_and_sqlite_for_a_path(fresh_postgres, tmp_path):
    sqlite = open_ledger(str(tmp_path / "ledger.sqlite"))
    postgres = open_ledger(fresh_postgres)
    try:
        assert isinstance(sqlite, SqliteLedger)
        assert type(postgres).__name__ == "PostgresLedger"
        assert str(postgres.path).startswith("postgresql://kling@127.0.0.1:")
    finally:
        sqlite.close()
        postgres.close()


def test_a_task_goes_from_intent_to_complete_with_its_results_in_the_database(fresh_postgres):
    ledger = open_ledger(fresh_postgres)
    try:
        assert ledger.entry(ENDPOINT, "kep-1") is None
        assert ledger.claim(ENDPOINT, "kep-1", "a.png").mine
        entry = ledger.entry(ENDPOINT, "kep-1")
        assert entry is not None and entry.status == "creating" and entry.task_id is None
        ledger.record(ENDPOINT, "kep-1", task("kep-1"))
        ledger.record(ENDPOINT, "kep-1", task("kep-1", "succeed", images=2))
        ledger.store_result(ENDPOINT, "kep-1", 0, lambda file: file.write(b"first"))
        partial = ledger.entry(ENDPOINT, "kep-1")
        assert partial is not None and not partial.complete  # one of two results stored
        ledger.store_result(ENDPOINT, "kep-1", 1, lambda file: file.write(b"second"))
    finally:
        ledger.close()
    again = open_ledger(fresh_postgres)  # another worker, another connection
    try:
        entry = again.entry(ENDPOINT, "kep-1")
        assert entry is not None and entry.complete and entry.task_id == "task-kep-1"
        assert entry.units == "1" and entry.source_key == "a.png"
        assert [result.read_bytes() for result in entry.results] == [b"first", b"second"]
        assert all(isinstance(result, StoredBytes) for result in entry.results)
        assert again.entry("https://other.example", "kep-1") is None  # keyed by endpoint too
    finally:
        again.close()


def test_of_workers_claiming_one_external_id_at_once_exactly_one_creates(fresh_postgres):
    ledgers = [open_ledger(fresh_postgres) for _ in range(6)]
    for number, ledger in enumerate(ledgers):
        ledger.owner = f"worker-{number}"  # as if each were another process
    start = threading.Barrier(len(ledgers))
    claims = []

    def claim(ledger, number):
        start.wait()
        claims.append(ledger.claim(ENDPOINT, "kep-shared", f"from-worker-{number}.png"))

    threads = [threading.Thread(target=claim, args=(ledger, n)) for n, ledger in enumerate(ledgers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    import psycopg

    with psycopg.connect(fresh_postgres) as db:
        rows = db.execute(
            "SELECT count(*) FROM kling_expand_tasks WHERE external_id = 'kep-shared'"
        ).fetchone()
    for ledger in ledgers:
        ledger.close()
    assert rows == (1,)
    assert len(claims) == 6 and sum(claim.mine for claim in claims) == 1


def test_the_password_never_shows():
    require("psycopg")
    from kling_expand_plugin.batch.ledger.postgres import describe

    described = describe("postgresql://user:hunter2-secret@db.example:5433/kling?sslmode=require")
    assert described == "postgresql://user@db.example:5433/kling"
    assert "hunter2" not in describe("host=db.example user=u password=hunter2 dbname=k")


def test_the_stage_with_a_postgres_ledger_pays_once_across_runs(fresh_postgres, kling_env):
    inputs = [Item(f"img{n}.png", picture(n)) for n in range(4)]
    with fast_server(concurrency=4) as server:
        first = OutpaintStage(endpoint=server.url, aspect="16:9", ledger=fresh_postgres)
        results = list(first(inputs))
        second = OutpaintStage(endpoint=server.url, aspect="16:9", ledger=fresh_postgres)
        again = list(second(inputs))
        stats = server.stats()
    assert len(results) == 4 and second.summary["from_ledger"] == 4
    assert second.summary["created"] == 0
    assert sum(stats["create_attempts_by_external_id"].values()) == 4
    assert [r.read_bytes() for r in results] == [r.read_bytes() for r in again]


@pytest.mark.parametrize("spec", ["postgresql://", "postgres://"])
def test_both_url_schemes_are_databases(spec):
    from kling_expand_plugin.batch.ledger import is_database_url

    assert is_database_url(spec + "u@h/db")
    assert not is_database_url("ledger.sqlite")
