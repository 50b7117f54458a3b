"""Getting one paid piece of work done exactly once: claim, create (or re-attach), wait,
download, record.

The runner is where the stage's promises about money live:
- a create is posted only by the process that claimed the work in the ledger, and a claim taken
  over from a process that died is looked up by its external id first (the client also looks
  the id up before any re-post); identical work in this process runs once, the rest reads back;
- a task that succeeded is never created again, even when the server has lost it, and a task
  that failed is not retried, unless the user asked (`recreate_lost`, `retry_failed`);
- slots are held from create to end so the account is never over its limit; 1303 is waited out;
- the budget is a ceiling: units are reserved before a create and held until the task's final
  units are known;
- every result is on disk and in the ledger before it is handed back;
- `cancel()` stops new creates at once and ends the waits; running tasks stay recorded for the
  next run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from kling_expand_plugin.batch.budget import Budget, BudgetReached
from kling_expand_plugin.batch.ledger import INTENT, Claim, Entry, SqlLedger
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.batch.watch import Polling, watch
from kling_expand_plugin.kling.client import KlingClient
from kling_expand_plugin.kling.download import check_whole
from kling_expand_plugin.kling.errors import (
    Cancelled,
    ConcurrencyLimitedError,
    DownloadError,
    KlingError,
    NotFoundError,
    ProtocolError,
    ServerError,
    TaskFailedError,
    TransportError,
    WaitTimeout,
)
from kling_expand_plugin.kling.expansion import ExpandRequest
from kling_expand_plugin.kling.models import Task, TaskImage
from kling_expand_plugin.kling.retry import RetryBudget, RetryPolicy, retrying

if TYPE_CHECKING:
    from kling_expand_plugin.batch.receiver import CallbackReceiver

log = logging.getLogger(__name__)

CONCURRENCY_BACKOFF = (1.0, 30.0)
"""First and longest wait after a 1303 (too many tasks running on the account), in seconds:
the default of `TaskRunner(concurrency_backoff=...)`."""

CLAIM_WAIT = 0.5
"""Seconds between looks at a piece of work another process is creating."""


class PreviouslyFailed(RuntimeError):
    """The ledger records that this very task failed before; it is not paid for again."""


class ResultLost(RuntimeError):
    """A task was paid for, but the server no longer has it or its results."""


@dataclass(frozen=True)
class Outcome:
    """A finished task's result images, from the API or read back from the ledger.

    `units` is what the task cost; `new_units` what this call paid for it (0 when the task was
    created earlier, by another process, or for identical work of this run).
    """

    task_id: str
    external_id: str
    units: float | None
    images: list[Path | bytes]
    """Each result image: the file the ledger stored it in, or its bytes."""
    from_ledger: bool = False
    new_units: float = 0.0


@dataclass
class Tally:
    """What the runner did, for the stage's summary. `units` were paid by this run;
    `units_reused` belong to tasks paid earlier (re-attached, read back) or shared by identical
    inputs of this run."""

    created: int = 0
    reattached: int = 0
    from_ledger: int = 0
    units: float = 0.0
    units_reused: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class TaskRunner:
    """Runs expand tasks for the stage against one endpoint, with one ledger and one slot pool."""

    def __init__(
        self,
        client: KlingClient,
        ledger: SqlLedger,
        endpoint_key: str,
        *,
        slots: Slots,
        timeout: float,
        budget: Budget | None = None,
        receiver: CallbackReceiver | None = None,
        retry_failed: bool = False,
        recreate_lost: bool = False,
        concurrency_backoff: tuple[float, float] = CONCURRENCY_BACKOFF,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.endpoint_key = endpoint_key
        self.slots = slots
        self.timeout = timeout
        self.polling = Polling()
        self.budget = budget
        self.receiver = receiver
        self.retry_failed = retry_failed
        self.recreate_lost = recreate_lost
        self._concurrency_retry = RetryPolicy(
            attempts=sys.maxsize,
            base_delay=concurrency_backoff[0],
            max_delay=concurrency_backoff[1],
            deadline=timeout,
            jitter=0.2,
        )
        self.tally = Tally()
        self.cancelled = threading.Event()
        self._work_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._work_locks_lock = threading.Lock()

    def cancel(self) -> None:
        """No new creates from now on; waits end with Cancelled (tasks stay in the ledger)."""
        self.cancelled.set()

    def run(self, key: str, request: ExpandRequest, *, max_bytes: int | None = None) -> Outcome:
        """The results of `request`, paying for it at most once whatever happened before.

        `max_bytes` caps each result's download (it should follow the planned canvas).
        """
        work_id = request.resolved_external_id
        with self._work_locks_lock:
            lock = self._work_locks[work_id]
        with lock:  # identical work in this process: the first runs it, the others read back
            return self._run(key, dataclasses.replace(request, external_task_id=work_id), max_bytes)

    def _run(self, key: str, request: ExpandRequest, max_bytes: int | None) -> Outcome:
        work_id = request.resolved_external_id
        deadline = time.monotonic() + self.timeout
        while True:
            self.check_cancelled()
            entry = self.ledger.entry(self.endpoint_key, work_id)
            if entry is None or (entry.task_id is None and entry.status == INTENT):
                claim = self.ledger.claim(self.endpoint_key, work_id, key)
                if claim.mine:
                    return self._create(key, request, claim, max_bytes)
                if claim.entry.task_id is None and claim.entry.status == INTENT:
                    if time.monotonic() > deadline:
                        raise WaitTimeout(work_id, self.timeout)
                    log.debug("%s: another process is creating this task; waiting", key)
                    self._sleep(CLAIM_WAIT)
                continue
            if entry.complete:
                outcome = self._read_back(key, entry)
                if outcome is not None:
                    return outcome
                continue
            if entry.status == "failed":
                if not self.retry_failed:
                    raise PreviouslyFailed(
                        f"item {key!r}: task {entry.task_id} failed before: {entry.status_msg} "
                        "(not paid for again; set retry_failed, --retry-failed, to try again)"
                    )
                restarted = self.ledger.restart(self.endpoint_key, entry)
                if restarted is not None:
                    log.info("%s: task %s failed before; trying again", key, entry.task_id)
                    return self._create(key, request, Claim(True, False, restarted), max_bytes)
                continue
            assert entry.task_id is not None
            try:
                task = self.client.get(entry.task_id)
            except NotFoundError:
                restarted = self._lost(key, entry)
                if restarted is not None:
                    return self._create(key, request, Claim(True, False, restarted), max_bytes)
                continue
            self.tally.add(reattached=1)
            log.debug("%s: re-attached to task %s (%s)", key, task.task_id, task.status.value)
            # A task still running holds its slots while it runs.
            finished = contextlib.nullcontext()
            with finished if task.finished else self.slots.hold(request.n, cancel=self.cancelled):
                task = self._wait(task, work_id)
            return self._finish(key, work_id, task, request.n, max_bytes, new=False)

    def _create(
        self, key: str, request: ExpandRequest, claim: Claim, max_bytes: int | None
    ) -> Outcome:
        """Post the claimed work's create (unless an earlier owner's create is found), wait."""
        work_id = request.resolved_external_id
        sent_id = claim.entry.sent_external_id
        request = dataclasses.replace(request, external_task_id=sent_id)
        if self.receiver is not None:
            request = dataclasses.replace(request, callback_url=self.receiver.url_for(sent_id))
        reservation = None
        created = posted = False
        try:
            with self.slots.hold(request.n, cancel=self.cancelled):
                task = self._find(sent_id) if claim.in_doubt else None
                if task is None:
                    self.check_cancelled()
                    reservation = self.budget.reserve(key, request.n) if self.budget else None
                    posted = True
                    task = self._post(key, request, work_id)
                    created = True
                    self.tally.add(created=1)
                    log.debug("%s: created task %s", key, task.task_id)
                else:
                    self.tally.add(reattached=1)
                    log.info("%s: found task %s created by an earlier run", key, task.task_id)
                self.ledger.record(self.endpoint_key, work_id, task)
                task = self._wait(task, work_id)
        except BaseException as error:
            # A create that may have reached the API keeps its ledger row (looked up next time)
            # and its reservation: only a task that certainly does not exist frees them.
            maybe_created = created or (posted and not _never_created(error))
            with contextlib.suppress(Exception):  # the ledger may be closing (a cancelled run)
                self.ledger.release(
                    self.endpoint_key, work_id, posted=maybe_created or claim.in_doubt
                )
            if reservation is not None and not maybe_created:
                assert self.budget is not None
                self.budget.release(reservation)
            raise
        return self._finish(
            key, work_id, task, request.n, max_bytes, new=created, reservation=reservation
        )

    def _finish(
        self,
        key: str,
        work_id: str,
        task: Task,
        n: int,
        max_bytes: int | None,
        *,
        new: bool,
        reservation: float | None = None,
    ) -> Outcome:
        """Record the ended task, settle its units, download and store its results. `new`:
        this run created it (and `reservation` is what the budget held back for it)."""
        self.ledger.record(self.endpoint_key, work_id, task)
        units = task.units_value or 0.0
        if self.budget is not None and reservation is not None:
            self.budget.settle(reservation, units, n)
        self.tally.add(**{"units" if new else "units_reused": units})
        if task.failed:
            raise TaskFailedError(task)
        images = [
            self.ledger.store_result(
                self.endpoint_key,
                work_id,
                image.index,
                functools.partial(self._download, task, image, max_bytes),
            )  # streamed into the ledger's file (SQLite): never whole in memory
            for image in task.images
        ]
        return Outcome(
            task.task_id,
            task.external_task_id or work_id,
            task.units_value,
            images,
            new_units=units if new else 0.0,
        )

    def _read_back(self, key: str, entry: Entry) -> Outcome | None:
        """The stored results of a finished task; None (and forgotten) if one is damaged."""
        images = [
            result if isinstance(result, Path) else result.read_bytes() for result in entry.results
        ]
        if not all(_intact(image) for image in images):
            log.warning(
                "%s: a stored result of task %s is damaged; fetching it again", key, entry.task_id
            )
            self.ledger.forget_result(self.endpoint_key, entry.external_id)
            return None
        units = float(entry.units) if entry.units else None
        self.tally.add(from_ledger=1, units_reused=units or 0.0)
        log.debug("%s: results of task %s read back from the ledger", key, entry.task_id)
        assert entry.task_id is not None
        return Outcome(entry.task_id, entry.sent_external_id, units, images, from_ledger=True)

    def _lost(self, key: str, entry: Entry) -> Entry | None:
        """The server no longer has a task we recorded: a new one only when the user asked."""
        if not self.recreate_lost:
            raise ResultLost(
                f"item {key!r}: task {entry.task_id} ({entry.status}) was paid for, but the "
                "server no longer has it (results are deleted after 30 days); not paid for "
                "again: set recreate_lost (--recreate-lost) to create a new task"
            )
        log.warning("%s: task %s is gone from the server; creating it again", key, entry.task_id)
        return self.ledger.restart(self.endpoint_key, entry)

    def _find(self, external_id: str) -> Task | None:
        try:
            return self.client.get_by_external_id(external_id)
        except NotFoundError:
            return None

    def _post(self, key: str, request: ExpandRequest, work_id: str) -> Task:
        """The create, with 1303 (the account at its task limit) waited out, the claim
        renewed meanwhile."""

        def delay_for(error: Exception, budget: RetryBudget) -> float | None:
            if not isinstance(error, ConcurrencyLimitedError):
                return None
            self.ledger.renew(self.endpoint_key, work_id)
            return budget.next_delay()

        return retrying(
            lambda: self.client.create(request),
            self._concurrency_retry,
            delay_for,
            what=f"{key}: the account is at its task limit (1303)",
            sleep=self._sleep,
            level=logging.INFO,  # expected on a shared account, and waited out
        )

    def _wait(self, task: Task, work_id: str) -> Task:
        """The ended task (failed included): from a callback where one comes, else polling."""
        external_id = task.external_task_id or work_id
        return watch(
            self.client,
            task,
            external_id,
            timeout=self.timeout,
            polling=self.polling,
            receiver=self.receiver,
            pause=self._sleep,
        )

    def _download(
        self, task: Task, image: TaskImage, max_bytes: int | None, sink: BinaryIO
    ) -> None:
        """A result image, into `sink`; if its URL has expired, once more with a fresh URL
        from the API."""
        try:
            self.client.download_into(image.url, sink, max_bytes=max_bytes)
        except DownloadError:
            fresh = self.client.get(task.task_id)
            urls = {i.index: i.url for i in fresh.images}
            if urls.get(image.index, image.url) == image.url:
                raise
            self.client.download_into(urls[image.index], sink, max_bytes=max_bytes)

    def _sleep(self, seconds: float) -> None:
        if self.cancelled.wait(max(0.0, seconds)):
            raise Cancelled("stopped: no new tasks; running tasks are kept for the next run")

    def check_cancelled(self) -> None:
        """Raise Cancelled once `cancel()` was called."""
        self._sleep(0.0)


def _never_created(error: BaseException) -> bool:
    """Whether a create that ended in `error` certainly made no task (its reservation is free)."""
    if isinstance(error, BudgetReached | Cancelled):
        return True
    if isinstance(error, TransportError):
        return not error.maybe_sent
    return isinstance(error, KlingError) and not isinstance(error, ProtocolError | ServerError)


def _intact(stored: Path | bytes) -> bool:
    """Whether a stored image is whole (a crash or a full disk can leave it cut)."""
    try:
        check_whole(stored if isinstance(stored, Path) else io.BytesIO(stored))
    except Exception:
        return False
    return True
