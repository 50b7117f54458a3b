"""Money safety at the edges (issue 12), over real HTTP against a local server that accepts a
reused external_task_id as a new paid task, so that a double payment shows in its counters
(`create_attempts_by_external_id`, `creates_by_external_id`, `units_charged`) instead of
being hidden by a 1201.
"""

from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from imgpipe import Item
from kling_expand_plugin.batch.ledger import SqliteLedger, normalise_endpoint
from kling_expand_plugin.batch.receiver import CallbackReceiver
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.batch.taskrunner import TaskRunner
from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling import limits
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import ExpandRequest, KlingClient
from kling_expand_plugin.kling.errors import DownloadError
from kling_expand_plugin.localserver import LocalServer
from kling_expand_plugin.outpaint.api import by_source, expand_many
from kling_expand_plugin.outpaint.expansion import _next_input, _result_bytes
from kling_expand_plugin.outpaint.stage import OutpaintStage
from tests.helpers import Loopback, free_port, picture, wait_until
from tests.servers import ACCESS_KEY, SECRET_KEY, keys_env

from .conftest import local_server

pytestmark = pytest.mark.usefixtures("kling_env")


def paid_server(**options) -> LocalServer:
    return local_server(accept_reused_ids=True, **options)


def stage(url: str, ledger: Path, **options) -> OutpaintStage:
    settings = {"aspect": "16:9", "concurrency": 4, "ledger": str(ledger), **options}
    return OutpaintStage(endpoint=url, **settings)


def items(count: int, first: int = 0) -> list[Item]:
    return [Item(f"img{n}.png", picture(n)) for n in range(first, first + count)]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kling_expand_plugin.cli", *args]


# -- 1. every check that can refuse a result runs before the create ------------------------------


def test_the_download_cap_follows_the_planned_canvas():
    # The 5000 x 5000 photo at 16:9, area 2: a 7072 x 3978 result, 68 MB as a noisy PNG, was
    # refused by a fixed 64 MiB cap after it was paid for.
    width, height = 7072, 3978
    assert _result_bytes((width, height)) >= width * height * 4 + height  # RGBA, filter bytes
    assert _result_bytes((300, 300)) == 64 * 1024 * 1024  # small results keep the default


