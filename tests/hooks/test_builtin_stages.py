from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from imgpipe import ConfigError, Item, parse_config
from imgpipe.runner import build_pipeline, run_stages


def png_bytes(size=(4, 3), colour=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def run(pm, stages, items=()):
    return list(run_stages(build_pipeline(pm.stages(), parse_config({"stages": stages})), items))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub" / "b.png").write_bytes(png_bytes())
    (folder / ".hidden.png").write_bytes(png_bytes())
    return folder


def test_load_a_folder_yields_every_file_lazily_and_sorted(pm, photos):
    items = run(pm, [{"stage": "load", "paths": str(photos)}])
    assert [item.key for item in items] == ["a.png", "notes.txt", "sub/b.png"]
    assert all(isinstance(item.image, Path) for item in items)


def test_load_a_glob_a_file_and_no_duplicates(pm, photos):
    items = run(
        pm,
        [{"stage": "load", "paths": [f"{photos}/**/*.png", str(photos / "a.png")]}],
    )
    assert [item.key for item in items] == ["a.png", "sub/b.png"]


def test_load_same_relative_path_from_two_folders_keeps_both(pm, tmp_path, photos):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes(png_bytes())
    items = run(pm, [{"stage": "load", "paths": [str(photos / "a.png"), str(other)]}])
    assert [item.key for item in items] == ["a.png", str(other / "a.png")]


def test_load_passes_upstream_items_first(pm, photos):
    upstream = [Item("first", png_bytes())]
    items = run(pm, [{"stage": "load", "paths": str(photos / "a.png")}], upstream)
    assert [item.key for item in items] == ["first", "a.png"]


def test_load_refuses_a_missing_path_before_running(pm, tmp_path):
    with pytest.raises(ConfigError, match=r"'load': option 'paths': '.*missing' does not exist"):
        run(pm, [{"stage": "load", "paths": str(tmp_path / "missing")}])


def test_load_reads_a_url_over_http(pm, http_server):
    url = http_server({"/p.png": png_bytes()}) + "/p.png"
    [item] = run(pm, [{"stage": "load", "paths": url}])
    assert item.key == url and item.is_url
    assert item.open().size == (4, 3)


def test_save_keeps_the_encoding_byte_for_byte(pm, tmp_path):
    data = png_bytes()
    [item] = run(pm, [{"stage": "save", "folder": str(tmp_path / "out")}], [Item("x/a.png", data)])
    assert (tmp_path / "out" / "x" / "a.png").read_bytes() == data
    assert item.metadata["saved_path"] == str(tmp_path / "out" / "x" / "a.png")


def test_save_converts_format_and_fills_the_name_pattern(pm, tmp_path):
    source = Item("a.png", png_bytes(), metadata={"variant": 3})
    stages = [
        {
            "stage": "save",
            "folder": str(tmp_path),
            "name": "{stem}_v{variant}.{ext}",
            "format": "jpeg",
        }
    ]
    [item] = run(pm, stages, [source])
    saved = Path(item.metadata["saved_path"])
    assert saved.name == "a_v3.jpg"
    assert Image.open(saved).format == "JPEG"


def test_save_writes_the_first_of_two_items_on_one_file_and_fails_the_second(pm, tmp_path):
    items = [Item("a.png", png_bytes()), Item("a.png", png_bytes(colour=(0, 0, 9)))]
    _, second = run(pm, [{"stage": "save", "folder": str(tmp_path)}], items)
    assert (tmp_path / "a.png").read_bytes() == items[0].read_bytes()
    assert "saved_path" not in second.metadata
    assert "item 'a.png' was written to" in second.metadata["save_error"]


def test_save_fails_an_item_whose_name_leaves_the_folder_and_goes_on(pm, tmp_path):
    items = [Item("../../evil.png", png_bytes()), Item("good.png", png_bytes())]
    evil, good = run(pm, [{"stage": "save", "folder": str(tmp_path / "out")}], items)
    assert "leaves the folder" in evil.metadata["save_error"]
    assert good.metadata["saved_path"] == str(tmp_path / "out" / "good.png")
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize("format", ["jpeg", "webp", "png", "tiff"])
def test_save_converting_keeps_the_icc_profile_and_the_exif(pm, tmp_path, format):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"
    exif[0x0112] = 1
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buffer, "JPEG", icc_profile=icc, exif=exif)
    stages = [{"stage": "save", "folder": str(tmp_path), "format": format}]
    [item] = run(pm, stages, [Item("a.jpg", buffer.getvalue())])
    saved = Image.open(item.metadata["saved_path"])
    assert saved.info.get("icc_profile") == icc
    if format != "tiff":  # TIFF holds EXIF as its own tags; Pillow does not write them back
        assert saved.getexif().get(0x010F) == "Camera Maker"


def test_save_leaves_a_different_existing_file_alone_unless_overwrite(pm, tmp_path):
    (tmp_path / "a.png").write_bytes(b"someone else's file")
    items = [Item("a.png", png_bytes()), Item("b.png", png_bytes())]
    kept, written = run(pm, [{"stage": "save", "folder": str(tmp_path)}], items)
    assert "exists with other content" in kept.metadata["save_error"]
    assert (tmp_path / "a.png").read_bytes() == b"someone else's file"
    assert written.metadata["saved_path"] == str(tmp_path / "b.png")
    same = run(pm, [{"stage": "save", "folder": str(tmp_path)}], [Item("b.png", png_bytes())])
    assert "save_error" not in same[0].metadata  # the same bytes again: nothing to do
    stages = [{"stage": "save", "folder": str(tmp_path), "overwrite": True}]
    run(pm, stages, [Item("a.png", png_bytes())])
    assert (tmp_path / "a.png").read_bytes() == png_bytes()
