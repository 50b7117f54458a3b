"""The task store: creating tasks, moving them through their statuses, holding their results.

A task is `submitted` at create, `processing` halfway through its latency, and `succeed` (or
`failed`) once its latency has passed and its images are rendered. It holds `n` account slots
from create until it ends. Result images are PNG files in the store's folder (memory stays flat
however many results there are) until `result_ttl` seconds after the task ends; then the files
are deleted and their URLs answer 404.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, ImageDraw

from kling_expand_plugin.imaging.fill import fill
from kling_expand_plugin.imaging.geometry import canvas_for
from kling_expand_plugin.localserver.callbacks import CallbackSender
from kling_expand_plugin.localserver.errors import ApiError, invalid_parameter
from kling_expand_plugin.localserver.faults import Faults
from kling_expand_plugin.localserver.scheduler import Scheduler
from kling_expand_plugin.localserver.validation import CreateRequest

log = logging.getLogger(__name__)

Latency = float | Callable[[random.Random], float]
"""Seconds from submitted to the end: fixed, or drawn per task from a seeded stream."""

FINAL_STATUSES = ("succeed", "failed")
STATUSES = ("submitted", "processing", *FINAL_STATUSES)

FAILURE_MESSAGES = (
    "Image pixel is invalid",
    "Failure to pass the risk control system",
    "The content of the image does not comply with the platform's content policy",
)
"""task_status_msg of a task failed by the `task-failed` fault."""

RENDER_FAILURE_MESSAGE = "Internal error while generating the image"


@dataclass
class Task:
    """One expand task and everything the server knows about it."""

    task_id: str
    order: int
    external_task_id: str
    n: int
    watermark: bool
    callback_url: str | None
    base_url: str
    created_at: int
    updated_at: int
    status: str = "submitted"
    status_msg: str = ""
    failure: str | None = None
    rendered: bool = False
    due: bool = False
    expired: bool = False
    images: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The task as the API shows it."""
        images = []
        if self.status == "succeed":
            for index in range(self.n):
                image: dict[str, Any] = {"index": index, "url": self.result_url(f"{index}.png")}
                if self.watermark:
                    image["watermark_url"] = self.result_url(f"{index}_wm.png")
                images.append(image)
        return {
            "task_id": self.task_id,
            "task_status": self.status,
            "task_status_msg": self.status_msg,
            "task_info": {"external_task_id": self.external_task_id},
            "final_unit_deduction": str(self.n) if self.status == "succeed" else "0",
            "watermark_info": {"enabled": self.watermark},
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "task_result": {"images": images},
        }

    def result_url(self, name: str) -> str:
        return f"{self.base_url}/local/results/{self.task_id}/{name}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _image_seed(seed: int, task_id: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{task_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _save_png(image: Image.Image, path: Path) -> Path:
    """Write `image` to `path` atomically (a reader never sees half a file)."""
    partial = path.with_name(path.name + ".part")
    image.save(partial, format="PNG", compress_level=1)
    os.replace(partial, path)
    return path


