"""The client reads the environment's proxy settings (once per host) and uses them."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

from kling_expand_plugin import Credentials, KlingClient
from tests.helpers import Loopback


def test_requests_go_through_the_environment_s_proxy(monkeypatch):
    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)  # a proxy gets the absolute URL
            body = json.dumps({"code": 0, "message": "", "request_id": "r", "data": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with Loopback(Proxy) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with KlingClient(
            "http://kling.invalid", Credentials("ak", "sk-0123456789abcdef")
        ) as client:
            assert list(client.list()) == []
            assert list(client.list()) == []
    assert len(seen) == 2 and all(url.startswith("http://kling.invalid/v1/") for url in seen)
