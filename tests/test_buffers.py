"""The allocator settings the stage makes for big images."""

from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image

from kling_expand_plugin.imaging.buffers import POOL_BLOCKS, tune_allocators


def test_pillow_keeps_a_bounded_pool_of_blocks_for_the_next_image():
    tune_allocators()
    if "PILLOW_BLOCKS_MAX" not in os.environ:
        assert Image.core.get_blocks_max() >= POOL_BLOCKS
    before = Image.core.get_stats()["reused_blocks"]
    for _ in range(2):
        Image.new("RGB", (4096, 4096)).load()  # 64 MB: four blocks
    assert Image.core.get_stats()["reused_blocks"] >= before + 4


def test_a_pool_size_the_user_set_is_left_alone():
    code = (
        "from PIL import Image\n"
        "from kling_expand_plugin.imaging.buffers import tune_allocators\n"
        "tune_allocators()\n"
        "print(Image.core.get_blocks_max())\n"
    )
    env = {**os.environ, "PILLOW_BLOCKS_MAX": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "3", out.stderr
