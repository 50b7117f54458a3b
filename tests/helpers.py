"""What many test files need: distinct pictures, a free port, a bounded wait."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable

from PIL import Image


def picture(number: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A distinct small PNG per number (distinct inputs have distinct external ids)."""
    image = Image.new("RGB", size, ((number * 37) % 256, (number * 91) % 256, 120))
    box = (size[0] // 8, size[1] // 6, size[0] // 2 + number % 100, size[1] * 2 // 3)
    image.paste(((number // 256) % 256, 200, number % 256), box)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
