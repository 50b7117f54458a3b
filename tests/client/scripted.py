"""A tiny scripted HTTP server on 127.0.0.1 for answers the local server cannot give.

It answers each request with the next entry of a script (the last one repeats) and records the
requests it saw. Not a Kling implementation: only canned answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.helpers import Loopback


@dataclass
class Answer:
    """One canned answer: a status, a body (a dict is sent as JSON) and headers."""

    status: int = 200
    body: bytes | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    cut_at: int | None = None
    """Announce the whole body but send only this many bytes, then close."""
    send_length: bool = True
    """False: no Content-Length; the body ends when the connection closes."""


def envelope(code: int = 0, data: Any = None, message: str = "", status: int = 200) -> Answer:
    """A Kling envelope answer."""
    body = {"code": code, "message": message, "request_id": f"req-{code}", "data": data}
    return Answer(status, body)


def task_json(
    task_id: str = "t1",
    status: str = "submitted",
    external: str | None = None,
    msg: str = "",
    images: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A task object as the API sends it."""
    return {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": msg,
        "task_info": {"external_task_id": external} if external else {},
        "final_unit_deduction": "2",
        "watermark_info": {"enabled": False},
        "created_at": 1,
        "updated_at": 2,
        "task_result": {"images": images or []},
    }


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class Scripted:
    """The running server: `url`, `seen` requests; `route` picks a script per request."""

    def __init__(self, route: Callable[[Seen], Answer]) -> None:
        self.seen: list[Seen] = []
        self._route = route
        self._lock = threading.Lock()

    def answer(self, seen: Seen) -> Answer:
        with self._lock:
            self.seen.append(seen)
        return self._route(seen)


def sequence(*answers: Answer) -> Callable[[Seen], Answer]:
    """A route that gives the answers in order, repeating the last."""
    queue = list(answers)
    lock = threading.Lock()

    def route(seen: Seen) -> Answer:
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]

    return route


@contextmanager
def scripted_server(route: Callable[[Seen], Answer]) -> Iterator[tuple[str, Scripted]]:
    """Serve `route` on 127.0.0.1 at a free port; yields (base URL, Scripted)."""
    state = Scripted(route)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            parts = urlsplit(self.path)
            answer = state.answer(
                Seen(self.command, parts.path, parts.query, dict(self.headers), body)
            )
            payload = answer.body
            data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if answer.send_length:
                self.send_header("Content-Length", str(len(data)))
            if answer.cut_at is not None or not answer.send_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data if answer.cut_at is None else data[: answer.cut_at])

        do_GET = do_POST = _handle

        def log_message(self, *args: object) -> None:
            pass

    with Loopback(Handler) as server:
        yield server.url, state
