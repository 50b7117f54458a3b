"""The API's wire objects as dataclasses: a task, its status and its images."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kling_expand_plugin.kling.errors import ProtocolError


class TaskStatus(enum.Enum):
    """Where a task is in its life; SUCCEEDED and FAILED are final."""

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEEDED = "succeed"
    FAILED = "failed"

    @classmethod
    def parse(cls, text: str) -> TaskStatus:
        """The status named by `text`; accepts both "succeed" and "succeeded"."""
        value = text.strip().lower()
        if value == "succeeded":
            return cls.SUCCEEDED
        try:
            return cls(value)
        except ValueError:
            raise ProtocolError(f"unknown task_status {text!r}") from None

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

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TaskImage:
        url = obj.get("url")
        if not isinstance(url, str) or not url:
            raise ProtocolError("a result image has no url")
        watermark_url = obj.get("watermark_url") or None
        return cls(index=_optional_int(obj.get("index")) or 0, url=url, watermark_url=watermark_url)


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

    @classmethod
    def from_json(cls, obj: Any) -> Task:
        """A task from the API's JSON object; ProtocolError when it is not one."""
        if not isinstance(obj, Mapping):
            raise ProtocolError(f"expected a task object, got {type(obj).__name__}")
        task_id = obj.get("task_id")
        if not isinstance(task_id, str | int) or task_id == "":
            raise ProtocolError("task has no task_id")
        status = obj.get("task_status")
        if not isinstance(status, str):
            raise ProtocolError(f"task {task_id} has no task_status")
        info = _mapping(obj.get("task_info"))
        watermark = _mapping(obj.get("watermark_info"))
        result = _mapping(obj.get("task_result"))
        images = result.get("images") or []
        if not isinstance(images, list):
            raise ProtocolError(f"task {task_id}: task_result.images is not a list")
        units = obj.get("final_unit_deduction")
        enabled = watermark.get("enabled")
        return cls(
            task_id=str(task_id),
            status=TaskStatus.parse(status),
            status_msg=str(obj.get("task_status_msg") or ""),
            external_task_id=_optional_str(info.get("external_task_id")),
            units=None if units is None else str(units),
            watermark_enabled=None if enabled is None else bool(enabled),
            created_at=_optional_int(obj.get("created_at")),
            updated_at=_optional_int(obj.get("updated_at")),
            images=tuple(
                sorted((TaskImage.from_json(_mapping(i)) for i in images), key=lambda i: i.index)
            ),
        )

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


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _optional_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
