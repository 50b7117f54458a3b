"""The callback receiver under attack during a real batch, with a webhook secret set.

tests/test_receiver.py checks each kind of bad delivery against a bare receiver. Here the
stage runs a batch in callback mode behind a relay (its `callback_url`) that, before passing
each genuine delivery on, sends the receiver forged ones for the same task: unsigned, signed
with the wrong secret, tampered, stale (an old message, validly signed), replayed, and
addressed to another task's URL. Every forged delivery says the task failed; had one been
believed, its item would fail. Every one must be refused, and the batch must finish whole.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest
import requests

from imgpipe import Item
from kling_expand_plugin.kling import webhooks
from kling_expand_plugin.outpaint.stage import OutpaintStage
from tests.helpers import Loopback, free_port, picture

from .conftest import local_server

SECRET = "whsec_" + base64.b64encode(b"callbacks-test-webhook-secret-01").decode()
WRONG_SECRET = "whsec_" + base64.b64encode(b"an-attacker-guessed-this-secret!").decode()
IMAGES = 12


def as_failed(body: bytes) -> bytes:
    """The delivered task, rewritten to say it failed."""
    task = json.loads(body)
    task.update(task_status="failed", task_status_msg="forged failure")
    task["task_result"] = {"images": []}
    return json.dumps(task).encode()


def signed(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.sign(secret, msg_id, timestamp, body),
    }


class Relay:
    """Passes deliveries on to the receiver, preceded by forged ones; records the answers."""

    def __init__(self, receiver_url: str) -> None:
        self.receiver_url = receiver_url
        self.outcomes: Counter[tuple[str, int, str]] = Counter()
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def relay(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        genuine = {name: headers[name] for name in webhooks_headers(headers)}
        now = int(time.time())
        forged = as_failed(body)
        with self.lock:
            other = next((p for p in reversed(self.paths) if p != path), None)
            self.paths.append(path)
        attacks = {
            "unsigned": (path, {}, forged),
            "wrong secret": (path, signed(WRONG_SECRET, forged, now), forged),
            "tampered": (path, genuine, forged),
            "stale": (path, signed(SECRET, forged, now - 600), forged),
        }
        if other is not None:
            attacks["other task's url"] = (other, genuine, body)
        for kind, (target, sent, data) in attacks.items():
            self.send(kind, target, sent, data)
        status, answer = self.send("genuine", path, genuine, body)
        self.send("replay", path, genuine, body)
        return status, answer

    def send(self, kind: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        response = requests.post(
            self.receiver_url + path,
            data=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=5,
        )
        outcome = response.json().get("outcome", "")
        with self.lock:
            self.outcomes[(kind, response.status_code, outcome)] += 1
        return response.status_code, response.content


def webhooks_headers(headers: dict[str, str]) -> list[str]:
    return [name for name in headers if name.startswith("webhook-")]


@contextmanager
def relay_server(relay: Relay) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, answer = relay.relay(self.path, headers, body)
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    with Loopback(Handler) as server:
        yield server.url


@pytest.mark.timeout(60)
def test_forged_replayed_stale_and_unsigned_deliveries_are_refused_mid_batch(
    kling_env, tmp_path, monkeypatch
):
    monkeypatch.setenv("KLING_WEBHOOK_SECRET", SECRET)
    port = free_port()
    relay = Relay(f"http://127.0.0.1:{port}")
    with (
        relay_server(relay) as relay_url,
        local_server(concurrency=4, latency=0.3, webhook_secret=SECRET) as server,
    ):
        stage = OutpaintStage(
            endpoint=server.url,
            aspect="16:9",
            concurrency=4,
            on_error="passthrough",
            callback=f"127.0.0.1:{port}",
            callback_url=relay_url,
            ledger=str(tmp_path / "ledger.sqlite"),
            timeout=30,
        )
        out = list(stage(Item(f"cb{n:02d}.png", picture(n)) for n in range(IMAGES)))
        deadline = time.monotonic() + 10  # let the last deliveries settle
        while time.monotonic() < deadline:
            counts = server.stats()["callbacks"]
            if counts["queued"] == counts["sent"] + counts["dropped"] + counts["failed"]:
                break
            time.sleep(0.05)
        stats = server.stats()

    assert [item.metadata["outpaint"].get("error") for item in out] == [None] * IMAGES
    assert stage.summary["done"] == IMAGES and stage.summary["failed"] == 0
    sent = stats["callbacks"]["sent"]
    assert sent >= 2 * IMAGES  # deliveries really went through the relay
    by_kind: dict[str, set[tuple[int, str]]] = {}
    for kind, status, outcome in relay.outcomes:
        by_kind.setdefault(kind, set()).add((status, outcome))
    assert by_kind["unsigned"] == {(401, "unsigned")}
    assert by_kind["wrong secret"] == {(401, "bad_signature")}
    assert by_kind["tampered"] == {(401, "bad_signature")}
    assert by_kind["stale"] == {(401, "stale_timestamp")}
    assert by_kind["other task's url"] <= {(403, "wrong_token")}
    assert by_kind["replay"] == {(200, "replayed")}
    assert {status for status, _ in by_kind["genuine"]} == {200}
    genuine = sum(relay.outcomes[key] for key in relay.outcomes if key[0] == "genuine")
    # A delivery still in flight as the stage stops is relayed but counted failed by the server.
    assert sent <= genuine <= sent + stats["callbacks"]["failed"]
