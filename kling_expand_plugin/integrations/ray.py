"""The outpaint stage on Ray Data: one account budget for the cluster, one shared ledger.

- `account_slots(total)` starts (or finds) the `SlotBroker` actor that lends the Kling
  account's `total` task slots to every worker of the cluster, `n` per task. Slots are lent as
  leases that the holder renews while its task runs; the slots of a worker that died (process,
  machine) come back when its lease runs out.
- `Outpaint` is a callable class for `Dataset.map_batches`: each Ray actor runs an
  `OutpaintStage` whose slots come from the broker (`ClusterSlots`) and whose ledger is shared
  (a postgresql:// URL), so that a batch retried on another worker reads back what was paid for.
- `ResultFolder` is a datasink (`Dataset.write_datasink`) writing each result as its `key`,
  `<stem>-<variant>.png`, into a folder.

This is the only module that imports Ray (`pip install "kling-expand-plugin[ray]"`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import ray
from PIL import Image
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from imgpipe import Item
from kling_expand_plugin.batch.budget import Budget, BudgetReached
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.outpaint.stage import OutpaintStage

log = logging.getLogger(__name__)

BROKER_NAME = "kling-expand-slots"
"""The default name of the slot broker actor (one per Kling account on the cluster)."""

RESULT_COLUMNS = ("path", "key", "variant", "units", "from_ledger", "external_task_ids", "error")
"""The columns `Outpaint` adds beside the image column."""

DEFAULT_LEASE_SECONDS = 60.0
"""How long a holder that stopped renewing keeps its slots; holders renew every third of it."""


@dataclass
class _Lease:
    n: int
    expires: float


class SlotBroker:
    """The account's slots for the whole cluster, lent in leases of `n` slots, first come first
    served; a lease not renewed within `lease_seconds` is taken back. With a `budget`, it also
    holds the account's one budget for every worker (see `Budget`: units reserved before a
    create, settled when the task's units are known).

    A plain class: `account_slots` runs it as an async Ray actor.
    """

    def __init__(
        self,
        total: int,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        budget: float | None = None,
    ) -> None:
        if total < 1 or lease_seconds <= 0:
            raise ValueError("a broker needs at least one slot and a positive lease")
        self.total = total
        self.lease_seconds = lease_seconds
        self.max_in_use = 0
        self.granted = 0
        self.reclaimed = 0
        self.budget = Budget(budget) if budget is not None else None
        self._leases: dict[str, _Lease] = {}
        self._released: collections.deque[str] = collections.deque(maxlen=100_000)
        self._queue: collections.deque[object] = collections.deque()
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> str:
        """Wait until `n` slots are free (after everyone who asked before), lend them; the
        lease's id."""
        if not 1 <= n <= self.total:
            raise ValueError(f"a task of {n} images cannot fit in {self.total} slots")
        ticket = object()
        async with self._changed:
            self._queue.append(ticket)
            try:
                while True:
                    self._reclaim_expired()
                    if self._queue[0] is ticket and self._in_use() + n <= self.total:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), self._until_next_expiry())
                lease = uuid.uuid4().hex
                self._leases[lease] = _Lease(n, time.monotonic() + self.lease_seconds)
                self.granted += 1
                self.max_in_use = max(self.max_in_use, self._in_use())
                return lease
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()

    async def renew(self, leases: dict[str, int]) -> None:
        """Extend these leases (id to slots held). A lease the broker no longer knows (it was
        taken back, or the broker restarted) is counted again: its task is still running. A
        lease already released is not (a renewal can cross its release on the way)."""
        expires = time.monotonic() + self.lease_seconds
        async with self._changed:
            for lease, n in leases.items():
                if lease not in self._released:
                    self._leases[lease] = _Lease(n, expires)
            self.max_in_use = max(self.max_in_use, self._in_use())

    async def release(self, lease: str) -> None:
        """Give a lease's slots back."""
        async with self._changed:
            self._leases.pop(lease, None)
            self._released.append(lease)
            self._changed.notify_all()

    async def stats(self) -> dict[str, Any]:
        """Slots in total, in use now and at most, leases granted and taken back, waiters."""
        async with self._changed:
            self._reclaim_expired()
            return {
                "total": self.total,
                "lease_seconds": self.lease_seconds,
                "in_use": self._in_use(),
                "max_in_use": self.max_in_use,
                "granted": self.granted,
                "reclaimed": self.reclaimed,
                "waiting": len(self._queue),
                "budget": self.budget.limit if self.budget else None,
                "units_spent": self.budget.spent if self.budget else 0.0,
                "units_reserved": self.budget.reserved if self.budget else 0.0,
            }

    async def reserve(self, key: str, n: int) -> float:
        """`Budget.reserve` on the cluster's budget (BudgetReached past it)."""
        assert self.budget is not None, "this broker holds no budget"
        return self.budget.reserve(key, n)

    async def settle(self, reservation: float, units: float, n: int) -> None:
        assert self.budget is not None
        self.budget.settle(reservation, units, n)

    async def release_units(self, reservation: float) -> None:
        assert self.budget is not None
        self.budget.release(reservation)

    def _in_use(self) -> int:
        return sum(lease.n for lease in self._leases.values())

    def _reclaim_expired(self) -> None:
        now = time.monotonic()
        for lease_id, lease in list(self._leases.items()):
            if lease.expires <= now:
                del self._leases[lease_id]
                self.reclaimed += 1
                log.warning(
                    "slot lease %s (%d slots) was not renewed; taken back", lease_id, lease.n
                )

    def _until_next_expiry(self) -> float | None:
        if not self._leases:
            return None
        return max(0.0, min(lease.expires for lease in self._leases.values()) - time.monotonic())


