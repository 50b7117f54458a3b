"""The outpaint stage end to end: over real HTTP against the embedded local Kling server."""

from __future__ import annotations

import importlib.metadata
import io
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imgpipe import ConfigError, Item, make_plugin_manager, parse_config
from imgpipe.runner import build_pipeline, failures_of, run_pipeline, run_stages
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.outpaint.stage import OutpaintStage

ROOT = Path(__file__).parents[1]
PHOTOS = ROOT / "sample_data" / "photos"


@pytest.fixture(scope="module")
def registry():
    return make_plugin_manager().stages()


def outpaint(**options):
    return {"stage": "outpaint", "endpoint": "local", "local_latency": 0.05, **options}


def run(registry, stages, items=()):
    return list(run_stages(build_pipeline(registry, parse_config({"stages": stages})), items))


@pytest.mark.slow
def test_the_sample_photos_come_back_at_16_9_with_the_original_pixels_in_place(registry):
    stages = [
        {"stage": "load", "paths": str(PHOTOS)},
        outpaint(aspect="16:9", area=2.0, n=2, format="png"),
    ]
    results = run(registry, stages)
    sources = sorted(p.name for p in PHOTOS.iterdir())
    assert [r.metadata["outpaint"]["source_key"] for r in results] == [
        name for name in sources for _ in range(2)
    ]
    for result in results:
        meta = result.metadata["outpaint"]
        original = Image.open(PHOTOS / meta["source_key"]).convert("RGB")
        image = Image.open(io.BytesIO(result.read_bytes()))
        assert image.format == "PNG" and image.size == tuple(meta["canvas"])
        assert image.width / image.height == pytest.approx(16 / 9, abs=0.01)
        assert image.width * image.height == pytest.approx(
            2 * original.width * original.height, rel=0.01
        )
        box = meta["box"]
        assert (box[2] - box[0], box[3] - box[1]) == original.size
        assert image.convert("RGB").crop(box).tobytes() == original.tobytes()
        assert meta["task_ids"] and meta["units"] > 0 and meta["variant"] in (0, 1)
        mask = Image.open(io.BytesIO(meta["mask"]))
        assert mask.size == image.size and mask.getpixel((box[0], box[1])) == 0
        assert mask.getpixel((0, 0)) == 255
        assert len(meta["passes"]) == 1 and meta["upload"]["scale"] == 1.0
        assert result.key == f"{Path(meta['source_key']).stem}-{meta['variant']}.png"


def test_the_variants_of_one_image_differ(registry):
    results = run(
        registry, [outpaint(aspect="16:9", n=2)], [Item("cat.png", PHOTOS / "chelsea.png")]
    )
    assert len(results) == 2
    assert results[0].read_bytes() != results[1].read_bytes()


def test_a_small_image_is_upscaled_before_upload(registry):
    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), (30, 120, 200)).save(buffer, "PNG")
    [result] = run(
        registry, [outpaint(ratios=[0.1, 0.1, 0.2, 0.2])], [Item("thumb.png", buffer.getvalue())]
    )
    meta = result.metadata["outpaint"]
    assert meta["upload"]["width"] == 400 and meta["upload"]["scale"] == 2.0
    assert meta["upload"]["canvas"] == [560, 360]
    assert meta["canvas"] == [280, 180] and meta["box"] == [40, 15, 240, 165]


def test_a_bad_item_is_reported_by_name_and_the_rest_of_the_batch_goes_on(registry, caplog):
    items = [
        Item("notes.txt", b"not an image"),
        Item("cat.png", PHOTOS / "chelsea.png"),
        Item("empty.png", b""),
    ]
    stages = build_pipeline(registry, parse_config({"stages": [outpaint(aspect="16:9")]}))
    with caplog.at_level(logging.ERROR):
        results = list(run_stages(stages, items))
    assert [r.metadata["outpaint"]["source_key"] for r in results] == ["cat.png"]
    assert "item 'notes.txt': not an image Pillow can read" in caplog.text
    assert "item 'empty.png': the file is empty" in caplog.text
    assert len(caplog.records) == 2  # each failure once
    assert [failure.key for failure in failures_of(stages)] == ["notes.txt", "empty.png"]


def test_on_error_passthrough_marks_the_item_and_raise_stops(registry):
    items = [Item("notes.txt", b"not an image")]
    [passed] = run(registry, [outpaint(aspect="16:9", on_error="passthrough")], items)
    assert "not an image" in passed.metadata["outpaint"]["error"]
    with pytest.raises(FitError, match=r"notes\.txt"):
        run(registry, [outpaint(aspect="16:9", on_error="raise")], items)


