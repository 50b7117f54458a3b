"""The API's task as values: a task, its status and its images (kling/wire.py reads them from
the API's JSON)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class TaskStatus(enum.Enum):
    """Where a task is in its life; SUCCEEDED and FAILED are final."""

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEEDED = "succeed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)

    @property
    def rank(self) -> int:
        """Order along the task's life, so that a late update never moves a task backwards."""
        return _RANKS[self]


_RANKS = {
    TaskStatus.SUBMITTED: 0,
    TaskStatus.PROCESSING: 1,
    TaskStatus.SUCCEEDED: 2,
    TaskStatus.FAILED: 2,
}


@dataclass(frozen=True)
class TaskImage:
    """One result image: its URL and, when watermarking was asked for, the watermarked copy's."""

    index: int
    url: str
    watermark_url: str | None = None


@dataclass(frozen=True)
class Task:
    """An expansion task as the API reports it."""

    task_id: str
    status: TaskStatus
    status_msg: str = ""
    external_task_id: str | None = None
    units: str | None = None
    """`final_unit_deduction` exactly as given (a string); see `units_value`."""
    watermark_enabled: bool | None = None
    created_at: int | None = None
    """Unix milliseconds."""
    updated_at: int | None = None
    """Unix milliseconds."""
    images: tuple[TaskImage, ...] = ()

    @property
    def finished(self) -> bool:
        """True once the task has succeeded or failed."""
        return self.status.finished

    @property
    def succeeded(self) -> bool:
        return self.status is TaskStatus.SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.status is TaskStatus.FAILED

    @property
    def units_value(self) -> float | None:
        """The units deducted as a number; None when not given or not a finite number."""
        if self.units is None:
            return None
        try:
            value = float(self.units)
        except ValueError:
            return None
        return value if math.isfinite(value) else None