def account_slots(
    total: int,
    *,
    budget: float | None = None,
    name: str = BROKER_NAME,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    detached: bool = False,
) -> Any:
    """The handle of the cluster's slot broker for one account: started on first use (no CPU
    reserved, restarted if its node dies), found by `name` after that. It ends with the job
    that started it, unless `detached` (for several jobs sharing the account; `ray.kill` it).
    With `budget`, the broker holds one ceiling of units for every worker of the cluster
    (`Outpaint` uses it)."""
    broker: Any = (
        ray.remote(SlotBroker)
        .options(
            name=name,
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=-1,
            lifetime="detached" if detached else None,
        )
        .remote(total, lease_seconds, budget)
    )
    running = ray.get(broker.stats.remote())["total"]
    if running != total:
        raise ValueError(f"the slot broker {name!r} already runs with {running} slots, not {total}")
    return broker


class ClusterSlots(Slots):
    """Slots borrowed from a `SlotBroker`, renewed while held; for `OutpaintStage(slots=...)`.

    `in_use` and `max_in_use` count this process's holdings; the broker counts the cluster's.
    """

    def __init__(self, broker: Any, total: int, renew_every: float) -> None:
        super().__init__(total)
        self.broker = broker
        self._held: dict[str, int] = {}
        self._held_lock = threading.Lock()
        self._renew_every = renew_every
        threading.Thread(target=self._renew_forever, name="kling-slot-leases", daemon=True).start()

    @contextlib.contextmanager
    def hold(self, n: int, *, cancel: threading.Event | None = None) -> Iterator[None]:
        """Wait until the broker lends `n` slots and hold them for the block."""
        with super().hold(n, cancel=cancel):
            lease = ray.get(self.broker.acquire.remote(n))
            with self._held_lock:
                self._held[lease] = n
            try:
                yield
            finally:
                with self._held_lock:
                    del self._held[lease]
                ray.get(self.broker.release.remote(lease))

    def _renew_forever(self) -> None:
        while True:
            time.sleep(self._renew_every)
            with self._held_lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                ray.get(self.broker.renew.remote(held), timeout=self._renew_every)
            except Exception as error:  # the next round tries again; the lease has margin
                log.warning("renewing %d slot lease(s) failed: %s", len(held), error)