def test_an_image_already_at_the_target_shape_costs_no_task(registry):
    buffer = io.BytesIO()
    Image.new("RGB", (640, 360)).save(buffer, "PNG")
    [item] = run(registry, [outpaint(aspect="16:9")], [Item("wide.png", buffer.getvalue())])
    assert item.key == "wide-0.png" and item.metadata["outpaint"]["unchanged"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option 'aspect': give exactly one of ratios, aspect"),
        ({"aspect": "wide"}, "option 'aspect'"),
        ({"aspect": "16:9", "area": 0.5}, "option 'area'"),
        ({"aspect": "16:9", "anchor": "middle"}, "option 'anchor'"),
        ({"size": "big"}, "option 'size'"),
        ({"aspect": "16:9", "aspect_policy": "stretch"}, "option 'aspect_policy'"),
        ({"aspect": "16:9", "background": "nocolour"}, "option 'background'"),
        ({"ratios": [0.5, 0.5]}, "option 'ratios'"),
        ({"ratios": [1, 1, 1, 1]}, "option 'ratios': .*exceeds 3"),
        ({"aspect": "16:9", "n": 12}, "option 'n'"),
        ({"aspect": "16:9", "n": 3, "concurrency": 2}, "option 'concurrency'"),
        ({"aspect": "16:9", "on_error": "ignore"}, "option 'on_error'"),
        ({"aspect": "16:9", "endpoint": "ftp://x"}, "option 'endpoint'"),
        ({"aspect": "16:9", "colour": "red"}, "colour"),
    ],
)
def test_bad_options_name_the_stage_and_the_option(registry, options, message):
    with pytest.raises(ConfigError, match=rf"stage 'outpaint'.*{message}"):
        build_pipeline(registry, parse_config({"stages": [{"stage": "outpaint", **options}]}))


def test_a_real_endpoint_without_credentials_is_a_config_error(monkeypatch):
    for name in ("KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="KLING_"):
        OutpaintStage(aspect="16:9", endpoint="https://api-singapore.klingai.com")


@pytest.mark.slow
def test_the_sample_pipeline_config_runs(registry, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    monkeypatch.chdir(tmp_path)
    results = list(run_pipeline(registry, "sample_data/pipeline.toml"))
    assert len(results) == 2 * len(list(PHOTOS.iterdir()))
    assert all(Path(r.metadata["saved_path"]).is_file() for r in results)


def test_imgpipe_stages_lists_outpaint_with_its_plugin_and_version():
    output = subprocess.run(
        [sys.executable, "-m", "imgpipe.cli", "stages"], capture_output=True, text=True, timeout=60
    )
    assert output.returncode == 0, output.stderr
    line = next(line for line in output.stdout.splitlines() if line.startswith("outpaint"))
    assert f"kling-expand-plugin {importlib.metadata.version('kling-expand-plugin')}" in line


@pytest.mark.slow
def test_imgpipe_run_exits_1_when_an_item_failed_and_2_on_a_config_error(tmp_path):
    (tmp_path / "in").mkdir()
    shutil.copy(PHOTOS / "chelsea.png", tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("hello")
    config = tmp_path / "pipeline.toml"
    config.write_text(
        f'[[stages]]\nstage = "load"\npaths = ["{tmp_path / "in"}"]\n'
        '[[stages]]\nstage = "outpaint"\nendpoint = "local"\naspect = "16:9"\n'
        "local_latency = 0.05\n"
        f'[[stages]]\nstage = "save"\nfolder = "{tmp_path / "out"}"\n'
    )
    command = [sys.executable, "-m", "imgpipe.cli", "run", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "item 'notes.txt': not an image" in done.stderr
    assert (tmp_path / "out" / "chelsea-0.png").is_file()

    allow = "allow_no_load = true\nallow_no_save = true\n"
    config.write_text(allow + '[[stages]]\nstage = "outpaint"\n')
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "option 'aspect'" in done.stderr


def test_the_stage_defaults_to_the_local_server(monkeypatch):
    for name in ("KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert OutpaintStage(aspect="16:9").endpoint == "local"  # no credentials needed


def test_preview_names_results_as_the_run_does_when_two_inputs_ask_for_one_name():
    from kling_expand_plugin.imaging.output import NAME_METADATA
    from tests.helpers import picture

    def inputs() -> list[Item]:
        return [
            Item(key, picture(number), metadata={NAME_METADATA: "x"})
            for number, key in enumerate(["a.png", "b.png"])
        ]

    stage = OutpaintStage(aspect="16:9", local_latency=0.05)
    ran = [item.key for item in stage(inputs())]
    assert [item.key for item in stage.preview(inputs())] == ran == ["x-0.png", "b-0.png"]


def test_an_input_file_is_read_once_to_fit_it_and_once_to_stitch_it(tmp_path):
    from dataclasses import dataclass

    from tests.helpers import picture

    reads: list[str] = []

    @dataclass
    class CountedItem(Item):
        def read_bytes(self) -> bytes:
            reads.append(self.key)
            return super().read_bytes()

    path = tmp_path / "a.png"
    path.write_bytes(picture(3))
    stage = OutpaintStage(aspect="16:9", local_latency=0.05)
    [result] = list(stage([CountedItem("a.png", path)]))
    assert "error" not in result.metadata["outpaint"]
    assert reads == ["a.png", "a.png"]  # no pixels are held while the task runs
