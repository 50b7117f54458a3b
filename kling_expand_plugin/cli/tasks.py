"""`kling-expand tasks list|get|wait|download`: an account's tasks."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kling_expand_plugin.cli.common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    LOCAL_SERVE_URL,
    UsageError,
    client_for,
    command,
    print_json,
    reaching,
)
from kling_expand_plugin.kling.client import KlingClient
from kling_expand_plugin.kling.errors import (
    InvalidRequestError,
    NotFoundError,
    TaskFailedError,
    WaitTimeout,
)
from kling_expand_plugin.kling.models import Task
from kling_expand_plugin.kling.polling import PollSchedule
from kling_expand_plugin.kling.transport import DEFAULT_BASE_URL


def add_tasks(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    tasks = command(
        commands,
        common,
        "tasks",
        lambda args: EXIT_USAGE,
        help="the account's tasks: list, get, wait, download",
        description=(
            "Look at the account's expansion tasks on a Kling-compatible server (the real one "
            "by default; credentials from KLING_ACCESS_KEY + KLING_SECRET_KEY or KLING_API_KEY)."
            " ID is a task_id or an external_task_id. Nothing here creates a task."
        ),
        epilog=(
            "examples:\n"
            "  kling-expand tasks list --limit 10\n"
            "  kling-expand tasks get 8f3c...\n"
            "  kling-expand tasks wait 8f3c... && kling-expand tasks download 8f3c... --out got/\n"
            "  kling-expand tasks list --endpoint http://127.0.0.1:8765 --json   (a `serve`)\n\n"
            + EXIT_CODES
        ),
    )
    actions = tasks.add_subparsers(dest="action", required=True, metavar="ACTION")
    task_common = argparse.ArgumentParser(add_help=False, parents=[common])
    task_common.add_argument(
        "--endpoint",
        default="local",
        help=f'"local" (default: a `kling-expand serve` at {LOCAL_SERVE_URL}) or a server URL '
        f"such as {DEFAULT_BASE_URL}",
    )
    task_common.add_argument("--json", action="store_true", help="print JSON")
    listing = command(
        actions,
        task_common,
        "list",
        tasks_list_command,
        help="the newest tasks",
        description="List the account's tasks, newest first.",
    )
    listing.add_argument("--limit", type=int, default=30, help="at most this many (default 30)")
    for name, handler, what in (
        ("get", tasks_get_command, "one task's status, units and result URLs"),
        ("wait", tasks_wait_command, "wait until the task ends; exit 1 if it failed"),
        ("download", tasks_download_command, "write the task's result images to --out"),
    ):
        action = command(actions, task_common, name, handler, help=what, description=what + ".")
        action.add_argument("id", metavar="ID", help="a task_id, or an external_task_id")
        if name == "wait":
            action.add_argument("--timeout", type=float, default=3600.0, help="seconds (1 h)")
            action.add_argument("--interval", type=float, default=2.0, help="first poll delay")
        if name == "download":
            action.add_argument("--out", "-o", required=True, metavar="DIR", help="where to write")


def tasks_list_command(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with client_for(args.endpoint) as client, reaching(args.endpoint):
        tasks = []
        for task in client.list(page_size=min(args.limit, 500)):
            tasks.append(task)
            if len(tasks) == args.limit:
                break
    if args.json:
        print_json([_task_json(task) for task in tasks])
    else:
        for task in tasks:
            print(_task_line(task))
        if not tasks:
            print("no tasks")
    return EXIT_OK


def tasks_get_command(args: argparse.Namespace) -> int:
    return _show_found(args, lambda client, task: task)


def tasks_wait_command(args: argparse.Namespace) -> int:
    schedule = PollSchedule(first=args.interval, longest=max(args.interval, 30.0))
    return _show_found(
        args, lambda client, task: client.wait(task, timeout=args.timeout, schedule=schedule)
    )


def _show_found(args: argparse.Namespace, then: Callable[[KlingClient, Task], Task]) -> int:
    """Find the task `args.id`, show what `then(client, task)` makes of it; 1 when there is no
    such task, it failed, or the wait timed out."""
    with client_for(args.endpoint) as client, reaching(args.endpoint):
        task = _find_task(client, args.id)
        if task is None:
            print(f"kling-expand: no task {args.id}", file=sys.stderr)
            return EXIT_FAILED
        try:
            task = then(client, task)
        except TaskFailedError as exc:
            _show_task(exc.task, args.json)
            return EXIT_FAILED
        except WaitTimeout as exc:
            print(f"kling-expand: {exc}", file=sys.stderr)
            return EXIT_FAILED
    _show_task(task, args.json)
    return EXIT_OK


def tasks_download_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    with client_for(args.endpoint) as client, reaching(args.endpoint):
        task = _find_task(client, args.id)
        if task is None or not task.succeeded:
            state = "no such task" if task is None else f"it is {task.status.value}"
            print(f"kling-expand: cannot download {args.id}: {state}", file=sys.stderr)
            return EXIT_FAILED
        out.mkdir(parents=True, exist_ok=True)
        paths = [
            client.download(image.url, dest=out / f"{task.task_id}-{image.index}.png")
            for image in task.images
        ]
    if args.json:
        print_json({"task": _task_json(task), "paths": [str(path) for path in paths]})
    else:
        for path in paths:
            print(path)
    return EXIT_OK


def _find_task(client: KlingClient, task_id: str) -> Task | None:
    """The task with this task_id, or else this external_task_id; None if neither."""
    try:
        return client.get(task_id)
    except (NotFoundError, InvalidRequestError):
        pass
    try:
        return client.get_by_external_id(task_id)
    except NotFoundError:
        return None


def _show_task(task: Task, as_json: bool) -> None:
    if as_json:
        print_json(_task_json(task))
        return
    print(_task_line(task))
    if task.status_msg:
        print(f"  message: {task.status_msg}")
    for image in task.images:
        print(f"  image {image.index}: {image.url}")


def _task_line(task: Task) -> str:
    created = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task.created_at / 1000))
        if task.created_at
        else "-"
    )
    return (
        f"{task.task_id}  {task.status.value:<10}  {created}  units {task.units or '-'}  "
        f"images {len(task.images)}  external {task.external_task_id or '-'}"
    )


def _task_json(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "status": task.status.value,
        "status_msg": task.status_msg,
        "external_task_id": task.external_task_id,
        "units": task.units,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "images": [
            {"index": image.index, "url": image.url, "watermark_url": image.watermark_url}
            for image in task.images
        ],
    }