class ClusterBudget(Budget):
    """The broker's budget, as the task runner uses a `Budget`: one ceiling for the cluster."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def reserve(self, key: str, n: int) -> float:
        try:
            return float(ray.get(self.broker.reserve.remote(key, n)))
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, BudgetReached):
                raise error.cause from None
            raise

    def settle(self, reservation: float, units: float, n: int) -> None:
        ray.get(self.broker.settle.remote(reservation, units, n))

    def release(self, reservation: float) -> None:
        ray.get(self.broker.release_units.remote(reservation))


class Outpaint:
    """A callable class for `Dataset.map_batches`: the outpaint stage on each batch.

    `column` holds the images, as `ray.data.read_binary_files` (`"bytes"`: encoded files) or
    `ray.data.read_images` (`"image"`: arrays) give them; a `"path"` column, when there is one,
    names them. Each output row is one result: the image in the same column and the same form
    (PNG bytes, or an array), `path` (the source), `key` (`<stem>-<variant>.png`), `variant`,
    `units`, `from_ledger`, `external_task_ids` and `error` (empty unless the item failed; a
    failed item's row carries its input image unchanged, so every input is accounted for).

    `slots` is `account_slots(K)`; `ledger` a postgresql:// URL the workers share (a SQLite
    path works when every worker is on one machine); `options` are the stage's, with
    `concurrency` defaulting to the broker's total and `on_error` to "passthrough".
    """

    def __init__(self, *, slots: Any, ledger: str, column: str = "bytes", **options: Any) -> None:
        if options.get("endpoint") == "local":
            raise ValueError('endpoint "local" would start a server per worker; give a URL')
        broker = ray.get(slots.stats.remote())
        options.setdefault("concurrency", broker["total"])
        options.setdefault("on_error", "passthrough")
        options.setdefault("format", "png")  # the rows carry PNG bytes, whatever the input
        if broker["budget"] is not None:
            if options.get("budget") is not None:
                raise ValueError("the broker holds the budget: give it to account_slots only")
            options["budget"] = ClusterBudget(slots)
        cluster_slots = ClusterSlots(slots, options["concurrency"], broker["lease_seconds"] / 3)
        self.column = column
        self.stage = OutpaintStage(ledger=ledger, slots=cluster_slots, **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        images = list(batch[self.column])
        arrays = bool(images) and isinstance(images[0], np.ndarray)
        paths = [str(path) for path in batch["path"]] if "path" in batch else None
        inputs = []
        for index, image in enumerate(images):
            data = _png_of_array(image) if arrays else bytes(image)
            key = paths[index] if paths else hashlib.sha256(data).hexdigest()[:16] + ".png"
            inputs.append(Item(key, data))
        rows: dict[str, list[Any]] = {name: [] for name in (self.column, *RESULT_COLUMNS)}
        for result in self.stage(inputs):
            outpaint = result.metadata.get("outpaint", {})
            data = result.read_bytes()
            rows[self.column].append(_array_of(data) if arrays else data)
            rows["path"].append(outpaint.get("source_key", result.key))
            rows["key"].append(result.key)
            rows["variant"].append(outpaint.get("variant", 0))
            rows["units"].append(float(outpaint.get("units", 0.0)))
            rows["from_ledger"].append(bool(outpaint.get("from_ledger", False)))
            rows["external_task_ids"].append(list(outpaint.get("external_task_ids", [])))
            rows["error"].append(str(outpaint.get("error", "")))
        return rows


def _png_of_array(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _array_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


class ResultFolder(Datasink[int]):
    """Write each result row's image, from `column`, into `folder` as the row's `key`
    (`<stem>-<variant>.png`), atomically; rows with an `error` are not written.

    Two sources with one file name in different folders would write one file: keep names
    unique. Writes run on the driver's node unless `shared` says every node sees `folder`.
    """

    def __init__(self, folder: str | Path, *, column: str = "bytes", shared: bool = False) -> None:
        self.folder = Path(folder).resolve()  # here, on the driver: workers may run elsewhere
        self.column = column
        self.shared = shared

    @property
    def supports_distributed_writes(self) -> bool:
        return self.shared

    def on_write_start(self, schema: Any = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, blocks: Iterable[Block], ctx: Any) -> int:
        """Write the blocks' rows; how many files were written."""
        written = 0
        for block in blocks:
            rows: Iterable[dict[str, Any]] = BlockAccessor.for_block(block).iter_rows(
                public_row_format=True
            )
            for row in rows:
                if row["error"]:
                    continue
                image = row[self.column]
                data = _png_of_array(image) if isinstance(image, np.ndarray) else bytes(image)
                _write_atomically(self.folder, _file_name(str(row["key"])), data)
                written += 1
        return written


def _file_name(key: str) -> str:
    name = PurePosixPath(key).name
    if name in ("", ".", ".."):
        raise ValueError(f"the result key {key!r} is not a file name")
    return name


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
