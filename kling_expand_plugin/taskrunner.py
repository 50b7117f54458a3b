"""Getting one paid task done exactly once: create (or re-attach), wait, download, record.

The runner is where the stage's promises about money live: a create is posted only when the
ledger has no task for its external id (and the client looks the id up before any re-post),
slots are held from create to end so the account is never over its limit, 1303 is waited out,
a budget stops new creates, and every result is on disk and in the ledger before it is handed
back.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .client import ExpandRequest, KlingClient
from .errors import (
    ConcurrencyLimitedError,
    DownloadError,
    KlingError,
    NotFoundError,
    TaskFailedError,
    WaitTimeout,
)
from .ledger import Ledger
from .models import Task, TaskImage, TaskStatus
from .slots import Slots

if TYPE_CHECKING:
    from .receiver import CallbackReceiver

log = logging.getLogger(__name__)

CONCURRENCY_BACKOFF = (1.0, 30.0)
"""First and longest wait after a 1303 (too many tasks running on the account), in seconds."""


class BudgetReached(RuntimeError):
    """A new task would take the units spent past the stage's budget."""


class PreviouslyFailed(RuntimeError):
    """The ledger records that this very task failed before; it is not paid for again."""


@dataclass(frozen=True)
class Outcome:
    """A finished task's result images, from the API or read back from the ledger."""

    task_id: str
    external_id: str
    units: float | None
    images: list[bytes]
    from_ledger: bool = False


