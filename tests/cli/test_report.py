"""The report: the contact sheet built from items, and the HTML of a real batch in Chromium."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from imgpipe import Item
from kling_expand_plugin.outpaint.report import ContactSheet

from .conftest import noisy_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _result(key: str, variant: int, size=(800, 450), box=(200, 75, 600, 375)) -> Item:
    meta = {
        "source_key": key,
        "variant": variant,
        "units": 2.0,
        "passes": [
            {"up_expansion_ratio": 0.25, "down_expansion_ratio": 0.25,
             "left_expansion_ratio": 0.5, "right_expansion_ratio": 0.5}
        ],
        "box": list(box),
        "canvas": list(size),
        "upload": {"changes": ["upscaled 200 x 150 to 400 x 300"]},
    }  # fmt: skip
    stem = key.rsplit(".", 1)[0]
    return Item(f"{stem}-{variant}.png", _png(noisy_image(*size, variant)), "image/png",
                {"outpaint": meta})  # fmt: skip


def test_a_sheet_shows_results_failures_and_unchanged_inputs(tmp_path):
    sheet = ContactSheet(tmp_path, title="a <test> & more", settings={"aspect": "16:9"})
    sheet.add("a.png", [(_result("a.png", v), tmp_path / f"a-{v}.png") for v in (0, 1)], None)
    failed = Item("bad.png", b"", metadata={"outpaint": {"error": "item 'bad.png': <empty>"}})
    sheet.add("bad.png", [(failed, None)], failed)
    same = Item("wide-0.png", _png(noisy_image(480, 270, 9)),
                metadata={"outpaint": {"unchanged": True, "box": [0, 0, 480, 270]}})  # fmt: skip
    sheet.add("wide.png", [(same, tmp_path / "wide-0.png")], same)
    html_path, png_path = sheet.write({"done": 2, "failed": 1, "results": 3, "units": 2.0})
    page = html_path.read_text()
    assert "a &lt;test&gt; &amp; more" in page and "item &#x27;bad.png&#x27;: &lt;empty&gt;" in page
    assert 'class="none">no preview' in page and "already the target shape" in page
    assert "left:25.000%;top:16.667%;width:50.000%;height:66.667%" in page
    assert "ratios: up 0.2500 down 0.2500 left 0.5000 right 0.5000" in page
    assert "upload: upscaled 200 x 150 to 400 x 300" in page
    # the original is cut from the result's box: its thumbnail shows the 400 x 300 original
    assert Image.open(sheet.rows[0].original.thumb).size == (213, 160)
    picture = Image.open(png_path)
    pixels = np.asarray(picture.convert("RGB"))
    assert (np.all(pixels == (255, 0, 200), axis=-1).sum()) > 2 * 400  # two boxes outlined
    assert (np.all(pixels == (190, 20, 20), axis=-1).sum()) > 0  # the failure, in red


def test_an_unchanged_input_s_thumbnails_come_from_the_stage_s_preview_not_a_second_decode(
    tmp_path,
):
    sheet = ContactSheet(tmp_path, title="t", settings={})
    preview = io.BytesIO()
    noisy_image(240, 135, 3).save(preview, "JPEG")
    meta = {"unchanged": True, "box": [0, 0, 4800, 2700], "canvas": [4800, 2700],
            "preview": preview.getvalue()}  # fmt: skip
    same = Item("wide-0.jpg", b"the result's bytes, not read", metadata={"outpaint": meta})
    row = sheet.add("wide.jpg", [(same, tmp_path / "wide-0.jpg")], same)
    assert row.original is not None and [r.caption for r in row.results] == ["unchanged"]
    assert row.results[0].size == (4800, 2700)  # the result's own size, not the preview's


def test_the_png_sheet_stops_at_its_row_limit(tmp_path):
    item = _result("x.png", 0, size=(320, 180), box=(80, 45, 240, 135))
    heights = []
    for rows in (3, 8):
        sheet = ContactSheet(tmp_path / str(rows), title="big", settings={}, max_sheet_rows=3)
        for number in range(rows):
            sheet.add(f"x{number}.png", [(item, tmp_path / "x-0.png")], None)
        html_path, png_path = sheet.write({})
        assert html_path.read_text().count('<section class="row') == rows
        heights.append(Image.open(png_path).height)
    assert 0 < heights[1] - heights[0] < 40  # one line of header more: "showing 3 of 8"


def test_headless_chromium_shows_every_input_and_loads_every_image(batch, tmp_path):
    if CHROMIUM is None:  # CI installs it, and there a missing tool fails rather than skips
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (.ci/run installs it)")
    ran, out, _ = batch
    keys = [record["key"] for record in ran.json()["inputs"]]
    url = (out / "report.html").resolve().as_uri()
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [*command, "--dump-dom", url], capture_output=True, text=True, timeout=60
    ).stdout
    body = re.search(r"<body ([^>]*)>", dom)
    assert body, dom[:500]
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attributes["data-images-expected"] == "9"
    assert attributes["data-images-loaded"] == "9" and attributes["data-images-failed"] == "0"
    shown = re.findall(r'<section class="row (\w+)" data-key="([^"]+)"', dom)
    assert [key for _, key in shown] == keys
    assert dict((key, status) for status, key in shown)["broken.png"] == "failed"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*command, "--window-size=1000,1400", f"--screenshot={shot}", url],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert (np.all(pixels == (255, 0, 200), axis=-1).sum()) > 1000  # the boxes are drawn


def test_report_paths_are_relative_so_the_folder_can_move(batch, tmp_path):
    _, out, _ = batch
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    page = (moved / "report.html").read_text()
    for relative in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert not relative.startswith("/") and (moved / relative).is_file()
    assert 'src="report-files/' in page  # the pictures travel with the page
