"""The process's memory for large images: Pillow keeps freed blocks only while a run lasts."""

from __future__ import annotations

import gc
import threading

import pytest
from PIL import Image

from imgpipe import Item
from kling_expand_plugin.imaging.memory import BLOCK_BYTES, BLOCKS_PER_WORKER, reused_image_blocks
from kling_expand_plugin.outpaint.stage import OutpaintStage
from tests.helpers import picture


def settings() -> tuple[int, int]:
    return Image.core.get_blocks_max(), Image.core.get_block_size()


def test_freed_image_blocks_are_kept_while_a_run_lasts_then_given_back():
    before = settings()
    with reused_image_blocks(2):
        assert settings() == (2 * BLOCKS_PER_WORKER, BLOCK_BYTES)
        Image.new("RGB", (3000, 2000))  # 24 MB, let go at once
        assert Image.core.get_stats()["blocks_cached"] > 0
    assert settings() == before
    assert Image.core.get_stats()["blocks_cached"] <= before[0]


def test_runs_at_once_keep_the_cache_until_the_last_ends():
    before = settings()
    first_in, second_done, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with reused_image_blocks(1):
            first_in.set()
            second_done.wait(5)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(5)
    with reused_image_blocks(2):
        assert settings() == (2 * BLOCKS_PER_WORKER, BLOCK_BYTES)  # the larger of the two
    assert settings() == (BLOCKS_PER_WORKER, BLOCK_BYTES)  # the first still runs
    second_done.set()
    assert first_out.wait(5)
    thread.join(5)
    assert settings() == before


@pytest.mark.usefixtures("kling_env")
def test_a_stage_run_leaves_pillow_as_it_found_it(start_server, tmp_path):
    server = start_server(latency=0.05)
    Image.core.set_blocks_max(3)  # the host's own choice
    before = settings()
    try:
        stage = OutpaintStage(
            endpoint=server.url, aspect="16:9", ledger=str(tmp_path / "l.sqlite"), format="png"
        )
        seen = []
        for result in stage([Item("a.png", picture(1)), Item("b.png", picture(2))]):
            seen.append(settings())
            assert result.read_bytes()
        assert seen == [(stage.cpu_workers * BLOCKS_PER_WORKER, BLOCK_BYTES)] * 2
        assert settings() == before
    finally:
        Image.core.set_blocks_max(0)


@pytest.mark.usefixtures("kling_env")
def test_an_item_s_pixels_are_let_go_when_it_is_done_not_at_the_next_garbage_collection(
    start_server, tmp_path
):
    # A second run on a fresh ledger finds its tasks made: each create is answered 1201
    # (external_task_id taken) and looked up. An error kept in a local of the frame that raised
    # it is a reference cycle, which held every frame under it, the item's own with its decoded
    # photo (96 MB at 24 MP), until Python's cycle collector happened to run.
    server = start_server(latency=0.05)
    inputs = [Item(f"{n}.png", picture(n, (600, 400))) for n in range(3)]

    def run(ledger: str) -> None:
        stage = OutpaintStage(endpoint=server.url, aspect="16:9", ledger=str(tmp_path / ledger))
        assert len(list(stage(inputs))) == 3

    run("first.sqlite")
    gc.collect()
    gc.disable()
    try:
        run("second.sqlite")
        held = [o for o in gc.get_objects() if isinstance(o, Image.Image) and o.size == (600, 400)]
    finally:
        gc.enable()
    assert held == []
    assert server.stats()["tasks"]["succeed"] == 3  # the second run made no task
