"""Where decoded images get their memory: given back to the system at once when freed, except a
bounded pool of Pillow's blocks that the next image reuses.

A 48 MP canvas is 192 MB of pixels (Pillow keeps RGB as 4 bytes a pixel). Memory fresh from
the system costs a page fault per 4 KiB on first touch (about 0.1 s of system time for each
48 MP decode); memory kept in a heap makes a process's peak grow with the images it has seen.
So large buffers go back to the system as soon as they are freed, and Pillow keeps up to
`POOL_BLOCKS` of its blocks for the next image. The pool never raises the peak past the most
image memory that was ever live at once: a block enters it only when an image lets it go, and
new blocks are made only when it is empty. The blocks are 4 MB, not Pillow's 16: a small image
takes a pooled block and shrinks it to its size, and the next large image that takes that block
back pays for its pages afresh, so the smaller the block, the less a small image wastes.
"""

from __future__ import annotations

import ctypes
import functools
import os

from PIL import Image

BLOCK_BYTES = 4 << 20
POOL_BLOCKS = 128
"""Pillow blocks kept for reuse (512 MB): a 48 MP result and a 24 MP input for each of two CPU
workers (measured: a larger pool keeps the page faults where they are)."""
MMAP_THRESHOLD = 1 << 20
M_MMAP_THRESHOLD = -3


@functools.cache
def tune_allocators() -> None:
    """Return large freed buffers at once, and pool Pillow's blocks (once per process; a
    `PILLOW_BLOCK_SIZE` or `PILLOW_BLOCKS_MAX` in the environment is left as the user set it)."""
    if "PILLOW_BLOCK_SIZE" not in os.environ:
        Image.core.set_block_size(BLOCK_BYTES)
    if "PILLOW_BLOCKS_MAX" not in os.environ:
        Image.core.set_blocks_max(max(Image.core.get_blocks_max(), POOL_BLOCKS))
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    # By default glibc raises its mmap threshold after a large free and keeps later buffers in
    # its heaps, so the peak grows with what was seen, not with what is live (measured: 4
    # photos, 1756 MiB by default, 1423 MiB so).
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
