"""`kling-expand doctor`: credentials, reachability, clock skew, auth and the ledger."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from kling_expand_plugin.batch.ledger import SqliteLedger
from kling_expand_plugin.kling.models import Task, TaskStatus
from tests.helpers import Loopback, free_port

from .conftest import ACCESS_KEY, run_cli


def _checks(ran) -> dict[str, dict]:
    return {entry["check"]: entry for entry in ran.json()}


def test_everything_ok_against_a_served_endpoint(server, keys, tmp_path):
    ran = run_cli("doctor", "--endpoint", server.url, "--ledger", str(tmp_path / "l.sqlite"),
                  "--json", env=keys)  # fmt: skip
    assert ran.code == 0, ran.stdout
    checks = _checks(ran)
    assert list(checks) == ["credentials", "reachable", "clock", "auth", "ledger"]
    assert all(entry["ok"] for entry in checks.values())
    assert "none yet" in checks["ledger"]["detail"]
    assert ACCESS_KEY not in ran.stdout and "secret" not in checks["credentials"]["detail"][:4]
    text = run_cli("doctor", "--endpoint", server.url, "--ledger", str(tmp_path / "l.sqlite"),
                   env=keys)  # fmt: skip
    assert text.code == 0 and text.stdout.startswith("OK    credentials")


def test_the_ledger_is_counted_by_status(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    for number, status in enumerate(["succeed", "succeed", "failed"]):
        external = f"kep-{number}"
        ledger.claim("local", external, f"{number}.png")
        task = Task(f"t{number}", TaskStatus(status), external_task_id=external)
        ledger.record("local", external, task)
    ledger.claim("local", "kep-doubt", "doubt.png")
    ledger.close()
    ran = run_cli("doctor", "--endpoint", "local", "--ledger", str(tmp_path / "ledger.sqlite"))
    assert ran.code == 0, ran.stdout
    line = next(line for line in ran.stdout.splitlines() if "ledger" in line)
    assert "1 creating, 1 failed, 2 succeed" in line and "1 create in doubt" in line


def test_a_corrupt_ledger_fails(tmp_path):
    (tmp_path / "ledger.sqlite").write_bytes(b"this is not sqlite" * 100)
    ran = run_cli("doctor", "--endpoint", "local", "--ledger", str(tmp_path / "ledger.sqlite"),
                  "--json")  # fmt: skip
    assert ran.code == 1 and not _checks(ran)["ledger"]["ok"]


def test_missing_credentials_and_refused_credentials_fail(server, tmp_path):
    ledger = ("--ledger", str(tmp_path / "l.sqlite"))
    ran = run_cli("doctor", "--endpoint", server.url, *ledger, "--json")
    assert ran.code == 1 and not _checks(ran)["credentials"]["ok"]
    wrong = {"KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": "wrong-secret-xyz"}
    ran = run_cli("doctor", "--endpoint", server.url, *ledger, "--json", env=wrong)
    checks = _checks(ran)
    assert ran.code == 1 and checks["reachable"]["ok"] and not checks["auth"]["ok"]
    assert "wrong-secret-xyz" not in ran.stdout


def test_an_unreachable_server_fails(keys, tmp_path):
    ran = run_cli("doctor", "--endpoint", f"http://127.0.0.1:{free_port()}", "--ledger",
                  str(tmp_path / "l.sqlite"), "--json", env=keys)  # fmt: skip
    checks = _checks(ran)
    assert ran.code == 1 and not checks["reachable"]["ok"] and "clock" not in checks


@pytest.fixture
def skewed_server() -> Iterator[str]:
    """A server whose clock is 60 s ahead of ours, accepting any token."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"code": 0, "message": "", "request_id": "r", "data": []}).encode()
            self.send_response_only(200)
            self.send_header("Date", email.utils.formatdate(time.time() + 60, usegmt=True))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with Loopback(Handler) as server:
        yield server.url


def test_a_skewed_clock_fails(skewed_server, keys, tmp_path):
    ran = run_cli("doctor", "--endpoint", skewed_server, "--ledger", str(tmp_path / "l.sqlite"),
                  "--json", env=keys)  # fmt: skip
    checks = _checks(ran)
    assert ran.code == 1 and checks["auth"]["ok"] and not checks["clock"]["ok"]
    assert "behind the server's" in checks["clock"]["detail"]
    skew = float(checks["clock"]["detail"].split()[3])  # "our clock is 59.6 s behind ..."
    assert 59 <= skew <= 61  # the Date header has whole seconds


def test_doctor_without_options_checks_the_local_server(tmp_path):
    ran = run_cli("doctor", "--ledger", str(tmp_path / "none.sqlite"), "--json")
    assert ran.code == 0, ran.stdout
    assert all(entry["ok"] for entry in _checks(ran).values())
