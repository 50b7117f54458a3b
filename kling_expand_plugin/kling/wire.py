"""Reading the API's task objects (docs/kling-api.md) into kling/models.py's values; anything
that is not one is a ProtocolError."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kling_expand_plugin.kling.errors import ProtocolError
from kling_expand_plugin.kling.models import Task, TaskImage, TaskStatus


def tasks_in(data: Any) -> list[Task]:
    """The tasks in an envelope's `data`: an object, a list of them, or nothing."""
    if data is None:
        return []
    if isinstance(data, dict):
        return [task_from_json(data)]
    if isinstance(data, list):
        return [task_from_json(item) for item in data]
    raise ProtocolError(f"data is a {type(data).__name__}, not a task or a list of tasks")


def task_from_json(obj: Any) -> Task:
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
    return Task(
        task_id=str(task_id),
        status=status_from_json(status),
        status_msg=str(obj.get("task_status_msg") or ""),
        external_task_id=_optional_str(info.get("external_task_id")),
        units=None if units is None else str(units),
        watermark_enabled=None if enabled is None else bool(enabled),
        created_at=_optional_int(obj.get("created_at")),
        updated_at=_optional_int(obj.get("updated_at")),
        images=tuple(
            sorted((_image_from_json(_mapping(i)) for i in images), key=lambda i: i.index)
        ),
    )


def status_from_json(text: str) -> TaskStatus:
    """The status named by `text`; accepts both "succeed" and "succeeded"."""
    value = text.strip().lower()
    if value == "succeeded":
        return TaskStatus.SUCCEEDED
    try:
        return TaskStatus(value)
    except ValueError:
        raise ProtocolError(f"unknown task_status {text!r}") from None


def _image_from_json(obj: Mapping[str, Any]) -> TaskImage:
    url = obj.get("url")
    if not isinstance(url, str) or not url:
        raise ProtocolError("a result image has no url")
    watermark_url = obj.get("watermark_url") or None
    return TaskImage(
        index=_optional_int(obj.get("index")) or 0, url=url, watermark_url=watermark_url
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _optional_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
