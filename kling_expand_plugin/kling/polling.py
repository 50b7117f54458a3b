"""Waiting for a task to end: polls on a growing schedule, through transient errors, until the
task ends, a deadline passes or the caller cancels."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from kling_expand_plugin.kling.errors import Cancelled, KlingError, TaskFailedError, WaitTimeout
from kling_expand_plugin.kling.models import Task

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Task | None)


@dataclass(frozen=True)
class PollSchedule:
    """Delays between polls while waiting: `first`, growing by `factor` up to `longest`."""

    first: float = 2.0
    factor: float = 1.5
    longest: float = 30.0
    jitter: float = 0.2
    """Each delay is moved by up to this fraction of itself, either way, at random."""

    def delays(self) -> Iterator[float]:
        """The delays, without end."""
        delay = self.first
        while True:
            yield delay * (1.0 + self.jitter * (2.0 * random.random() - 1.0))
            delay = min(self.longest, delay * self.factor)


DEFAULT_SCHEDULE = PollSchedule()


def wait_for(
    get: Callable[[str], Task],
    task: Task | str,
    *,
    timeout: float,
    cancel: threading.Event | None,
    schedule: PollSchedule,
) -> Task:
    """Poll `get(task_id)` until the task finishes, and return it if it succeeded.

    Raises TaskFailedError (carrying `task_status_msg`) if it failed, WaitTimeout after
    `timeout` seconds, Cancelled as soon as `cancel` is set. Transient errors while polling
    are logged and polling goes on; others are raised.
    """
    last = task if isinstance(task, Task) else None
    task_id = task.task_id if isinstance(task, Task) else task
    deadline = time.monotonic() + timeout
    delays = schedule.delays()
    poll_now = last is None
    while True:
        if last is not None and last.finished:
            if last.failed:
                raise TaskFailedError(last)
            return last
        if not poll_now:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(task_id, timeout, last)
            delay = min(next(delays), remaining)
            if cancel is not None:
                if cancel.wait(delay):
                    raise Cancelled(f"waiting for task {task_id} was cancelled")
            else:
                time.sleep(delay)
        poll_now = False
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"waiting for task {task_id} was cancelled")
        last = look(get, task_id, last)


def look(get: Callable[[str], Task], task_id: str, last: T) -> Task | T:
    """One poll: `get(task_id)`, or `last` after a transient error (logged: waits poll on
    through them); other errors are raised."""
    try:
        return get(task_id)
    except KlingError as error:
        if not error.retryable:
            raise
        log.warning("polling task %s: %s; polling on", task_id, error)
        return last
