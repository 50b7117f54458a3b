"""`kling-expand tasks list|get|wait|download`, as subprocesses against a local server."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from kling_expand_plugin import Credentials, ExpandRequest, KlingClient, Ratios
from tests.servers import fast_server

from .conftest import ACCESS_KEY, SECRET_KEY, noisy_image, run_cli


def _png(seed: int) -> str:
    buffer = io.BytesIO()
    noisy_image(320, 300, seed).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _create(url: str, seed: int, n: int = 1):
    with KlingClient(url, Credentials(ACCESS_KEY, SECRET_KEY)) as client:
        return client.create(ExpandRequest(image=_png(seed), ratios=Ratios(0, 0, 0.25, 0.25), n=n))


def test_list_get_wait_and_download_a_task(server, keys, tmp_path):
    task = _create(server.url, 1, n=2)
    other = _create(server.url, 2)
    endpoint = ("--endpoint", server.url)

    waited = run_cli("tasks", "wait", task.task_id, *endpoint, "--interval", "0.05", "--json",
                     env=keys)  # fmt: skip
    assert waited.code == 0, waited.stderr
    assert waited.json()["status"] == "succeed" and len(waited.json()["images"]) == 2

    listed = run_cli("tasks", "list", *endpoint, "--json", env=keys)
    assert listed.code == 0, listed.stderr
    assert {entry["task_id"] for entry in listed.json()} == {task.task_id, other.task_id}
    assert len(run_cli("tasks", "list", *endpoint, "--limit", "1", "--json", env=keys).json()) == 1
    text = run_cli("tasks", "list", *endpoint, env=keys).stdout.splitlines()
    assert len(text) == 2 and any(line.startswith(task.task_id) for line in text)

    got = run_cli("tasks", "get", task.external_task_id, *endpoint, env=keys)
    assert got.code == 0 and got.stdout.startswith(task.task_id) and "image 1: http" in got.stdout

    out = tmp_path / "downloads"
    downloaded = run_cli("tasks", "download", task.task_id, *endpoint, "--out", str(out), env=keys)
    assert downloaded.code == 0, downloaded.stderr
    paths = downloaded.stdout.split()
    assert paths == [str(out / f"{task.task_id}-{index}.png") for index in (0, 1)]
    assert Image.open(paths[0]).size == (480, 300)


def test_an_unknown_task_exits_1(server, keys):
    ran = run_cli("tasks", "get", "no-such-task", "--endpoint", server.url, env=keys)
    assert ran.code == 1 and "no task no-such-task" in ran.stderr
    ran = run_cli("tasks", "download", "no-such-task", "--endpoint", server.url, "--out", "x",
                  env=keys)  # fmt: skip
    assert ran.code == 1


def test_waiting_for_a_failed_task_exits_1_with_its_message(keys):
    with fast_server(access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                     faults={"task-failed": 1.0}) as failing:  # fmt: skip
        task = _create(failing.url, 3)
        ran = run_cli("tasks", "wait", task.task_id, "--endpoint", failing.url, "--interval",
                      "0.05", env=keys)  # fmt: skip
    assert ran.code == 1
    assert ran.stdout.startswith(f"{task.task_id}  failed") and "message: " in ran.stdout


def test_refused_credentials_exit_3(server):
    env = {"KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": "not-the-secret"}
    ran = run_cli("tasks", "list", "--endpoint", server.url, env=env)
    assert ran.code == 3 and "refused" in ran.stderr and "not-the-secret" not in ran.stderr


@pytest.mark.parametrize("endpoint", ["ftp://example.com", "nowhere"])
def test_tasks_need_a_server_url(endpoint, keys):
    ran = run_cli("tasks", "list", "--endpoint", endpoint, env=keys)
    assert ran.code == 2


def test_tasks_without_credentials_exit_2(server):
    ran = run_cli("tasks", "list", "--endpoint", server.url)
    assert ran.code == 2 and "KLING_ACCESS_KEY" in ran.stderr


def test_tasks_of_a_keyless_serve_need_no_credentials():
    with fast_server(access_key=None, secret_key=None) as open_server:  # accepts any token
        with KlingClient(open_server.url, Credentials("any", "thing-0123456789")) as client:
            client.create(ExpandRequest(image=_png(3), ratios=Ratios(0, 0, 0.25, 0.25)))
        listed = run_cli("tasks", "list", "--endpoint", open_server.url, "--json")
    assert listed.code == 0, listed.stderr
    assert len(listed.json()) == 1


def test_tasks_default_to_a_local_serve(monkeypatch):
    ran = run_cli("tasks", "list", "--help")
    assert "127.0.0.1:8765" in ran.stdout
