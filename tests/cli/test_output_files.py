"""Where `kling-expand expand` writes, run as a subprocess against a local server whose counters
show what was paid: names no two inputs share, no file replaced unless asked, every mode and
any file name written, the destination checked before the first task, and the report written
whatever happens."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from PIL import Image

from kling_expand_plugin import cli
from kling_expand_plugin.cli import expand as expand_module
from tests.servers import nothing_created

from .conftest import noisy_image, run_cli


def expand(server, keys, tmp_path, *args: str):
    """Run expand against `server` with a ledger of its own; the ran process."""
    ledger = str(tmp_path / "ledger.sqlite")
    return run_cli("expand", *args, "--endpoint", server.url, "--ledger", ledger,
                   "--local-latency", "0.05", "--json", env=keys)  # fmt: skip


def creates(server) -> int:
    return sum(server.stats()["creates_by_external_id"].values())


def test_two_inputs_with_one_stem_get_two_names_and_nothing_is_overwritten(server, keys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    noisy_image(400, 300, 1).save(folder / "photo.jpg")
    noisy_image(400, 300, 2).save(folder / "photo.png")
    out = tmp_path / "out"
    ran = expand(server, keys, tmp_path, str(folder), "--aspect", "16:9", "--n", "2",
                 "--format", "png", "--out", str(out))  # fmt: skip
    assert ran.code == 0, ran.stderr
    names = sorted(path.name for path in out.glob("*.png") if path.name != "report.png")
    assert names == ["photo-0.png", "photo-1.png", "photo.png-0.png", "photo.png-1.png"]
    paths = [r["path"] for record in ran.json()["inputs"] for r in record["results"]]
    assert len(set(paths)) == 4 and creates(server) == 2
    # Again into the same folder: refused before any task, the files untouched.
    before = {path: path.read_bytes() for path in out.iterdir() if path.is_file()}
    again = expand(server, keys, tmp_path, str(folder), "--aspect", "16:9", "--n", "2",
                   "--format", "png", "--out", str(out))  # fmt: skip
    assert again.code == 2 and "--skip-existing" in again.stderr and "--overwrite" in again.stderr
    assert creates(server) == 2
    assert {path: path.read_bytes() for path in before} == before


def test_skip_existing_sends_only_the_inputs_whose_results_are_missing(server, keys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for number in range(3):
        noisy_image(400, 300, number).save(folder / f"p{number}.png")
    out = tmp_path / "out"
    first = expand(server, keys, tmp_path, str(folder), "--aspect", "16:9", "--out", str(out))
    assert first.code == 0 and creates(server) == 3
    (out / "p1-0.png").unlink()
    noisy_image(640, 360, 9).save(folder / "wide.png")  # already 16:9: copied, no task
    again = expand(server, keys, tmp_path, str(folder), "--aspect", "16:9", "--skip-existing",
                   "--out", str(out))  # fmt: skip
    assert again.code == 0, again.stderr
    status = {record["key"]: record["status"] for record in again.json()["inputs"]}
    assert status == {"p0.png": "exists", "p2.png": "exists", "p1.png": "done",
                      "wide.png": "unchanged"}  # fmt: skip
    assert (out / "p1-0.png").is_file() and (out / "wide-0.png").is_file()
    assert again.json()["summary"]["existing"] == 2
    page = (out / "report.html").read_text()  # the report still shows the inputs left out
    assert all(f'data-key="{key}"' in page for key in ("p0.png", "p1.png", "p2.png", "wide.png"))
    stats = server.stats()
    assert len(stats["creates_by_external_id"]) == 3 and stats["units_charged"] == 3
    third = expand(server, keys, tmp_path, str(folder), "--aspect", "16:9", "--skip-existing",
                   "--out", str(out))  # fmt: skip
    assert {record["status"] for record in third.json()["inputs"]} == {"exists"}
    assert server.stats()["units_charged"] == 3


def test_the_output_folder_is_left_out_of_the_inputs(server, keys, tmp_path):
    nest = tmp_path / "nest"
    nest.mkdir()
    noisy_image(400, 300, 1).save(nest / "a.png")
    noisy_image(400, 300, 2).save(nest / "b.png")
    args = (str(nest), "--aspect", "16:9", "--out", str(nest / "wide"))
    assert expand(server, keys, tmp_path, *args).code == 0
    again = expand(server, keys, tmp_path, *args, "--overwrite")
    assert again.code == 0, again.stderr
    assert [record["key"] for record in again.json()["inputs"]] == ["a.png", "b.png"]
    assert len(server.stats()["creates_by_external_id"]) == 2  # the results were not sent


def test_odd_modes_and_names_are_written_and_the_report_shows_them(server, keys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    noisy_image(1600, 900, 1).convert("CMYK").save(folder / "cmyk.jpg")  # already 16:9
    grey = noisy_image(400, 300, 2).convert("LA")
    grey.putalpha(Image.linear_gradient("L").resize((400, 300)))  # transparent at the top
    grey.save(folder / "grey.png")
    long_name = "x" * 246 + ".png"  # 250 bytes: the temporary name would be too long
    noisy_image(400, 300, 3).save(folder / long_name)
    odd = os.fsencode(folder) + b"/caf\xe9.png"  # not UTF-8
    noisy_image(400, 300, 4).save(odd.decode("utf-8", "surrogateescape"))
    out = tmp_path / "out"
    ran = expand(server, keys, tmp_path, str(folder), "--aspect", "16:9", "--out", str(out))
    assert ran.code == 0, ran.stderr
    by_key = {record["key"]: record for record in ran.json()["inputs"]}
    assert set(by_key) == {"cmyk.jpg", "grey.png", long_name, "caf%E9.png"}
    assert Image.open(out / "cmyk-0.jpg").mode == "CMYK"
    assert Image.open(out / "grey-0.png").mode == "LA"
    assert Image.open(out / "caf%E9-0.png").size == tuple(
        by_key["caf%E9.png"]["results"][0]["canvas"]
    )
    assert all("preview" not in r and "mask" not in r for r in by_key["grey.png"]["results"])
    [long_result] = by_key[long_name]["results"]
    assert (
        len(Path(long_result["path"]).name.encode()) <= 200 and Path(long_result["path"]).is_file()
    )
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'data-key="caf%E9.png"' in page and not list(out.glob(".*.part"))
    assert creates(server) == 3


def test_a_result_that_cannot_be_written_fails_its_input_and_the_next_run_writes_it_free(
    server, keys, tmp_path
):
    folder = tmp_path / "in"
    folder.mkdir()
    noisy_image(400, 300, 1).save(folder / "a.png")
    noisy_image(400, 300, 2).save(folder / "b.png")
    out = tmp_path / "out"
    (out / "a-0.png").mkdir(parents=True)  # a folder where a's result goes: cannot be replaced
    args = (str(folder), "--aspect", "16:9", "--overwrite", "--out", str(out))
    ran = expand(server, keys, tmp_path, *args)
    assert ran.code == 1
    by_key = {record["key"]: record for record in ran.json()["inputs"]}
    assert by_key["a.png"]["status"] == "failed" and "a-0.png" in by_key["a.png"]["error"]
    assert "without paying" in by_key["a.png"]["error"]
    assert by_key["b.png"]["status"] == "done" and (out / "b-0.png").is_file()
    summary = ran.json()["summary"]
    assert (summary["done"], summary["failed"]) == (1, 1)
    assert creates(server) == 2
    (out / "a-0.png").rmdir()
    again = expand(server, keys, tmp_path, *args)
    assert again.code == 0 and (out / "a-0.png").is_file()
    assert again.json()["summary"]["created"] == 0 and creates(server) == 2


def test_an_unwritable_destination_is_refused_before_any_task(server, keys, tmp_path, photos):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    ran = expand(server, keys, tmp_path, str(photos), "--aspect", "16:9", "--out",
                 str(blocker / "out"))  # fmt: skip
    assert ran.code == 2 and "cannot be written" in ran.stderr
    assert nothing_created(server.stats())


def test_too_little_free_space_is_refused_before_any_task(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(free=100_000))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["expand", str(photos), "--aspect", "16:9", "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "0.1 MB free" in error and "results need about" in error
    assert not list((tmp_path / "out").glob("*.png"))


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


def test_crash_leftovers_are_removed_and_results_get_the_umask_mode(server, keys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    noisy_image(400, 300, 1).save(folder / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".a-0.png.999999-0123abcd.part"  # pid 999999 is not running
    dead.write_bytes(b"half a file")
    mine = out / ".notes.txt.part"  # not one of ours: left alone
    mine.write_text("keep")
    ran = expand(server, keys, tmp_path, str(folder), "--aspect", "16:9", "--out", str(out))
    assert ran.code == 0, ran.stderr
    assert not dead.exists() and mine.exists()
    mode = stat.S_IMODE((out / "a-0.png").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_an_interrupted_run_still_writes_its_report(photos, tmp_path, monkeypatch):
    written = []
    real = expand_module._write_results

    def interrupt_on_second(out, outputs, *, overwrite):
        if written:
            raise KeyboardInterrupt
        written.append(outputs[0].key)
        return real(out, outputs, overwrite=overwrite)

    monkeypatch.setattr(expand_module, "_write_results", interrupt_on_second)
    out = tmp_path / "out"
    code = cli.main(["expand", str(photos), "--aspect", "16:9", "--local-latency", "0.05",
                     "--out", str(out)])  # fmt: skip
    assert code == 130
    page = (out / "report.html").read_text()
    assert 'data-key="a.png"' in page and (out / "report.png").is_file()


def test_plan_reports_the_disk_estimate(photos):
    ran = run_cli("plan", str(photos / "a.png"), "--aspect", "16:9", "--n", "2", "--json")
    [plan] = ran.json()["inputs"]
    assert plan["format"] == "png"
    pixels = plan["canvas"][0] * plan["canvas"][1]
    assert plan["estimated_bytes"] == int(2 * pixels * 2.0)
    text = run_cli("plan", str(photos / "b.jpg"), "--aspect", "16:9").stdout
    assert "disk:    about" in text and "as JPEG" in text