def watermarked(image: Image.Image) -> Image.Image:
    """A copy of `image` with a visible "KLING LOCAL" mark in the lower right corner."""
    marked = image.convert("RGBA")
    overlay = Image.new("RGBA", marked.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    size = max(12, marked.width // 25)
    x, y = marked.width - size * 8, marked.height - size * 2
    draw.rectangle((x - size // 2, y - size // 4, marked.width, marked.height), fill=(0, 0, 0, 96))
    draw.text((x, y), "KLING LOCAL", fill=(255, 255, 255, 200), font_size=size)
    return Image.alpha_composite(marked, overlay).convert(image.mode)


class TaskStore:
    """All tasks of the one local account, their slots, results and callbacks."""

    def __init__(
        self,
        *,
        concurrency: int,
        latency: Latency,
        seed: int,
        fill_method: str,
        result_ttl: float,
        faults: Faults,
        callbacks: CallbackSender,
        scheduler: Scheduler,
        accept_reused_ids: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1 slot")
        self._concurrency = concurrency
        self._latency = latency
        self._seed = seed
        self._fill_method = fill_method
        self._result_ttl = result_ttl
        self._faults = faults
        self._callbacks = callbacks
        self._scheduler = scheduler
        self._accept_reused_ids = accept_reused_ids
        self._random = random.Random(f"{seed}:tasks")
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kling-local-fill")
        self._lock = threading.RLock()
        self._tasks: dict[str, Task] = {}
        self._by_external: dict[str, Task] = {}
        self._attempts_by_external: Counter[str] = Counter()
        self._creates_by_external: Counter[str] = Counter()
        self._slots_in_use = 0
        self._max_slots_in_use = 0
        self._folder: Path | None = None  # made at the first render, deleted by stop()
        self._stopped = False

    @property
    def folder(self) -> Path | None:
        """The temporary folder of result files (made at the first render; gone after stop)."""
        with self._lock:
            return self._folder

    def stop(self) -> None:
        """Cancel renders not yet started and delete every result file.

        A render in progress finishes on its own; its files are not kept.
        """
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._stopped = True
            folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def create(self, request: CreateRequest, base_url: str) -> dict[str, Any]:
        """A new submitted task holding `n` slots, as JSON; ApiError 1201 (reused id) or 1303."""
        with self._lock:
            external = request.external_task_id
            if external:
                self._attempts_by_external[external] += 1
                if external in self._by_external and not self._accept_reused_ids:
                    raise invalid_parameter(
                        f"external_task_id {external!r} is already used by another task"
                    )
            if self._slots_in_use + request.n > self._concurrency:
                raise ApiError(
                    1303,
                    429,
                    f"too many tasks running at once: this task needs {request.n} slots, "
                    f"{self._slots_in_use} of {self._concurrency} are in use",
                )
            latency = self._latency(self._random) if callable(self._latency) else self._latency
            self._slots_in_use += request.n
            self._max_slots_in_use = max(self._max_slots_in_use, self._slots_in_use)
            now = _now_ms()
            task = Task(
                task_id=str(self._random.randrange(10**17, 10**18)),
                order=len(self._tasks),
                external_task_id=external,
                n=request.n,
                watermark=request.watermark,
                callback_url=request.callback_url,
                base_url=base_url,
                created_at=now,
                updated_at=now,
            )
            task.failure = self._faults.choose("task-failed", FAILURE_MESSAGES)
            self._tasks[task.task_id] = task
            if external:
                self._by_external[external] = task  # a reused id names its newest task
                self._creates_by_external[external] += 1
            self._notify(task)
            created = task.to_json()
        start = time.monotonic()
        self._scheduler.at(start + latency / 2, lambda: self._start_processing(task))
        self._scheduler.at(start + latency, lambda: self._mark_due(task))
        if task.failure is None:
            self._pool.submit(self._render, task, request)
        else:
            self._mark_rendered(task, {})
        return created

    def find(self, task_or_external_id: str) -> Task | None:
        """The task with this task_id, or else with this external_task_id."""
        with self._lock:
            return self._tasks.get(task_or_external_id) or self._by_external.get(
                task_or_external_id
            )

    def find_external(self, external_task_id: str) -> Task | None:
        with self._lock:
            return self._by_external.get(external_task_id)

    def page(self, page_num: int, page_size: int) -> list[Task]:
        """Page `page_num` (from 1) of all tasks, newest first."""
        with self._lock:
            newest_first = sorted(self._tasks.values(), key=lambda task: -task.order)
        start = (page_num - 1) * page_size
        return newest_first[start : start + page_size]

    def snapshot(self, task: Task) -> dict[str, Any]:
        """The task's JSON, taken under the lock so it is consistent."""
        with self._lock:
            return task.to_json()

    def open_result(self, task_id: str, name: str) -> BinaryIO | None:
        """A result PNG opened for reading, or None when there is none or it has expired.

        The open file stays readable even if the result expires meanwhile.
        """
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.expired or task.status != "succeed":
                return None
            path = task.images.get(name)
        try:
            return None if path is None else path.open("rb")
        except FileNotFoundError:  # the server is stopping and its folder is gone
            return None

    def result_bytes(self) -> int:
        """Bytes of result files on disk now."""
        with self._lock:
            paths = [path for task in self._tasks.values() for path in task.images.values()]
        return sum(path.stat().st_size for path in paths if path.exists())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_status = Counter(task.status for task in self._tasks.values())
            stats = {
                "creates_by_external_id": dict(sorted(self._creates_by_external.items())),
                "create_attempts_by_external_id": dict(sorted(self._attempts_by_external.items())),
                "slots_in_use": self._slots_in_use,
                "max_slots_in_use": self._max_slots_in_use,
                "concurrency": self._concurrency,
                "tasks": {status: by_status.get(status, 0) for status in STATUSES},
                "units_charged": sum(
                    task.n for task in self._tasks.values() if task.status == "succeed"
                ),
            }
        return stats | {"result_bytes_on_disk": self.result_bytes()}  # files read unlocked

    def _render(self, task: Task, request: CreateRequest) -> None:
        canvas = canvas_for(request.width, request.height, request.ratios)
        images: dict[str, Path] = {}
        folder: Path | None = None
        failed = False
        try:
            folder = self._task_folder(task)
            image = request.image()
            for index in range(task.n):
                seed = _image_seed(self._seed, task.task_id, index)
                result = fill(image, canvas, seed=seed, method=self._fill_method)
                images[f"{index}.png"] = _save_png(result, folder / f"{index}.png")
                if task.watermark:
                    name = f"{index}_wm.png"
                    images[name] = _save_png(watermarked(result), folder / name)
        except Exception:
            failed = True
            if not self._stopped:
                log.exception("rendering task %s failed", task.task_id)
        if failed or self._stopped:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            if self._stopped:
                return
            with self._lock:
                task.failure = RENDER_FAILURE_MESSAGE
            images = {}
        self._mark_rendered(task, images)

    def _task_folder(self, task: Task) -> Path:
        """The task's own new folder for its results (OSError once the store is stopped)."""
        with self._lock:
            if self._stopped:
                raise FileNotFoundError("the task store is stopped")
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="kling-local-results-"))
            folder = self._folder / task.task_id
        folder.mkdir()
        return folder

    def _start_processing(self, task: Task) -> None:
        with self._lock:
            if task.status == "submitted":
                self._set_status(task, "processing")

    def _mark_due(self, task: Task) -> None:
        with self._lock:
            task.due = True
            self._finish_if_ready(task)

    def _mark_rendered(self, task: Task, images: dict[str, Path]) -> None:
        with self._lock:
            task.images = images
            task.rendered = True
            self._finish_if_ready(task)

    def _finish_if_ready(self, task: Task) -> None:
        if not (task.due and task.rendered) or task.status in FINAL_STATUSES:
            return
        if task.status == "submitted":
            self._set_status(task, "processing")
        if task.failure is None:
            self._set_status(task, "succeed")
            self._scheduler.at(time.monotonic() + self._result_ttl, lambda: self._expire(task))
        else:
            task.status_msg = task.failure
            self._delete_results(task)
            self._set_status(task, "failed")
        self._slots_in_use -= task.n

    def _expire(self, task: Task) -> None:
        with self._lock:
            task.expired = True
            folder = self._results_folder(task)
            task.images = {}
        if folder is not None:  # no request can reach these files now: deleted unlocked
            shutil.rmtree(folder, ignore_errors=True)

    def _delete_results(self, task: Task) -> None:
        folder = self._results_folder(task)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        task.images = {}

    def _results_folder(self, task: Task) -> Path | None:
        """The folder of a task's result files, while it has some and the server runs."""
        if not task.images or self._stopped:
            return None
        return next(iter(task.images.values())).parent

    def _set_status(self, task: Task, status: str) -> None:
        task.status = status
        task.updated_at = max(_now_ms(), task.updated_at)
        self._notify(task)

    def _notify(self, task: Task) -> None:
        if task.callback_url is not None:
            self._callbacks.enqueue(
                task.callback_url, task.to_json(), final=task.status in FINAL_STATUSES
            )
