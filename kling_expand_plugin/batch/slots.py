"""The account's task slots, counted on this side so that the account stays full, never over."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from kling_expand_plugin.kling.errors import Cancelled


class Slots:
    """`total` slots; a task of `n` images holds `n` of them from its create until it ends."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.in_use = 0
        self.max_in_use = 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def hold(self, n: int, *, cancel: threading.Event | None = None) -> Iterator[None]:
        """Wait until `n` slots are free and hold them for the block; Cancelled when `cancel`
        is set while waiting."""
        if not 1 <= n <= self.total:
            raise ValueError(f"a task of {n} images cannot fit in {self.total} slots")
        with self._free:
            while not self._free.wait_for(lambda: self.in_use + n <= self.total, timeout=0.1):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("stopped while waiting for a free task slot")
            self.in_use += n
            self.max_in_use = max(self.max_in_use, self.in_use)
        try:
            yield
        finally:
            with self._free:
                self.in_use -= n
                self._free.notify_all()
