"""Watching a running task to its end: from a callback where one comes, else by polls timed by
how long similar tasks took."""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from kling_expand_plugin.kling.client import KlingClient
from kling_expand_plugin.kling.errors import WaitTimeout
from kling_expand_plugin.kling.models import Task
from kling_expand_plugin.kling.polling import look

if TYPE_CHECKING:
    from kling_expand_plugin.batch.receiver import CallbackReceiver

log = logging.getLogger(__name__)


class Polling:
    """When to look at a task: when the quicker of similar tasks have ended, then often.

    Until a task has finished, the looks come a tenth of the time waited so far apart (so the
    lag is at most a tenth of the task's run time). After that, the first look
    comes when a tenth of recent tasks had ended, the next after a fiftieth of their median
    duration, growing to a tenth of it: most tasks are noticed within a few percent of their
    run time, and none later than a tenth (the API does not limit queries; creates count).
    With callbacks, polling is the fallback for lost deliveries only: the first look comes
    at one and a half times the median, then every quarter of it.
    """

    def __init__(self, first: float = 0.25, longest: float = 5.0, shortest: float = 0.02) -> None:
        self.first, self.longest, self.shortest = first, longest, shortest
        self._recent: collections.deque[float] = collections.deque(maxlen=64)
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Learn from a task that took `seconds` from its create (or re-attach) to its end."""
        with self._lock:
            self._recent.append(seconds)

    def delays(self, started: float, *, fallback: bool = False) -> Iterator[float]:
        """The waits before each look at a task that started (monotonic clock) at `started`."""
        with self._lock:
            recent = sorted(self._recent)
        if not recent:  # nothing learnt yet: keep the lag within a tenth of the time so far
            share = 0.4 if fallback else 0.1
            while True:
                elapsed = time.monotonic() - started
                yield min(max(self.first, share * elapsed), self.longest) * random.uniform(0.9, 1.1)
        quick, median = recent[len(recent) // 10], recent[len(recent) // 2]
        elapsed = time.monotonic() - started
        if fallback:
            yield max(self.shortest, 1.5 * median - elapsed)
            while True:
                yield max(median / 4, self.shortest)
        yield max(self.shortest, quick - elapsed)
        step, most = median / 50, min(median / 10, self.longest)
        while True:
            yield min(max(step, self.shortest), most)
            step *= 1.15


def watch(
    client: KlingClient,
    task: Task,
    external_id: str,
    *,
    timeout: float,
    polling: Polling,
    receiver: CallbackReceiver | None,
    pause: Callable[[float], None],
) -> Task:
    """The ended task (failed included), within `timeout` seconds (WaitTimeout after).

    `pause(seconds)` waits, and raises to stop the watch (a cancelled run); it is also called
    with 0 before each step. An unsigned "ended" delivery could be forged: it is confirmed
    with the API, once, before it is believed.
    """
    started = time.monotonic()
    deadline = started + timeout
    delays = polling.delays(started, fallback=receiver is not None)
    next_poll = started + next(delays)
    unconfirmed_end = False  # an unsigned "ended" delivery the API did not confirm
    try:
        while not task.finished:
            pause(0.0)
            now = time.monotonic()
            if now >= deadline:
                raise WaitTimeout(task.task_id, timeout, task)
            if now < next_poll:
                wait = min(next_poll, deadline) - now
                if receiver is None or unconfirmed_end:
                    pause(wait)
                    continue
                delivered = receiver.wait(external_id, wait, after=task.status)
                if delivered is None:
                    continue
                if receiver.verifies_signatures or not delivered.finished:
                    task = delivered
                    continue
                unconfirmed_end = True
            task = look(client.get, task.task_id, task)
            next_poll = time.monotonic() + next(delays)
    finally:
        if receiver is not None:
            receiver.forget(external_id)
    if not task.failed:
        polling.observe(_run_time(task) or time.monotonic() - started)
    return task


def _run_time(task: Task) -> float | None:
    """How long the task ran by the server's own clock: our polling's lag left out, so that
    learning from it does not delay the next look further."""
    if task.created_at and task.updated_at and task.updated_at > task.created_at:
        return (task.updated_at - task.created_at) / 1000
    return None
