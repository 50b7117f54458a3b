"""A byte budget shared by the server's handler threads: request bodies held in memory at once."""

from __future__ import annotations

import threading
import time


class ByteBudget:
    """At most `limit` bytes reserved at once; `reserve` waits (bounded) for room."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the byte budget must be at least 1 byte")
        self.limit = limit
        self._in_use = 0
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._changed:
            return self._in_use

    def reserve(self, size: int, timeout: float) -> bool:
        """Reserve `size` bytes, waiting at most `timeout` seconds; False if there was no room."""
        if size > self.limit:
            return False
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._in_use + size > self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            self._in_use += size
            return True

    def release(self, size: int) -> None:
        with self._changed:
            self._in_use -= size
            self._changed.notify_all()
