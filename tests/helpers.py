"""What many test files (and the benchmarks) need: distinct pictures, a free port, a bounded
wait, a throwaway HTTP server on loopback."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def picture(number: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A distinct small PNG per number (distinct inputs have distinct external ids)."""
    image = Image.new("RGB", size, ((number * 37) % 256, (number * 91) % 256, 120))
    box = (size[0] // 8, size[1] // 6, size[0] // 2 + number % 100, size[1] * 2 // 3)
    image.paste(((number // 256) % 256, 200, number % 256), box)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def noisy_image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colours with some noise: cheap to fill, distinct per seed."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = rng.uniform(0, 255, size=3) * x + rng.uniform(0, 255, size=3) * (1 - y)
    noise = rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(base / 2 + 60 + noise, 0, 255).astype(np.uint8), "RGB")


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def write_pipeline(
    path: Path, paths: list[str], outpaint: Mapping[str, Any], save: Mapping[str, Any]
) -> Path:
    """Write a load -> outpaint -> save pipeline with these options to `path` (TOML)."""
    lines: list[str] = []
    for stage, options in (("load", {"paths": paths}), ("outpaint", outpaint), ("save", save)):
        lines += ["[[stages]]", f'stage = "{stage}"']
        # JSON's strings, numbers, booleans and lists of them are TOML's too.
        lines += [f"{name} = {json.dumps(value)}" for name, value in options.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class Loopback:
    """`handler` served on 127.0.0.1 from a daemon thread until `close()` (or the with block's
    end); `url` is its base URL."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class Received:
    """One request a Recorder received."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Recorder(Loopback):
    """Records POSTs (callbacks), serves `files` by path to GETs (image URLs), 404 otherwise."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.received: list[Received] = []
        self.files: dict[str, bytes] = dict(files or {})
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with recorder._lock:
                    recorder.received.append(Received(self.path, dict(self.headers), body))
                self._answer(200, b"{}")

            def do_GET(self) -> None:
                body = recorder.files.get(self.path)
                self._answer(200 if body is not None else 404, body or b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)

    def bodies(self) -> list[Any]:
        with self._lock:
            return [item.json() for item in self.received]
