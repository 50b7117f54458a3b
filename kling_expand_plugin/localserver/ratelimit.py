"""An optional request-rate limit: at most N requests in any one-second window."""

from __future__ import annotations

import threading
import time
from collections import deque


class RateLimiter:
    """Counts requests in a sliding one-second window; `allow()` is False once over the limit."""

    def __init__(self, per_second: int | None) -> None:
        if per_second is not None and per_second < 1:
            raise ValueError("rate limit must be at least 1 request per second")
        self._per_second = per_second
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Record one request now; False when it is over the limit (and not counted)."""
        if self._per_second is None:
            return True
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] >= 1.0:
                self._times.popleft()
            if len(self._times) >= self._per_second:
                return False
            self._times.append(now)
            return True
