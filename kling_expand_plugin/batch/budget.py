"""A ceiling on the units a run spends, reserved before each create."""

from __future__ import annotations

import threading


class BudgetReached(RuntimeError):
    """A new task would take the units spent and reserved past the budget."""


class Budget:
    """A ceiling on the units a run spends: a new task reserves what it may cost before its
    create, and the reservation is settled only when the task's final units are known.

    A task is estimated at the most any task cost per image so far (1 unit per image before
    the first is known), so a ceiling holds whatever the concurrency.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0
        self._per_image = 1.0
        self._lock = threading.Lock()

    def reserve(self, key: str, n: int) -> float:
        """Hold back what a task of `n` images may cost; BudgetReached when it does not fit."""
        with self._lock:
            estimate = self._per_image * n
            if self.spent + self.reserved + estimate > self.limit + 1e-9:
                raise BudgetReached(
                    f"item {key!r}: not submitted: {self.spent:g} units spent and "
                    f"{self.reserved:g} reserved of the budget of {self.limit:g}"
                )
            self.reserved += estimate
            return estimate

    def settle(self, reservation: float, units: float, n: int) -> None:
        """The task ended and cost `units`: the reservation becomes spending."""
        with self._lock:
            self.reserved -= reservation
            self.spent += units
            self._per_image = max(self._per_image, units / n)

    def release(self, reservation: float) -> None:
        """The create certainly did not happen: the reservation is free again."""
        with self._lock:
            self.reserved -= reservation