def test_a_result_larger_than_the_old_fixed_cap_is_downloaded(tmp_path):
    noise = np.random.default_rng(7).integers(0, 256, (2300, 4100, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG", compress_level=0)
    assert len(buffer.getvalue()) > 20 * 1024 * 1024
    with paid_server(latency=0.05) as server:
        client = KlingClient(server.url, Credentials(ACCESS_KEY, SECRET_KEY))
        runner = TaskRunner(
            client, SqliteLedger(tmp_path / "l.sqlite"), "local", slots=Slots(4), timeout=60
        )
        request = ExpandRequest(
            image=base64.b64encode(_jpeg(noise[:1500, :1500])).decode(),
            ratios=Ratios(0.3, 0.3, 0.3, 0.3),
        )
        # The old code capped every result at a fixed size, whatever the canvas: at 1 MB this
        # 1500 x 1500 expansion (2400 x 2400) fails; at the planned canvas's cap it succeeds.
        with pytest.raises(DownloadError, match="cap"):
            runner.run("small-cap.jpg", request, max_bytes=1_000_000)
        outcome = runner.run("planned-cap.jpg", request, max_bytes=_result_bytes((2400, 2400)))
        stats = server.stats()
    assert len(outcome.images) == 1
    assert stats["create_attempts_by_external_id"] == {request.resolved_external_id: 1}


def test_a_multi_pass_intermediate_too_big_for_10_mb_is_downscaled_not_refused():
    noise = np.random.default_rng(3).integers(0, 256, (3600, 5400, 3), dtype=np.uint8)
    field = _next_input(Image.fromarray(noise), (5400, 3600))
    data = base64.b64decode(field)
    assert len(data) <= limits.MAX_FILE_BYTES
    with Image.open(io.BytesIO(data)) as image:
        assert image.width < 5400 and image.width / image.height == pytest.approx(1.5, abs=0.01)
        assert min(image.size) >= limits.MIN_SIDE


def test_a_result_too_large_to_decode_is_refused_before_anything_is_paid(tmp_path):
    big = Image.new("RGB", (9000, 9000), (120, 130, 140))
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    with paid_server() as server:
        outpaint = stage(
            server.url,
            tmp_path / "l.sqlite",
            aspect=None,
            ratios=[0.5, 0.5, 0.2, 0.2],  # a 12600 x 18000 result: more than Pillow decodes
            on_error="passthrough",
            max_pixels=200_000_000,
        )
        [out] = list(outpaint([Item("huge.png", buffer.getvalue())]))
        stats = server.stats()
    assert "too large to decode" in out.metadata["outpaint"]["error"]
    assert stats["create_attempts_by_external_id"] == {}


# -- 2. a task that succeeded is never paid again -------------------------------------------------


def test_a_paid_task_the_server_lost_is_not_paid_again_unless_asked(tmp_path):
    port = free_port()
    ledger = tmp_path / "ledger.sqlite"
    url = f"http://127.0.0.1:{port}"
    with paid_server(port=port, latency=0.05, faults={"broken-download": 1.0}) as first:
        outpaint = stage(url, ledger, on_error="passthrough", timeout=20)
        [failed] = list(outpaint(items(1)))
        assert "error" in failed.metadata["outpaint"]  # paid, but the download failed
        assert first.stats()["units_charged"] == 1
    with paid_server(port=port, latency=0.05) as restarted:  # the task is gone
        again = stage(url, ledger, on_error="passthrough")
        [lost] = list(again(items(1)))
        assert "recreate_lost" in lost.metadata["outpaint"]["error"]
        assert restarted.stats()["create_attempts_by_external_id"] == {}
        asked = stage(url, ledger, recreate_lost=True)
        [result] = list(asked(items(1)))
        stats = restarted.stats()
    assert result.metadata["outpaint"]["units"] == 1
    [(external_id, attempts)] = stats["create_attempts_by_external_id"].items()
    assert attempts == 1 and external_id.endswith("-r1")  # a new id: the old one is taken


def test_a_failed_task_is_retried_only_on_request(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with paid_server(port=port, latency=0.05, faults={"task-failed": 1.0}) as failing:
        [failed] = list(stage(url, ledger, on_error="passthrough")(items(1)))
        assert "failed" in failed.metadata["outpaint"]["error"]
        assert sum(failing.stats()["create_attempts_by_external_id"].values()) == 1
    with paid_server(port=port, latency=0.05) as server:
        [again] = list(stage(url, ledger, on_error="passthrough")(items(1)))
        assert "retry_failed" in again.metadata["outpaint"]["error"]
        assert server.stats()["create_attempts_by_external_id"] == {}
        [result] = list(stage(url, ledger, retry_failed=True)(items(1)))
        stats = server.stats()
    assert "error" not in result.metadata["outpaint"]
    [(external_id, attempts)] = stats["create_attempts_by_external_id"].items()
    assert attempts == 1 and external_id.endswith("-r1")


def test_a_result_damaged_in_the_ledger_is_fetched_again_without_paying(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    with paid_server(latency=0.05) as server:
        [first] = list(stage(server.url, ledger)(items(1)))
        [stored] = (tmp_path / "ledger.sqlite.results").glob("*/0.png")
        stored.write_bytes(stored.read_bytes()[:500])  # cut by a crash or a full disk
        [again] = list(stage(server.url, ledger)(items(1)))
        stats = server.stats()
    assert again.read_bytes() == first.read_bytes()
    assert sum(stats["create_attempts_by_external_id"].values()) == 1
    assert Image.open(stored).size  # whole again


# -- 3. one ledger, several processes: one create ----------------------------------------------


def test_three_processes_on_one_ledger_create_one_task(tmp_path):
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    photo.write_bytes(picture(5))
    ledger = tmp_path / "ledger.sqlite"
    with paid_server(latency=1.0) as server:
        processes = [
            subprocess.Popen(
                cli(
                    "expand",
                    str(photo),
                    "--aspect",
                    "16:9",
                    "--endpoint",
                    server.url,
                    "--ledger",
                    str(ledger),
                    "--out",
                    str(tmp_path / f"out{n}"),
                    "--quiet",
                ),
                env=keys_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for n in range(3)
        ]
        codes = [process.wait(timeout=60) for process in processes]
        stats = server.stats()
    assert codes == [0, 0, 0], [p.stderr.read() for p in processes if p.stderr]
    assert list(stats["create_attempts_by_external_id"].values()) == [1]
    assert sum(stats["tasks"].values()) == 1
    assert all(any((tmp_path / f"out{n}").glob("photo*")) for n in range(3))


def test_spellings_of_one_endpoint_share_the_ledger(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    with paid_server(latency=0.05) as server:
        port = server.port
        list(stage(f"http://127.0.0.1:{port}", ledger)(items(2)))
        again = stage(f"http://localhost:{port}/", ledger)
        list(again(items(2)))
        stats = server.stats()
    assert again.summary["created"] == 0 and again.summary["from_ledger"] == 2
    assert sum(stats["create_attempts_by_external_id"].values()) == 2
    assert normalise_endpoint("https://API.example.com:443/") == "https://api.example.com"


def test_an_intent_left_by_a_dead_process_is_looked_up_before_any_create(tmp_path):
    ledger_path = tmp_path / "ledger.sqlite"
    with paid_server(latency=0.05) as server:
        [item] = items(1)
        outpaint = stage(server.url, ledger_path)
        list(outpaint([item]))  # the task exists on the server...
        ledger = SqliteLedger(ledger_path)
        key = normalise_endpoint(server.url)
        [(external_id,)] = ledger._run("SELECT external_id FROM tasks")[0]
        ledger._run(  # ...but the ledger saw only the intent of a process that died
            "UPDATE tasks SET task_id = NULL, status = 'creating', owner = 'host:1:dead', "
            "heartbeat = 0 WHERE external_id = ?",
            (external_id,),
        )
        ledger.forget_result(key, external_id)
        ledger.close()
        again = stage(server.url, ledger_path)
        list(again([item]))
        stats = server.stats()
    assert again.summary["created"] == 0 and again.summary["reattached"] == 1
    assert stats["create_attempts_by_external_id"] == {external_id: 1}


# -- 4. the budget is a ceiling --------------------------------------------------------------------


def test_the_budget_is_never_exceeded_with_n_2(tmp_path):
    with paid_server(latency=0.1) as server:
        outpaint = stage(server.url, tmp_path / "l.sqlite", n=2, budget=5, on_error="passthrough")
        list(outpaint(items(5)))
        stats = server.stats()
    assert stats["units_charged"] <= 5 and outpaint.summary["units"] <= 5
    assert stats["units_charged"] == outpaint.summary["units"] == 4
    assert outpaint.summary["skipped"] == 3


def test_the_budget_holds_with_a_slow_input_stream(tmp_path):
    def slowly() -> Iterator[Item]:
        for item in items(6):
            time.sleep(0.15)
            yield item

    with paid_server(latency=0.6) as server:
        outpaint = stage(server.url, tmp_path / "l.sqlite", budget=2, on_error="passthrough")
        list(outpaint(slowly()))
        stats = server.stats()
    assert stats["units_charged"] == 2 and sum(stats["tasks"].values()) == 2


# -- 5. URL inputs are known by their content --------------------------------------------------


def test_a_url_whose_content_changed_is_expanded_anew(tmp_path):
    content = {"body": picture(1)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = content["body"]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with Loopback(Handler) as images, paid_server(latency=0.05) as server:
        url = f"{images.url}/photo.png"
        [first] = list(stage(server.url, tmp_path / "l.sqlite")([Item("photo.png", url)]))
        content["body"] = picture(2)
        [second] = list(stage(server.url, tmp_path / "l.sqlite")([Item("photo.png", url)]))
        stats = server.stats()
    assert len(stats["create_attempts_by_external_id"]) == 2
    first_ids = first.metadata["outpaint"]["external_task_ids"]
    assert first_ids != second.metadata["outpaint"]["external_task_ids"]


# -- 6. stopping stops spending -----------------------------------------------------------------


def test_ctrl_c_stops_new_creates_and_exits_within_seconds(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for number in range(4):
        (folder / f"p{number}.png").write_bytes(picture(number))
    ledger = tmp_path / "ledger.sqlite"
    # Tasks far longer than the wait for the exit below: only leaving without them ends in time.
    with paid_server(latency=120.0, concurrency=1) as server:
        process = subprocess.Popen(
            cli("expand", str(folder), "--aspect", "16:9", "--endpoint", server.url,
                "--concurrency", "1", "--ledger", str(ledger), "--out", str(tmp_path / "out")),
            env=keys_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(lambda: sum(server.stats()["tasks"].values()) >= 1, timeout=20)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=15)
        time.sleep(1.0)
        stats = server.stats()
        stderr = process.stderr.read() if process.stderr else ""
        # The next run re-attaches the task already created: still one task on the server.
        resumed = SqliteLedger(ledger)
        entries = resumed.counts()
        resumed.close()
    assert code == 130, stderr
    assert sum(stats["tasks"].values()) == 1
    assert entries in ({"submitted": 1}, {"processing": 1})  # nothing left "in doubt"
    assert "stopping" in stderr


def test_leaving_expand_many_early_stops_its_workers(tmp_path):
    durations = iter([0.1] + [20.0] * 20)  # the first task is quick, the others slow
    with paid_server(latency=lambda rng: next(durations), concurrency=4) as server:
        results = expand_many(
            [picture(n) for n in range(8)],
            aspect="16:9",
            endpoint=server.url,
            ledger=str(tmp_path / "l.sqlite"),
            concurrency=2,
            order="completed",
        )
        first = next(results)
        assert first.ok and _outpaint_threads()  # the others are waiting for their tasks
        results.close()
        left = time.monotonic()
        while _outpaint_threads() and time.monotonic() - left < 5:
            time.sleep(0.05)
        created = sum(server.stats()["tasks"].values())
        time.sleep(0.5)
        assert sum(server.stats()["tasks"].values()) == created <= 3
    assert not _outpaint_threads()


def _outpaint_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "outpaint"]


# -- 7. accounting ----------------------------------------------------------------------------


def test_units_per_input_per_run_and_on_the_server_agree(tmp_path):
    photos = items(2)
    copies = [Item(f"copy{c}-{item.key}", item.read_bytes()) for c in range(3) for item in photos]
    ledger = tmp_path / "l.sqlite"
    with paid_server(latency=0.1) as server:
        first = stage(server.url, ledger, n=2)
        results = list(first(copies))
        per_input = {
            key: group[0].metadata["outpaint"]["units"] for key, group in by_source(results)
        }
        second = stage(server.url, ledger, n=2)
        list(second(copies))
        stats = server.stats()
    assert len(per_input) == 6
    assert sum(per_input.values()) == first.summary["units"] == stats["units_charged"] == 4
    assert second.summary["units"] == 0 and second.summary["units_reused"] == 4 * 3


def test_results_are_matched_to_inputs_by_key_whatever_their_count():
    def result(key: str, variant: int, variants: int) -> Item:
        meta = {"outpaint": {"source_key": key, "variant": variant, "variants": variants}}
        return Item(f"{key}-{variant}", b"", metadata=meta)

    stream = [result("a", 0, 1), result("b", 0, 2), result("b", 1, 2), result("c", 0, 1)]
    grouped = [(key, [item.key for item in group]) for key, group in by_source(stream)]
    assert grouped == [("a", ["a-0"]), ("b", ["b-0", "b-1"]), ("c", ["c-0"])]


def test_an_early_unsigned_succeed_callback_does_not_make_polling_spin(tmp_path):
    with paid_server(latency=3.0) as server, CallbackReceiver("127.0.0.1", 0) as receiver:
        client = KlingClient(server.url, Credentials(ACCESS_KEY, SECRET_KEY))
        runner = TaskRunner(
            client,
            SqliteLedger(tmp_path / "l.sqlite"),
            "local",
            slots=Slots(4),
            timeout=30,
            receiver=receiver,
        )
        request = ExpandRequest(
            image=base64.b64encode(picture(9, (480, 360))).decode(), ratios=Ratios(0, 0, 0.5, 0.5)
        )
        work_id = request.resolved_external_id

        def forge() -> None:
            time.sleep(0.3)
            task = {
                "task_id": "forged",
                "task_status": "succeed",
                "task_info": {"external_task_id": work_id},
                "task_result": {"images": []},
            }
            requests.post(receiver.url_for(work_id), json=task, timeout=5)

        threading.Thread(target=forge, daemon=True).start()
        outcome = runner.run("early.png", request)
        queries = server.stats()["requests"]["query"]
    assert len(outcome.images) == 1
    assert queries < 40, queries


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_a_task_whose_wait_timed_out_keeps_its_units_reserved(tmp_path):
    # The first task outlives the stage's timeout: it was created and will be charged, so the
    # budget of 1 has no room for a second.
    with paid_server(latency=2.5, concurrency=1) as server:
        outpaint = stage(
            server.url, tmp_path / "l.sqlite", budget=1, concurrency=1, timeout=1.0,
            on_error="passthrough",
        )  # fmt: skip
        list(outpaint(items(2)))
        wait_until(lambda: server.stats()["tasks"]["succeed"] == 1, timeout=10)  # charged
        stats = server.stats()
    assert sum(stats["tasks"].values()) == 1 and stats["units_charged"] == 1
    assert outpaint.summary["skipped"] == 1
