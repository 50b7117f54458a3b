"""`kling-expand expand`, run as a subprocess: results, --json, exit codes, the report, progress."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from kling_expand_plugin.cli import main
from tests.helpers import free_port

from .conftest import noisy_image, run_cli

FAST = ("--local-latency", "0.05")


def test_a_batch_writes_every_result_and_exits_1_for_the_failed_input(batch):
    ran, out, folder = batch
    assert ran.code == 1, ran.stderr
    document = ran.json()
    by_key = {record["key"]: record for record in document["inputs"]}
    assert list(by_key) == ["a.png", "b.jpg", "notes.txt", "sub/c.png", "broken.png"]
    for failed in ("notes.txt", "broken.png"):
        assert by_key[failed]["status"] == "failed"
        assert "not an image" in by_key[failed]["error"]
    for key in ("a.png", "b.jpg", "sub/c.png"):
        record = by_key[key]
        assert record["status"] == "done" and record["units"] > 0
        original = Image.open(folder / key).convert("RGB")
        stem, ext = key.rsplit(".", 1)  # each result in its input's own format (auto)
        assert [r["path"] for r in record["results"]] == [
            str(out / f"{stem}-{variant}.{ext}") for variant in (0, 1)
        ]
        for result in record["results"]:
            image = Image.open(result["path"])
            assert image.format == {"png": "PNG", "jpg": "JPEG"}[ext]
            assert list(image.size) == result["canvas"]
            assert image.width / image.height == pytest.approx(16 / 9, abs=0.01)
            box = result["box"]
            if key.endswith(".png"):  # lossless: the original's pixels are there, unchanged
                assert image.convert("RGB").crop(box).tobytes() == original.tobytes()
            assert len(result["passes"]) == 1 and "mask" not in result
    summary = document["summary"]
    assert (summary["done"], summary["failed"], summary["results"]) == (3, 2, 6)
    assert document["report"] == {"html": str(out / "report.html"), "png": str(out / "report.png")}


def test_the_report_names_every_input_and_every_image_it_shows_exists(batch):
    _, out, _ = batch
    page = (out / "report.html").read_text()
    for key in ("a.png", "b.jpg", "sub/c.png", "broken.png"):
        assert f'data-key="{key}"' in page
    assert "not an image" in page and "units: 2" in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    links = re.findall(r'<a href="([^"]+)"', page)
    assert len(sources) == 3 * 3  # three rows of an original and two results; none for broken
    assert len(links) == 6
    for relative in sources + links:
        assert (out / relative).is_file(), relative
    assert 'class="box" style="left:' in page
    sheet = Image.open(out / "report.png")
    assert sheet.format == "PNG" and sheet.width >= 720 and sheet.height > 4 * 160
    pixels = np.asarray(sheet.convert("RGB"))
    outline = int(np.all(pixels == (255, 0, 200), axis=-1).sum())
    assert outline > 6 * 400  # six result thumbnails, each with its box outlined


def test_the_text_output_lists_each_input_and_the_report_path(photos, tmp_path):
    out = tmp_path / "out"
    ran = run_cli("expand", str(photos / "a.png"), "--aspect", "16:9", "--out", str(out), *FAST)
    assert ran.code == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("a.png: ") and str(out / "a-0.png") in lines[0]
    assert lines[-2].startswith("1 input: 1 done, 0 failed")
    assert lines[-1] == f"report: {out / 'report.html'} (picture: {out / 'report.png'})"
    assert "\r" not in ran.stderr  # not a terminal: no progress line
    assert (out / "report.html").is_file() and (out / "report.png").is_file()


def test_an_image_that_already_has_the_shape_is_copied_without_a_task(tmp_path):
    noisy_image(480, 270, 4).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    ran = run_cli("expand", str(tmp_path / "wide.png"), "--aspect", "16:9", "--out", str(out),
                  "--json", *FAST)  # fmt: skip
    assert ran.code == 0, ran.stderr
    (record,) = ran.json()["inputs"]
    assert record["status"] == "unchanged"
    copy = Image.open(out / "wide-0.png")
    assert copy.tobytes() == Image.open(tmp_path / "wide.png").tobytes()


def test_against_a_served_endpoint_with_a_ledger(photos, tmp_path, server, keys):
    out = tmp_path / "out"
    ledger = str(tmp_path / "ledger.sqlite")
    args = ["expand", str(photos / "a.png"), "--ratios", "0,0,0.25,0.25", "--endpoint",
            server.url, "--ledger", ledger, "--out", str(out), "--json"]  # fmt: skip
    first = run_cli(*args, env=keys)
    assert first.code == 0, first.stderr
    assert first.json()["summary"]["created"] == 1
    again = run_cli(*args, "--overwrite", env=keys)  # the ledger answers: nothing is paid twice
    assert again.code == 0 and again.json()["summary"]["created"] == 0
    assert again.json()["summary"]["from_ledger"] == 1
    assert Image.open(out / "a-0.png").size == (600, 300)


def test_an_unreachable_endpoint_exits_3_before_any_work(photos, tmp_path, keys):
    url = f"http://127.0.0.1:{free_port()}"
    ran = run_cli("expand", str(photos), "--aspect", "16:9", "--endpoint", url,
                  "--out", str(tmp_path / "out"), env=keys)  # fmt: skip
    assert ran.code == 3
    assert "cannot reach" in ran.stderr and not (tmp_path / "out").exists()


def test_refused_credentials_exit_3_and_the_secret_is_not_printed(photos, tmp_path, server):
    env = {"KLING_ACCESS_KEY": "AK-cli-test-0123456789", "KLING_SECRET_KEY": "wrong-secret-123"}
    ran = run_cli("expand", str(photos), "--aspect", "16:9", "--endpoint", server.url,
                  "--out", str(tmp_path / "out"), env=env)  # fmt: skip
    assert ran.code == 3 and "refused" in ran.stderr
    assert "wrong-secret-123" not in ran.stdout + ran.stderr


def test_missing_credentials_for_a_url_is_a_usage_error(photos, tmp_path, server):
    ran = run_cli("expand", str(photos), "--aspect", "16:9", "--endpoint", server.url,
                  "--out", str(tmp_path / "out"))  # fmt: skip
    assert ran.code == 2 and "KLING_ACCESS_KEY" in ran.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--n", "12"],
        ["--aspect", "wide"],
        ["--ratios", "1,2,3"],
        ["--ratios", "0,0,2,2"],
        ["--area", "lots"],
        ["--anchor", "middle"],
        ["--endpoint", "ftp://example.com"],
        ["--size", "10x"],
    ],
)
def test_bad_options_exit_2(extra, photos, tmp_path, capsys):
    args = ["expand", str(photos), "--out", str(tmp_path / "out"), *extra]
    if "--aspect" not in extra and "--ratios" not in extra and "--size" not in extra:
        args += ["--aspect", "16:9"]
    assert _exit_code(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kling-expand expand: error: --"), err
    assert "option '" not in err and err.rstrip().endswith("(see 'kling-expand expand --help')")


def _exit_code(args: list[str]) -> int:
    """main's status, whether argparse (SystemExit) or the command (a return) refused."""
    try:
        return main(args)
    except SystemExit as exited:
        return int(exited.code or 0)


