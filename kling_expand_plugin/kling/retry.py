"""The one retry engine: how often and how long a call is tried again, and the loop that does it.

Every retried call of the package (the client's requests and creates, downloads, and the task
runner's waits for a free slot after 1303) goes through `retrying`, under a `RetryPolicy`.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is retried.

    `attempts` counts every try, the first included; `deadline` bounds the whole call in
    seconds, sleeps included. The delay before retry k (k = 0, 1, ...) is
    `min(max_delay, base_delay * 2**k)`, reduced by up to `jitter` of itself at random, and never
    shorter than the server's `Retry-After`.

    `retry_concurrency`: whether a create answered 1303 (too many tasks running for the account)
    is retried here, after at least `concurrency_delay` seconds. True suits standalone use; a
    caller that schedules its own window of tasks sets it False and gets the
    ConcurrencyLimitedError at once.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    deadline: float = 120.0
    jitter: float = 0.5
    retry_concurrency: bool = True
    concurrency_delay: float = 1.0

    def backoff(self, retry_number: int) -> float:
        """The delay before retry `retry_number` (0 for the first retry), jitter applied."""
        delay = min(self.max_delay, self.base_delay * 2.0**retry_number)
        return delay * (1.0 - self.jitter * random.random())

    def start(self) -> RetryBudget:
        """A fresh budget for one call."""
        return RetryBudget(self)


DEFAULT_RETRY = RetryPolicy()


class RetryBudget:
    """The retries left to one call under a RetryPolicy: attempts and deadline."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.retries = 0
        self.deadline = time.monotonic() + policy.deadline

    def next_delay(self, *, retry_after: float | None = None, minimum: float = 0.0) -> float | None:
        """Seconds to sleep before the next try, or None when the budget is spent."""
        if self.retries + 1 >= self.policy.attempts:
            return None
        delay = max(self.policy.backoff(self.retries), retry_after or 0.0, minimum)
        if time.monotonic() + delay > self.deadline:
            return None
        self.retries += 1
        return delay


def retrying(
    call: Callable[[], T],
    policy: RetryPolicy,
    delay_for: Callable[[Exception, RetryBudget], float | None],
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    level: int = logging.WARNING,
) -> T:
    """`call()`, tried again while `delay_for(error, budget)` gives a delay for what it raised
    (None: raise it); each retry is logged at `level` as `what`: error, and waits in `sleep`."""
    budget = policy.start()
    while True:
        try:
            return call()
        except Exception as error:
            delay = delay_for(error, budget)
            if delay is None:
                raise
            log.log(level, "%s: %s; retrying in %.2f s", what, error, delay)
            sleep(delay)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` in seconds, from either form (delta-seconds or an HTTP date); None when
    absent or unreadable. A date in the past is 0."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if seconds >= 0 else None
