"""The process's memory for large images: bounded, and used again rather than faulted in anew.

A 48 MP canvas is 192 MB. Taken fresh from the system, its pages are faulted in and zeroed one
by one, which costs the kernel about a third of what decoding the image costs; given back at
once, the next image pays it again. So while a run lasts, Pillow keeps a bounded number of
freed image blocks for the next image (`reused_image_blocks`), and glibc gives every other
large buffer back at once (`return_large_buffers`): the process's peak follows what is live,
not what it has seen.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator

from PIL import Image

BLOCK_BYTES = 2 << 20
"""The size of Pillow's image blocks while a run lasts (its default is 16 MB). Pillow hands a
kept block to whatever image comes next, however small, and shrinks it to fit; a large image
taking that block back faults the difference in again. With small blocks, a thumbnail or a
seam strip spoils 2 MB, not 16. Over glibc's mmap threshold (`return_large_buffers`), so a
block the cache does not keep goes back to the system, not into a heap it would fragment."""

BLOCKS_PER_WORKER = 192
"""Freed image blocks Pillow keeps per CPU worker while a run lasts (384 MB): a 48 MP result
and the 24 MP photo stitched into it take 144. A block is kept only when an image lets it go
and is taken before any new one is asked for, so Pillow's images and its cache together never
hold more than its images once held at once; it is emptied when the run ends."""

_lock = threading.Lock()
_runs: list[int] = []
"""The block counts asked for by the runs under way (stages can run at once in one process)."""
_outside = (0, 0)
"""Pillow's own settings (blocks kept, block size), for when no run is under way."""


@contextlib.contextmanager
def reused_image_blocks(workers: int) -> Iterator[None]:
    """While the block lasts, Pillow keeps freed image blocks for the next images of
    `workers` CPU workers (`BLOCKS_PER_WORKER` each) instead of giving them back."""
    global _outside
    with _lock:
        if not _runs:
            _outside = (Image.core.get_blocks_max(), Image.core.get_block_size())
            Image.core.set_block_size(BLOCK_BYTES)
        _runs.append(workers * BLOCKS_PER_WORKER)
        Image.core.set_blocks_max(max(_outside[0], *_runs))
    try:
        yield
    finally:
        with _lock:
            _runs.remove(workers * BLOCKS_PER_WORKER)
            Image.core.set_blocks_max(max([_outside[0], *_runs]))  # frees what is over it
            if not _runs:
                Image.core.set_block_size(_outside[1])


@functools.cache
def return_large_buffers() -> None:
    """Have glibc give large freed buffers (over 1 MB: downloads, encoded files, numpy strips)
    back to the system at once. By default it raises its mmap threshold after a large free and
    keeps later ones in its heaps, so a process's peak grows with the buffers it has seen, not
    with what is live (4 photos: 1756 MiB by default, at most 1423 MiB so)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)
