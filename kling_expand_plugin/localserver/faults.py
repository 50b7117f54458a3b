"""Faults on demand: named switches, each firing at a rate from its own seeded random stream.

Each name has its own `random.Random`, seeded from the server's seed and the name, and drawn
under a lock, so a given seed and request order always fire the same faults.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

FAULTS: dict[str, str] = {
    "server-error": "answer 5000, 5001 or 5002 (a 5000/5002 create is still processed)",
    "throttle": "answer 1302 (requests too fast), HTTP 429",
    "slow-create": "process a create, answer only after slow_create_delay seconds",
    "drop-before": "close the connection before processing the request",
    "drop-after": "process the request, then close the connection without answering",
    "bad-json": "process the request, answer HTTP 200 with a malformed JSON body",
    "task-failed": "the task ends failed, with a realistic task_status_msg",
    "broken-download": "cut a result image download off midway",
    "callback-drop": "do not deliver a callback",
    "callback-repeat": "deliver a callback twice",
    "callback-reorder": "hold a callback back and deliver it after the task's next one",
}
"""Every fault name, with what it does when it fires."""


class Faults:
    """The fault switches of one server: `fires(name)` says whether a fault hits this time."""

    def __init__(self, rates: Mapping[str, float], seed: int) -> None:
        for name, rate in rates.items():
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault {name} rate {rate} is outside 0..1")
        self._rates = dict(rates)
        self._streams = {name: random.Random(f"{seed}:{name}") for name in FAULTS}
        self._fired = dict.fromkeys(FAULTS, 0)
        self._lock = threading.Lock()

    def fires(self, name: str) -> bool:
        """Whether fault `name` hits now; draws from its stream only when its rate is above 0."""
        return self.choose(name, (True,)) is not None

    def choose(self, name: str, options: Sequence[T]) -> T | None:
        """None when fault `name` does not hit now, else one of `options` from its stream.

        The hit and the choice are drawn together, so concurrent requests cannot interleave.
        """
        rate = self._rates.get(name, 0.0)
        if rate <= 0.0:
            return None
        with self._lock:
            stream = self._streams[name]
            if stream.random() >= rate:
                return None
            self._fired[name] += 1
            return stream.choice(options)

    def fired(self) -> dict[str, int]:
        """How many times each fault has fired so far."""
        with self._lock:
            return dict(self._fired)