def test_missing_inputs_exit_2(tmp_path, capsys):
    assert (
        _exit_code(["expand", str(tmp_path / "nothing-here"), "--aspect", "16:9", "--out", "o"])
        == 2
    )
    err = capsys.readouterr().err
    assert "error: INPUT: " in err and "does not exist" in err and "'paths'" not in err
    (tmp_path / "empty").mkdir()
    assert _exit_code(["expand", str(tmp_path / "empty"), "--aspect", "16:9", "--out", "o"]) == 2
    assert "no files in" in capsys.readouterr().err


def test_fail_fast_stops_at_the_first_failure_and_still_writes_the_report(photos, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"")
    out = tmp_path / "out"
    ran = run_cli("expand", str(tmp_path / "bad.png"), str(photos / "a.png"), "--aspect", "16:9",
                  "--fail-fast", "--out", str(out), *FAST)  # fmt: skip
    assert ran.code == 1 and "stopped" in ran.stderr and "empty" in ran.stderr
    assert (out / "report.html").is_file()


def test_on_a_terminal_a_progress_line_is_redrawn_on_stderr(photos, tmp_path):
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "kling_expand_plugin.cli", "expand", str(photos), "--aspect",
         "16:9", "--out", str(tmp_path / "out"), "--local-latency", "0.5", "--concurrency", "1"],
        stdout=subprocess.DEVNULL, stderr=follower, env=env,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    assert process.wait(timeout=30) == 0
    text = seen.decode()
    assert "\r" in text and re.search(r"\[#*\.*\] \d/3 +done \d", text), text
    assert "3/3  done 3  failed 0" in text and "units 3" in text


def test_every_subcommand_has_help(capsys):
    for command in ("expand", "plan", "ratios", "tasks", "doctor", "serve"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        assert "usage: kling-expand " + command in capsys.readouterr().out
    for action in ("list", "get", "wait", "download"):
        with pytest.raises(SystemExit):
            main(["tasks", action, "--help"])
        assert f"usage: kling-expand tasks {action}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "examples:" in text


def test_expand_output_images_open_in_memory(batch):
    """The PNG files written are complete (atomic writes leave no .part behind)."""
    _, out, _ = batch
    assert not list(out.rglob("*.part"))
    for path in out.glob("*.png"):
        Image.open(io.BytesIO(path.read_bytes())).load()


def test_a_url_input_is_named_after_its_path(http_server, tmp_path):
    image = io.BytesIO()
    noisy_image(400, 300, 5).save(image, "PNG")
    url = http_server({"/shop/lamp.png?size=large": image.getvalue()}) + "/shop/lamp.png?size=large"
    out = tmp_path / "out"
    ran = run_cli("expand", url, "--ratios", "0,0,0.5,0", "--out", str(out), "--json", *FAST)
    assert ran.code == 0, ran.stderr
    (record,) = ran.json()["inputs"]
    assert record["key"] == "lamp.png" and Image.open(out / "lamp-0.png").size == (600, 300)