@dataclass
class Tally:
    """What the runner did, for the stage's summary."""

    created: int = 0
    reattached: int = 0
    from_ledger: int = 0
    units: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class TaskRunner:
    """Runs expand tasks for the stage against one endpoint, with one ledger and one slot pool."""

    def __init__(
        self,
        client: KlingClient,
        ledger: Ledger,
        endpoint_key: str,
        *,
        slots: Slots,
        timeout: float,
        budget: float | None = None,
        receiver: CallbackReceiver | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.endpoint_key = endpoint_key
        self.slots = slots
        self.timeout = timeout
        self.polling = Polling()
        self.budget = budget
        self.receiver = receiver
        self.tally = Tally()
        self._reserved = 0.0

    def run(self, key: str, request: ExpandRequest) -> Outcome:
        """The results of `request`, paying for it at most once whatever happened before."""
        if self.receiver is not None and request.callback_url is None:
            callback = self.receiver.url_for(request.resolved_external_id)
            request = dataclasses.replace(request, callback_url=callback)
        external_id = request.resolved_external_id
        entry = self.ledger.entry(self.endpoint_key, external_id)
        if entry is not None and entry.complete and entry.task_id is not None:
            with self.tally.lock:
                self.tally.from_ledger += 1
            log.debug("%s: results of task %s read back from the ledger", key, entry.task_id)
            images = [path.read_bytes() for path in entry.results]
            units = float(entry.units) if entry.units else None
            return Outcome(entry.task_id, external_id, units, images, from_ledger=True)
        if entry is not None and entry.status == TaskStatus.FAILED.value:
            raise PreviouslyFailed(
                f"item {key!r}: task {entry.task_id} failed before: {entry.status_msg} "
                f"(recorded in {self.ledger.path}; delete it there to try again)"
            )
        with self.slots.hold(request.n):
            task = self._reattach(key, entry.task_id, external_id) if entry else None
            if task is None:
                task = self._create(key, request)
            self.ledger.record(self.endpoint_key, task)
            try:
                task = self._wait(task)
            except TaskFailedError as error:
                self.ledger.record(self.endpoint_key, error.task)
                self._count_units(error.task)
                raise
            self.ledger.record(self.endpoint_key, task)
        self._count_units(task)
        images = []
        for image in task.images:
            data = self._download(task, image)
            self.ledger.store_result(self.endpoint_key, external_id, image.index, data)
            images.append(data)
        return Outcome(task.task_id, external_id, task.units_value, images)

    def _reattach(self, key: str, task_id: str | None, external_id: str) -> Task | None:
        """The task the ledger knows, by its id, or by its external id when a crash came
        between the create and its answer; None if the server does not have it."""
        try:
            if task_id is not None:
                task = self.client.get(task_id)
            else:
                task = self.client.get_by_external_id(external_id)
        except NotFoundError:
            if task_id is not None:
                log.warning("%s: task %s is gone from the server; creating it again", key, task_id)
            return None
        with self.tally.lock:
            self.tally.reattached += 1
        log.debug("%s: re-attached to task %s (%s)", key, task.task_id, task.status.value)
        return task

    def _create(self, key: str, request: ExpandRequest) -> Task:
        """Post the create (recorded first), waiting out 1303 and keeping within the budget."""
        estimate = self._reserve(key, request.n)
        try:
            self.ledger.intend(self.endpoint_key, request.resolved_external_id, key)
            delay = CONCURRENCY_BACKOFF[0]
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    task = self.client.create(request)
                    break
                except ConcurrencyLimitedError:
                    if time.monotonic() + delay > deadline:
                        raise
                    log.info("%s: the account is at its task limit (1303); retrying", key)
                    time.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, CONCURRENCY_BACKOFF[1])
        finally:
            with self.tally.lock:
                self._reserved -= estimate
        with self.tally.lock:
            self.tally.created += 1
        log.debug("%s: created task %s", key, task.task_id)
        return task

    def _reserve(self, key: str, n: int) -> float:
        """Hold back the units a new task of `n` images is likely to cost, or BudgetReached."""
        with self.tally.lock:
            done = self.tally.created + self.tally.reattached
            per_image = self.tally.units / done / n if done and self.tally.units else 1.0
            estimate = per_image * n
            if self.budget is not None and self.tally.units + self._reserved + estimate > (
                self.budget + 1e-9
            ):
                raise BudgetReached(
                    f"item {key!r}: not submitted: {self.tally.units:g} units spent and "
                    f"{self._reserved:g} reserved of the budget of {self.budget:g}"
                )
            self._reserved += estimate
            return estimate

    def _count_units(self, task: Task) -> None:
        with self.tally.lock:
            self.tally.units += task.units_value or 0.0

    def _wait(self, task: Task) -> Task:
        """The finished task: from a callback where one comes, from polling otherwise."""
        external_id = task.external_task_id or ""
        started = time.monotonic()
        deadline = started + self.timeout
        delays = self.polling.delays(started, fallback=self.receiver is not None)
        next_poll = started + next(delays)
        try:
            while not task.finished:
                now = time.monotonic()
                if now >= deadline:
                    raise WaitTimeout(task.task_id, self.timeout, task)
                if now < next_poll:
                    if self.receiver is None:
                        time.sleep(min(next_poll, deadline) - now)
                        continue
                    wait = min(next_poll, deadline) - now
                    delivered = self.receiver.wait(external_id, wait, after=task.status)
                    if delivered is None:
                        continue
                    if self.receiver.verifies_signatures or not delivered.finished:
                        task = delivered
                        continue
                    # An unsigned delivery could be forged: confirm an end with the API.
                try:
                    task = self.client.get(task.task_id)
                except KlingError as error:
                    if not error.retryable:
                        raise
                    log.warning("polling task %s: %s; polling on", task.task_id, error)
                next_poll = time.monotonic() + next(delays)
        finally:
            if self.receiver is not None:
                self.receiver.forget(external_id)
        if task.failed:
            raise TaskFailedError(task)
        self.polling.observe(_run_time(task) or time.monotonic() - started)
        return task

    def _download(self, task: Task, image: TaskImage) -> bytes:
        """A result image; if its URL has expired, once more with a fresh URL from the API."""
        try:
            return self.client.download(image.url)
        except DownloadError:
            fresh = self.client.get(task.task_id)
            urls = {i.index: i.url for i in fresh.images}
            if urls.get(image.index, image.url) == image.url:
                raise
            return self.client.download(urls[image.index])


def _run_time(task: Task) -> float | None:
    """How long the task ran by the server's own clock: our polling's lag left out, so that
    learning from it does not delay the next look further."""
    if task.created_at and task.updated_at and task.updated_at > task.created_at:
        return (task.updated_at - task.created_at) / 1000
    return None


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
