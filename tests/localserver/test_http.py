"""HTTP robustness: the envelope always, unknown paths and methods, size cap, malformed input."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
import requests

from kling_expand_plugin.localserver.server import MAX_BODY_BYTES

from .conftest import EXPAND, auth_headers


def _envelope(response):
    payload = response.json()
    assert set(payload) == {"code", "message", "request_id", "data"}
    return payload


def _still_serving(api):
    response = api.get(f"{EXPAND}?pageSize=1")
    assert response.status_code == 200 and response.json()["code"] == 0


@pytest.mark.parametrize("path", ["/", "/v1/images/editing", "/v1/images/generations", "/x/y/z"])
def test_unknown_path_is_1202_404(shared_api, path):
    response = shared_api.get(path)
    assert response.status_code == 404
    assert _envelope(response)["code"] == 1202


def test_unknown_path_below_the_collection_is_1202(shared_api):
    response = shared_api.get(f"{EXPAND}/a/b")
    assert (response.status_code, _envelope(response)["code"]) == (404, 1202)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", [EXPAND, f"{EXPAND}/123", "/local/stats"])
def test_wrong_method_is_1202_404(shared_api, method, path):
    response = shared_api.session.request(
        method, shared_api.url + path, headers=auth_headers(), timeout=5
    )
    assert response.status_code == 404
    assert _envelope(response)["code"] == 1202
    _still_serving(shared_api)


def test_post_to_a_task_is_1202(shared_api):
    response = shared_api.session.post(
        shared_api.url + f"{EXPAND}/123", json={}, headers=auth_headers(), timeout=5
    )
    assert (response.status_code, _envelope(response)["code"]) == (404, 1202)


def test_body_over_the_cap_is_refused_with_413(shared_api):
    body = b"{" + b" " * MAX_BODY_BYTES + b"}"
    response = shared_api.session.post(
        shared_api.url + EXPAND, data=body, headers=auth_headers(), timeout=10
    )
    assert response.status_code == 413
    assert _envelope(response)["code"] == 1200
    _still_serving(shared_api)


def _raw(server, request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers before closing."""
    host, port = "127.0.0.1", server.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"FROB /v1/images/editing/expand HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/images/editing/expand HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/images/editing/expand HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/images/editing/expand HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/images/editing/expand HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}",
        b"GET /v1/images/editing/expand HTTP/1.1\r\nHost: x\r\nAuthorization:    \r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"\x00\xff\x00\xff\r\n\r\n",
    ],
    ids=[
        "garbage",
        "no-path",
        "unknown-method",
        "bad-length",
        "negative-length",
        "chunked",
        "short-body",
        "blank-authorization",
        "huge-request-line",
        "binary",
    ],
)
def test_malformed_requests_never_crash(shared_api, request_bytes):
    answer = _raw(shared_api.server, request_bytes)
    if answer:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.")
        status = int(head.split()[1])
        assert status >= 400
        assert set(json.loads(body)) == {"code", "message", "request_id", "data"}
    _still_serving(shared_api)


def test_blank_authorization_is_1001(shared_api):
    answer = _raw(
        shared_api.server,
        b"GET /v1/images/editing/expand HTTP/1.1\r\nHost: x\r\nAuthorization:    \r\n"
        b"Connection: close\r\n\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 401 " in head.split(b"\r\n")[0]
    assert json.loads(body)["code"] == 1001


def test_keep_alive_connection_serves_several_requests(shared_api):
    connection = http.client.HTTPConnection("127.0.0.1", shared_api.server.port, timeout=5)
    for _ in range(3):
        connection.request("GET", f"{EXPAND}?pageSize=1", headers=auth_headers())
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["code"] == 0
    connection.close()


def test_stats_needs_no_token_and_is_plain_json(shared_api):
    response = requests.get(shared_api.url + "/local/stats", timeout=5)
    assert response.status_code == 200
    stats = response.json()
    assert {
        "creates_by_external_id",
        "requests",
        "slots_in_use",
        "max_slots_in_use",
        "tasks",
    } <= set(stats)
    live = ("requests", "connections")  # gauges that move between the two reads
    direct = shared_api.server.stats()
    assert {k: v for k, v in stats.items() if k not in live} == {
        k: v for k, v in direct.items() if k not in live
    }
    assert set(stats["connections"]) == set(direct["connections"])


def test_binds_loopback_by_default():
    from kling_expand_plugin.localserver import LocalServer

    with LocalServer(port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
