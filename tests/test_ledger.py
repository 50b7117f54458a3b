"""The SQLite ledger: claims, restarts, older schemas and unreadable files (the PostgreSQL
ledger runs the same statements: tests/cluster/test_ledger_postgres.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from kling_expand_plugin.batch.ledger import INTENT, LedgerError, SqliteLedger, owner_is_gone
from kling_expand_plugin.kling.models import Task, TaskImage, TaskStatus

ENDPOINT = "https://kling.example"

V1_SCHEMA = """
CREATE TABLE tasks (endpoint TEXT NOT NULL, external_id TEXT NOT NULL, source_key TEXT NOT NULL,
    task_id TEXT, status TEXT NOT NULL, status_msg TEXT, units TEXT, images INTEGER,
    created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (endpoint, external_id));
CREATE TABLE results (endpoint TEXT NOT NULL, external_id TEXT NOT NULL, idx INTEGER NOT NULL,
    path TEXT NOT NULL, PRIMARY KEY (endpoint, external_id, idx));
"""


@pytest.fixture
def ledger(tmp_path):
    opened = SqliteLedger(tmp_path / "ledger.sqlite")
    yield opened
    opened.close()


def other_process(ledger: SqliteLedger, owner: str) -> SqliteLedger:
    another = SqliteLedger(ledger.path)
    another.owner = owner
    return another


def test_a_claim_is_one_process_s_until_it_records_the_task(ledger):
    claim = ledger.claim(ENDPOINT, "kep-1", "a.png")
    assert claim.mine and not claim.in_doubt and claim.entry.status == INTENT
    rival = other_process(ledger, f"elsewhere:{os.getpid()}:beef")  # alive, on another host
    try:
        busy = rival.claim(ENDPOINT, "kep-1", "a.png")
        assert not busy.mine
        ledger.record(ENDPOINT, "kep-1", Task("t1", TaskStatus.SUBMITTED, external_task_id="kep-1"))
        later = rival.claim(ENDPOINT, "kep-1", "a.png")
        assert not later.mine and later.entry.task_id == "t1"
    finally:
        rival.close()


def test_the_claim_of_a_dead_process_is_taken_over_in_doubt(ledger):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    import socket

    owner = f"{socket.gethostname()}:{dead.stdout.strip()}:0000"
    assert owner_is_gone(owner)
    gone = other_process(ledger, owner)
    gone.claim(ENDPOINT, "kep-2", "b.png")
    gone.close()
    taken = ledger.claim(ENDPOINT, "kep-2", "b.png")
    assert taken.mine and taken.in_doubt  # look the task up before posting


def test_a_claim_not_renewed_for_too_long_is_taken_over(ledger):
    rival = other_process(ledger, "elsewhere:1:beef")
    rival.claim(ENDPOINT, "kep-3", "c.png")
    rival.close()
    assert not ledger.claim(ENDPOINT, "kep-3", "c.png").mine
    ledger.stale_after = 0.05
    time.sleep(0.1)
    assert ledger.claim(ENDPOINT, "kep-3", "c.png").mine


def test_a_claim_released_before_its_post_leaves_nothing_in_doubt(ledger):
    ledger.claim(ENDPOINT, "kep-4", "d.png")
    ledger.release(ENDPOINT, "kep-4", posted=False)
    assert ledger.entry(ENDPOINT, "kep-4") is None
    ledger.claim(ENDPOINT, "kep-5", "e.png")
    ledger.release(ENDPOINT, "kep-5", posted=True)  # it may exist: the next one looks it up
    again = ledger.claim(ENDPOINT, "kep-5", "e.png")
    assert again.mine and again.in_doubt


def test_a_restart_takes_a_new_external_id_once(ledger):
    ledger.claim(ENDPOINT, "kep-6", "f.png")
    failed = Task("t6", TaskStatus.FAILED, external_task_id="kep-6")
    ledger.record(ENDPOINT, "kep-6", failed)
    entry = ledger.entry(ENDPOINT, "kep-6")
    assert entry is not None and entry.status == "failed"
    restarted = ledger.restart(ENDPOINT, entry)
    assert restarted is not None and restarted.sent_external_id == "kep-6-r1"
    assert restarted.task_id is None and restarted.attempt == 1
    assert ledger.restart(ENDPOINT, entry) is None  # someone (here: we) restarted it already


def test_an_older_ledger_is_brought_to_this_version(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        db.execute(
            "INSERT INTO tasks VALUES ('e', 'kep-old', 'a.png', 't9', 'succeed', '', '1', 0, 1, 1)"
        )
    with sqlite3.connect(tmp_path / "older.sqlite") as db:  # before source_key existed
        db.execute("CREATE TABLE tasks (endpoint TEXT, external_id TEXT, task_id TEXT, "
                   "status TEXT, PRIMARY KEY (endpoint, external_id))")  # fmt: skip
    for name in ("old.sqlite", "older.sqlite"):
        ledger = SqliteLedger(tmp_path / name)
        try:
            assert ledger.claim("e", "kep-new", "n.png").mine
        finally:
            ledger.close()
    ledger = SqliteLedger(path)
    entry = ledger.entry("e", "kep-old")
    ledger.close()
    assert entry is not None and entry.succeeded and entry.sent_external_id == "kep-old"


@pytest.mark.parametrize(
    "content", [b"this is not sqlite" * 100, b"SQLite format 3\x00" + b"\xff" * 4000]
)
def test_an_unreadable_ledger_is_a_clear_error(tmp_path, content):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(content)
    with pytest.raises(LedgerError) as raised:
        SqliteLedger(path)
    message = str(raised.value)
    assert str(path) in message and "move it aside" in message


def test_a_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)")
    with pytest.raises(LedgerError, match="not a kling-expand ledger"):
        SqliteLedger(path)


def test_the_command_refuses_an_unreadable_ledger_before_any_work(tmp_path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"garbage" * 500)
    photo = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (400, 300), "teal").save(photo)
    ran = subprocess.run(
        [sys.executable, "-m", "kling_expand_plugin.cli", "expand", str(photo),
         "--aspect", "16:9", "--ledger", str(path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 2
    assert str(path) in ran.stderr and "move it aside" in ran.stderr
    assert "Traceback" not in ran.stderr and not (tmp_path / "out").exists()


def test_a_result_is_recorded_only_once_written_whole(ledger):
    ledger.claim(ENDPOINT, "kep-1", "a.png")
    image = TaskImage(0, "http://x/0.png")
    done = Task("t1", TaskStatus.SUCCEEDED, external_task_id="kep-1", units="1", images=(image,))
    ledger.record(ENDPOINT, "kep-1", done)

    def cut_short(file):
        file.write(b"\x89PNG half")
        raise OSError("the download broke off")

    with pytest.raises(OSError, match="broke off"):
        ledger.store_result(ENDPOINT, "kep-1", 0, cut_short)
    entry = ledger.entry(ENDPOINT, "kep-1")
    assert entry is not None and entry.results == () and not entry.complete
    assert list(ledger.results_dir.glob("*/*")) == []  # no part file, no result
    stored = ledger.store_result(ENDPOINT, "kep-1", 0, lambda file: file.write(b"whole"))
    assert stored == ledger.results_dir / "kep-1" / "0.png" and stored.read_bytes() == b"whole"
    entry = ledger.entry(ENDPOINT, "kep-1")
    assert entry is not None and entry.complete and entry.results == (stored,)


def test_half_written_results_left_by_a_crash_are_cleaned(tmp_path):
    folder = tmp_path / "ledger.sqlite.results" / "kep-1"
    folder.mkdir(parents=True)
    old = folder / ".0.png.abc.part"
    old.write_bytes(b"half")
    recent = folder / ".1.png.def.part"
    recent.write_bytes(b"another process is writing this")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    SqliteLedger(tmp_path / "ledger.sqlite").close()
    assert not old.exists() and recent.exists()


@pytest.mark.slow
def test_processes_opening_a_new_ledger_at_once_all_succeed(tmp_path):
    # Eight processes race to create each of five new ledgers, at agreed moments.
    code = (
        "import sys, time; from kling_expand_plugin.batch.ledger import SqliteLedger\n"
        "start = float(sys.argv[2])\n"
        "for round in range(5):\n"
        "    time.sleep(max(0.0, start + 0.25 * round - time.time()))\n"
        "    SqliteLedger(f'{sys.argv[1]}/ledger{round}.sqlite').close()\n"
    )
    start = str(time.time() + 2.0)  # after every interpreter has started
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), start], stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    errors = [process.communicate(timeout=60)[1].decode() for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, "".join(errors)
