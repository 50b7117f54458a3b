"""URL inputs, against a loopback server that drips, streams without end, lies about sizes and
counts every request: each fetch ends within its deadline and its size cap, happens once per
input however often the input is read (the stage, the report, the copy of an unchanged
input), and a pre-signed URL's query string is never shown."""

from __future__ import annotations

import collections
import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from PIL import Image

from imgpipe import FetchError, Item, UrlLimits, redact_url
from imgpipe.stages.load import load
from kling_expand_plugin.imaging.prepare import prepare
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.imaging.target import Target
from tests.helpers import Loopback, free_port

pytestmark = pytest.mark.slow  # servers that drip and never stop; deadlines of a second

SECRET = "Sig-0123456789abcdef-DO-NOT-SHOW"
SIGNED = f"?X-Amz-Credential=AKIA-also-secret&X-Amz-Signature={SECRET}"
HANDLER_SECONDS = 20.0
"""No handler runs longer than this, whatever the client does."""


def png(size: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size, "teal")
    image.paste("orange", (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: collections.Counter[str] = collections.Counter()
    photo = png((400, 300))
    half = b"\0" * 2_000_000

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        self.hits[path] += 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client left
            getattr(self, "serve_" + path.strip("/").replace("-", "_").replace(".", "_"))()

    def start(self, length: int | None, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def serve_photo_png(self) -> None:
        self.start(len(self.photo))
        self.wfile.write(self.photo)

    def serve_notes_txt(self) -> None:
        body = b"not a picture"
        self.start(len(body))
        self.wfile.write(body)

    def serve_drip_png(self) -> None:
        """A 10 kB body, one byte each 0.05 s: 500 s if nobody stops it."""
        self.start(10_000)
        ends = time.monotonic() + HANDLER_SECONDS
        for byte in self.photo[:10_000]:
            if time.monotonic() > ends:
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.05)

    def serve_endless_png(self) -> None:
        """As fast as the socket takes it, without a length, until the client leaves."""
        self.start(None)
        chunk = b"\0" * 65536
        ends = time.monotonic() + HANDLER_SECONDS
        while time.monotonic() < ends:
            self.wfile.write(chunk)

    def serve_stream_png(self) -> None:
        """100 kB/s, without a length, until the client leaves: under any cap for a while."""
        self.start(None)
        ends = time.monotonic() + HANDLER_SECONDS
        while time.monotonic() < ends:
            self.wfile.write(b"\0" * 1024)
            time.sleep(0.01)

    def serve_pause_png(self) -> None:
        self.pause(1000)

    def serve_pause_unsized_png(self) -> None:
        self.pause(None)

    def pause(self, length: int | None) -> None:
        """A byte, another 0.6 s later, then silence: a wait that starts late in the fetch."""
        self.start(length)
        for _ in range(2):
            self.wfile.write(b"\0")
            self.wfile.flush()
            time.sleep(0.6)
        time.sleep(HANDLER_SECONDS)

    def serve_half_png(self) -> None:
        """Half of a 4 MB body, then silence."""
        self.start(2 * len(self.half))
        self.wfile.write(self.half)
        self.wfile.flush()
        time.sleep(HANDLER_SECONDS)

    def serve_huge_png(self) -> None:
        self.start(10**12)
        self.wfile.write(self.photo)

    def serve_gone_png(self) -> None:
        self.start(0, status=404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Hostile.hits = collections.Counter()
    with Loopback(Hostile) as httpd:
        yield httpd.url


def refusal(url: str, limits: UrlLimits | None = None) -> tuple[FitError, float]:
    started = time.monotonic()
    with pytest.raises(FitError) as refused:
        prepare(Item("input.png", url, url_limits=limits or UrlLimits()), Target(aspect=16 / 9))
    return refused.value, time.monotonic() - started


@pytest.mark.timeout(30)
def test_a_dripping_body_is_cut_at_the_deadline(server):
    error, seconds = refusal(server + "/drip.png" + SIGNED, UrlLimits(deadline=1.0))
    assert 1.0 <= seconds < 2.5
    assert "not fetched within 1 s" in error.problem and "within 1 s" in error.rule
    assert SECRET not in str(error) and "X-Amz-Signature=..." in str(error)


@pytest.mark.timeout(30)
def test_an_endless_body_is_cut_at_the_size_cap(server):
    error, seconds = refusal(server + "/endless.png", UrlLimits(max_bytes=1 << 20))
    assert seconds < 5 and f"more than {1 << 20} bytes" in error.problem and "1 MiB" in error.rule


@pytest.mark.timeout(30)
def test_an_endless_body_under_the_cap_is_cut_at_the_deadline(server):
    error, seconds = refusal(server + "/stream.png", UrlLimits(deadline=1.0))
    assert 1.0 <= seconds < 2.5 and "not fetched within 1 s" in error.problem


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/pause.png", "/pause-unsized.png"])
def test_a_silence_late_in_the_body_ends_at_the_deadline_not_after(server, path):
    error, seconds = refusal(server + path, UrlLimits(deadline=1.0))
    assert 1.0 <= seconds < 2.0 and "not fetched within 1 s" in error.problem


def test_a_body_declared_over_the_cap_is_refused_unread(server):
    error, seconds = refusal(server + "/huge.png")
    assert seconds < 2 and "1000000000000 bytes, more than" in error.problem


def test_a_url_is_fetched_once_however_often_it_is_read(server):
    good, gone = Item("a", server + "/photo.png" + SIGNED), Item("b", server + "/gone.png")
    assert good.read_bytes() == good.read_bytes() == Hostile.photo
    for _ in range(2):
        with pytest.raises(FetchError, match="HTTP 404"):
            gone.read_bytes()
    assert good.replace(key="c").read_bytes() == Hostile.photo
    assert Hostile.hits == {"/photo.png": 1, "/gone.png": 1}


def test_a_failed_fetch_keeps_nothing_of_what_it_read(server):
    item = Item("a", server + "/half.png", url_limits=UrlLimits(deadline=1.0))
    gc.disable()  # what a reference cycle holds stays held
    tracemalloc.start()
    try:
        for _ in range(2):  # failed, then the failure said again
            with pytest.raises(FetchError, match="deadline"):
                item.read_bytes()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held < 500_000  # the 2 MB read before the stall are let go


def test_a_signed_url_is_redacted_in_keys_reprs_and_errors(server):
    url = server + "/photo.png" + SIGNED
    assert redact_url(url) == (server + "/photo.png?X-Amz-Credential=...&X-Amz-Signature=...")
    assert redact_url("https://user:pw@host/a.png?token") == "https://...@host/a.png?token=..."
    assert redact_url("http://user:pw@[::1/a.png?sig=2") == "http://...@[::1/a.png?..."
    [item] = list(load(paths=[url])([]))
    assert SECRET not in item.key and SECRET not in repr(item) and "AKIA" not in repr(item)
    assert item.image == url  # the real URL is still what is fetched


@pytest.mark.timeout(120)
def test_expand_fetches_each_url_input_once_and_never_shows_its_query(server, tmp_path):
    """An input already of the target shape (copied, and shown in the report) and one that is
    not an image (failed, and the report tries to preview it): one request each, and the
    signature appears nowhere, even in the debug log."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    process = subprocess.run(
        [
            sys.executable, "-m", "kling_expand_plugin.cli", "expand", "-vv",
            server + "/photo.png" + SIGNED, server + "/notes.txt" + SIGNED,
            "--aspect", "4:3", "--out", str(out), "--json",
        ],
        capture_output=True, text=True, env=env, timeout=90,
    )  # fmt: skip
    assert process.returncode == 1, process.stderr
    assert Hostile.hits == {"/photo.png": 1, "/notes.txt": 1}
    records = {record["key"]: record for record in json.loads(process.stdout)["inputs"]}
    assert records["photo.png"]["status"] == "unchanged"
    assert records["notes.txt"]["status"] == "failed"
    assert "notes.txt" in records["notes.txt"]["error"]
    shown = process.stdout + process.stderr + (out / "report.html").read_text()
    assert SECRET not in shown and "AKIA" not in shown
    assert Path(out / "photo-0.png").exists()


def test_a_refused_connection_is_said_in_words_without_the_query():
    with pytest.raises(FetchError) as refused:
        Item("a", f"http://127.0.0.1:{free_port()}/a.png{SIGNED}").read_bytes()
    text = str(refused.value)
    assert text.endswith("the connection failed, or broke off")
    assert SECRET not in text and "Error" not in text and "Pool" not in text
