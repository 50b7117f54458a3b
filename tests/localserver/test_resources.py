"""Bounded by design: results in files, bodies read only once allowed and within a byte budget,
a bounded number of connections and threads, and URL fetches with a deadline and a size cap."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
import requests

from kling_expand_plugin.kling import limits
from tests.helpers import Loopback, free_port, wait_until

from .conftest import EXPAND, auth_headers, create_body, make_token

pytestmark = pytest.mark.slow  # connection and byte limits waited out


def _create(api, **overrides) -> dict:
    response = api.create(create_body(**overrides))
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _answer(connection: socket.socket, timeout: float = 5.0) -> tuple[int, dict]:
    """Read one HTTP answer from a raw connection: its status and JSON body."""
    connection.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        ).split(b":")[1]
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk
        body += chunk
    return int(head.split()[1]), json.loads(body[:length])


def _closed_while_dripping(connection: socket.socket, pieces: list[bytes], every: float) -> bool:
    """Send the pieces `every` seconds apart until the server closes the connection; whether
    it did."""
    try:
        for piece in pieces:
            connection.sendall(piece)
            time.sleep(every)
            connection.setblocking(False)
            try:
                if connection.recv(1) == b"":
                    return True
            except BlockingIOError:
                pass
            finally:
                connection.setblocking(True)
    except OSError:  # a send met the reset of a closed connection
        return True
    return False


def _post_head(length: int, token: str) -> bytes:
    return (
        f"POST {EXPAND} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


# Results in files


def test_results_are_files_streamed_expired_and_deleted_on_stop(make_api):
    api = make_api(result_ttl=0.5)
    task = api.wait_final(_create(api, n=2)["task_id"])
    folder = api.server.store.folder
    assert folder is not None
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 2
    on_disk = api.server.stats()["result_bytes_on_disk"]
    assert on_disk == sum(path.stat().st_size for path in files) > 0
    downloaded = [requests.get(image["url"], timeout=5) for image in task["task_result"]["images"]]
    assert sorted(len(response.content) for response in downloaded) == sorted(
        path.stat().st_size for path in files
    )
    assert {response.content for response in downloaded} == {path.read_bytes() for path in files}
    wait_until(lambda: api.server.stats()["result_bytes_on_disk"] == 0)
    assert not any(folder.rglob("*.png"))
    api.server.stop()
    assert not folder.exists()


def test_thirty_results_are_on_disk_not_in_memory(make_api):
    api = make_api(concurrency=100, latency=0.0)
    ids = [_create(api, n=3)["task_id"] for _ in range(10)]
    for task_id in ids:
        api.wait_final(task_id)
    store = api.server.store
    held = [value for task in store._tasks.values() for value in task.images.values()]
    assert len(held) == 30 and not any(isinstance(value, bytes) for value in held)
    assert api.server.stats()["result_bytes_on_disk"] > 0


def test_a_failed_task_leaves_no_files(make_api):
    api = make_api(faults={"task-failed": 1.0})
    api.wait_final(_create(api)["task_id"])
    assert api.server.stats()["result_bytes_on_disk"] == 0


# Refused before the body is read


@pytest.mark.parametrize(
    ("token", "length", "status", "code"),
    [
        pytest.param("not-a-jwt", 10_000_000, 401, 1002, id="bad token"),
        pytest.param(None, 20 * 1024 * 1024, 413, 1200, id="over the cap"),
    ],
)
def test_refused_before_a_single_body_byte_is_sent(api, token, length, status, code):
    with _connect(api.server) as connection:
        connection.sendall(_post_head(length, token or make_token()))
        answered_status, payload = _answer(connection, timeout=3)
    assert (answered_status, payload["code"]) == (status, code)
    assert api.server.stats()["buffered_body_bytes"] == 0


def test_a_refused_body_is_discarded_and_the_connection_kept(api):
    session = requests.Session()
    body = json.dumps(create_body(prompt="x" * 1000))
    response = session.post(
        api.url + EXPAND, data=body, headers={"Authorization": "Bearer bad"}, timeout=5
    )
    assert (response.status_code, response.json()["code"]) == (401, 1002)
    response = session.post(api.url + EXPAND, data=body, headers=auth_headers(), timeout=5)
    assert response.json()["code"] == 0
    assert api.server.stats()["connections"]["max_open"] == 1  # one keep-alive connection


def test_a_refused_body_dripped_slowly_is_cut_off(make_api):
    api = make_api(drain_timeout=0.5)
    with _connect(api.server) as connection:
        connection.sendall(_post_head(10_000_000, "not-a-jwt") + b"x" * 1000)
        status, payload = _answer(connection)
        assert (status, payload["code"]) == (401, 1002)
        started = time.monotonic()
        assert _closed_while_dripping(connection, [b"x"] * 100, every=0.05)  # 5 s if not
        assert time.monotonic() - started < 4
    wait_until(lambda: api.server.stats()["connections"]["open"] == 0)


def test_headers_dripped_slowly_are_cut_off_but_an_idle_connection_is_kept(make_api):
    api = make_api(header_timeout=1.0)
    with _connect(api.server) as idle, _connect(api.server) as slow:
        idle.sendall(b"GET /local/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(idle)[0] == 200
        slow.sendall(b"GET /local/stats HTTP/1.1\r\n")
        started = time.monotonic()
        headers = [f"X-Drip-{number}: 1\r\n".encode() for number in range(100)]
        assert _closed_while_dripping(slow, headers, every=0.2)  # 20 s if not
        assert time.monotonic() - started < 5
        time.sleep(0.5)  # idle for longer than the header deadline, in all
        idle.sendall(b"GET /local/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(idle)[0] == 200


# Bounded connections and threads


def test_connections_beyond_the_limit_wait_then_get_5001(make_api):
    api = make_api(max_connections=2, connection_wait=0.2)
    threads_before = threading.active_count()
    idle = [_connect(api.server) for _ in range(2)]
    wait_until(lambda: api.server.stats()["connections"]["open"] == 2)
    with _connect(api.server) as extra:
        extra.sendall(b"GET /local/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        status, payload = _answer(extra)
    assert (status, payload["code"]) == (503, 5001)
    assert "2 connections" in payload["message"]
    more = [_connect(api.server) for _ in range(10)]
    time.sleep(0.3)
    assert threading.active_count() <= threads_before + 2
    for connection in idle + more:
        connection.close()
    wait_until(lambda: api.server.stats()["connections"]["open"] == 0, timeout=10)
    stats = requests.get(api.url + "/local/stats", timeout=5).json()
    assert stats["connections"]["max_open"] == 2 and stats["connections"]["refused"] >= 1


def test_while_every_connection_stays_busy_the_next_ones_are_refused_at_once(make_api):
    api = make_api(max_connections=2, connection_wait=1.0)
    idle = [_connect(api.server) for _ in range(2)]
    wait_until(lambda: api.server.stats()["connections"]["open"] == 2)
    extras = [_connect(api.server) for _ in range(6)]
    started = time.monotonic()
    for extra in extras:
        extra.sendall(b"GET /local/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = [_answer(extra)[0] for extra in extras]
    elapsed = time.monotonic() - started
    assert answers == [503] * 6
    assert elapsed < 3  # one wait of 1 s, not six in turn
    idle.pop().close()  # a thread comes free: the next connection waits for it again
    response = requests.get(api.url + "/local/stats", timeout=5)
    assert response.status_code == 200
    for connection in idle + extras:
        connection.close()


def test_a_waiting_connection_that_cannot_be_served_fails_alone(make_api, monkeypatch):
    api = make_api(max_connections=1, connection_wait=1.0)
    busy = _connect(api.server)
    wait_until(lambda: api.server.stats()["connections"]["open"] == 1)
    start = socketserver.ThreadingMixIn.process_request
    failures = iter([RuntimeError("can't start new thread")])

    def start_or_fail(server, request, address):
        for error in failures:
            raise error
        start(server, request, address)

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", start_or_fail)
    with _connect(api.server) as unlucky:
        unlucky.sendall(b"GET /local/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # it waits in the queue
        busy.close()  # a thread comes free, but none can be started for it
        unlucky.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert unlucky.recv(1024) == b""  # closed, unanswered
    busy = _connect(api.server)  # takes the free thread
    wait_until(lambda: api.server.stats()["connections"]["open"] == 1)
    with _connect(api.server) as extra:  # waits, and is still answered
        extra.sendall(b"GET /local/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(extra)[0] == 503
    busy.close()


def test_stopping_closes_waiting_connections_and_ends_the_waiting_thread(make_api):
    api = make_api(max_connections=1, connection_wait=30.0)
    busy = _connect(api.server)
    wait_until(lambda: api.server.stats()["connections"]["open"] == 1)
    waiting = _connect(api.server)
    waiting.sendall(b"GET /local/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    started = time.monotonic()
    api.server.stop()
    assert time.monotonic() - started < 10  # not the 30 s the connection may wait
    assert not any(thread.name == "kling-local-wait" for thread in threading.enumerate())
    waiting.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert waiting.recv(1024) == b""
    busy.close()
    waiting.close()


def test_a_waiting_connection_is_served_when_one_frees(make_api):
    api = make_api(max_connections=1, connection_wait=5.0)
    busy = _connect(api.server)
    wait_until(lambda: api.server.stats()["connections"]["open"] == 1)
    leaving = threading.Event()

    def leave() -> None:
        leaving.set()
        busy.close()

    threading.Timer(0.3, leave).start()
    response = requests.get(api.url + "/local/stats", timeout=5)
    assert response.status_code == 200 and leaving.is_set()  # served once the other left
    assert response.json()["connections"]["refused"] == 0


# Bounded bytes buffered


def test_bodies_beyond_the_byte_budget_wait_then_get_5001(make_api):
    api = make_api(max_body_bytes=100_000, max_buffered_bytes=100_000, body_wait=0.3)
    with _connect(api.server) as holder:
        holder.sendall(_post_head(80_000, make_token()) + b"{")  # and then stalls
        wait_until(lambda: api.server.stats()["buffered_body_bytes"] == 80_000)
        body = b"{" + b" " * 79_998 + b"}"
        started = time.monotonic()
        response = requests.post(api.url + EXPAND, data=body, headers=auth_headers(), timeout=5)
        assert (response.status_code, response.json()["code"]) == (503, 5001)
        assert time.monotonic() - started >= 0.3
        holder.sendall(b" " * 79_998 + b"}")
        assert _answer(holder)[1]["code"] == 1201  # a valid JSON object, without the fields
    wait_until(lambda: api.server.stats()["buffered_body_bytes"] == 0)
    response = requests.post(api.url + EXPAND, data=body, headers=auth_headers(), timeout=5)
    assert response.json()["code"] == 1201


def test_a_budget_smaller_than_one_body_is_refused():
    from kling_expand_plugin.localserver import LocalServer

    with pytest.raises(ValueError, match="max_buffered_bytes"):
        LocalServer(max_body_bytes=1000, max_buffered_bytes=999)


# The image URL fetch: a deadline in all and a size cap


class Hostile:
    """A loopback server whose bodies misbehave: dripped, endless, or announced too big."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.sent_whole: set[str] = set()  # paths whose whole body went out
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # close-delimited bodies

            def do_GET(self) -> None:
                if self.path not in ("/drip", "/drip-endless", "/endless", "/huge"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                if self.path == "/drip":
                    self.send_header("Content-Length", "1000")
                elif self.path == "/huge":
                    self.send_header("Content-Length", str(50 * 1024 * 1024))
                self.end_headers()
                try:
                    if self.path in ("/drip", "/drip-endless"):
                        hostile._write(self.wfile, b"\x89", count=400, pause=0.02)
                    elif self.path == "/endless":
                        hostile._write(self.wfile, b"\0" * 65536, count=1024, pause=0.0)
                    else:
                        return
                    hostile.sent_whole.add(self.path)
                except OSError:
                    pass  # the fetcher hung up, as it should

            def log_message(self, *args: object) -> None:
                pass

        self._server = Loopback(Handler)
        self.url = self._server.url

    def _write(self, out, piece: bytes, *, count: int, pause: float) -> None:
        for _ in range(count):  # bounded: 8 s of dripping, or 64 MiB
            if self.stop.is_set():
                raise OSError("closing")
            out.write(piece)
            out.flush()
            if pause:
                time.sleep(pause)

    def close(self) -> None:
        self.stop.set()
        self._server.close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/drip", "within 0.5 s"),
        ("/drip-endless", "within 0.5 s"),
        ("/endless", f"more than {limits.MAX_FILE_BYTES} bytes"),
        ("/huge", f"more than {limits.MAX_FILE_BYTES} bytes"),
    ],
)
def test_image_url_fetch_has_a_deadline_and_a_size_cap(make_api, hostile, path, words):
    api = make_api(fetch_timeout=0.5)
    response = api.create(create_body(image=hostile.url + path))
    assert (response.status_code, response.json()["code"]) == (400, 1201)
    assert words in response.json()["message"]
    assert path not in hostile.sent_whole  # answered without waiting for the body's end
    assert sum(api.server.stats()["tasks"].values()) == 0


def test_image_url_that_is_refused_or_unreachable_is_1201(make_api, hostile):
    api = make_api(fetch_timeout=2)
    for url in (hostile.url + "/missing", f"http://127.0.0.1:{free_port()}/a.png"):
        response = api.create(create_body(image=url))
        assert response.json()["code"] == 1201
        assert "could not be downloaded" in response.json()["message"]


# accept_reused_ids


def test_accept_reused_ids_makes_a_new_paid_task(make_api):
    api = make_api(accept_reused_ids=True)
    first = _create(api, external_task_id="twice", n=2)
    second = _create(api, external_task_id="twice", n=2)
    assert first["task_id"] != second["task_id"]
    for task_id in (first["task_id"], second["task_id"]):
        api.wait_final(task_id)
    assert api.one(f"{EXPAND}/twice")["task_id"] == second["task_id"]  # the newest
    stats = api.server.stats()
    assert stats["creates_by_external_id"] == {"twice": 2}
    assert stats["create_attempts_by_external_id"] == {"twice": 2}
    assert stats["units_charged"] == 4
