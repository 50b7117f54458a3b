"""`kling-expand plan` (a dry run) and `kling-expand ratios`."""

from __future__ import annotations

import argparse
import math
from typing import Any

from imgpipe import Item
from kling_expand_plugin.cli.common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_OK,
    TYPICAL_TASK_SECONDS,
    UsageError,
    command,
    count,
    input_items,
    log,
    print_json,
)
from kling_expand_plugin.cli.stage_flags import add_stage_flags, from_text, stage_options
from kling_expand_plugin.imaging.geometry import canvas_for
from kling_expand_plugin.imaging.output import estimated_bytes, megabytes
from kling_expand_plugin.imaging.plan import largest_size, ratios_for_aspect
from kling_expand_plugin.imaging.prepare import prepare
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.imaging.stitch import canvas_at_original, content_of
from kling_expand_plugin.imaging.target import MAX_AREA, parse_aspect
from kling_expand_plugin.outpaint.options import area_text
from kling_expand_plugin.outpaint.report import format_ratios
from kling_expand_plugin.outpaint.stage import OutpaintStage


def add_plan(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    plan = command(
        commands,
        common,
        "plan",
        plan_command,
        usage="%(prog)s INPUT... (--aspect R [--area A] | --size WxH | --ratios U,D,L,R) [options]",
        help="dry run: what expand would do with each input, without creating a task",
        description=(
            "For each input: how it would be fitted to the API's limits, the ratios of each "
            "call, the canvas at the original's resolution and the original's place in it, "
            "the slots a task holds and an estimate of the units. Nothing is sent anywhere."
        ),
        epilog=(
            "examples:\n"
            "  kling-expand plan photos/ --aspect 16:9 --area 2 --n 2\n"
            "  kling-expand plan wide.png --aspect 9:16 --max-passes 3 --json\n\n" + EXIT_CODES
        ),
    )
    plan.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, globs, URLs")
    add_stage_flags(plan, ("target", "format"))
    plan.add_argument(
        "--concurrency", type=int, help="account task slots, for the time estimate (default 4)"
    )
    plan.add_argument(
        "--task-seconds",
        type=float,
        default=TYPICAL_TASK_SECONDS,
        help=f"a task's typical time, for the time estimate (default {TYPICAL_TASK_SECONDS:g})",
    )
    plan.add_argument(
        "--json", action="store_true", help='print {"inputs": [one per input], "total": {...}}'
    )


def plan_command(args: argparse.Namespace) -> int:
    """Print what `expand` would do with each input."""
    stage = OutpaintStage(**stage_options(args, ("target", "format")), endpoint="local")
    plans = []
    for item in input_items(args.inputs):
        try:
            plans.append(_plan_of(item, stage))
        except FitError as exc:
            plans.append(_refused(item.key, exc.problem, exc.rule))
        except Exception as exc:  # a bug, not the input's fault: still one line, no traceback
            log.debug("planning %s", item.key, exc_info=True)
            problem = f"could not be planned ({type(exc).__name__})"
            plans.append(_refused(item.key, problem, "none: a bug in kling-expand; -vv shows it"))
    total = _plan_total(plans, slots=args.concurrency or stage.concurrency, n=stage.n,
                        task_seconds=args.task_seconds)  # fmt: skip
    if args.json:
        print_json({"inputs": plans, "total": total})
    else:
        for plan in plans:
            print("\n".join(_plan_lines(plan)))
        print(_total_line(total))
    return EXIT_FAILED if any("error" in plan for plan in plans) else EXIT_OK


def _plan_total(
    plans: list[dict[str, Any]], *, slots: int, n: int, task_seconds: float
) -> dict[str, Any]:
    """The batch: inputs planned and refused, tasks, units, time at `slots`, disk."""
    planned = [plan for plan in plans if "error" not in plan]
    tasks = sum(plan["tasks"] for plan in planned)
    at_once = max(1, slots // max(n, 1))  # a task holds n slots while it runs
    return {
        "planned": len(planned),
        "refused": len(plans) - len(planned),
        "tasks": tasks,
        "estimated_units": sum(plan["estimated_units"] for plan in planned),
        "slots": slots,
        "task_seconds": task_seconds,
        "estimated_seconds": math.ceil(tasks / at_once) * task_seconds,
        "estimated_bytes": sum(plan["estimated_bytes"] for plan in planned),
    }


def _total_line(total: dict[str, Any]) -> str:
    seconds = total["estimated_seconds"]
    time_taken = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return (
        f"total: {count(total['planned'], 'input')} planned, {total['refused']} refused; "
        f"{count(total['tasks'], 'task')}, about {count(total['estimated_units'], 'unit')}; "
        f"about {time_taken} at {count(total['slots'], 'slot')} "
        f"({total['task_seconds']:g} s a task); disk about "
        f"{megabytes(total['estimated_bytes'])} (estimates)"
    )


def _plan_of(item: Item, stage: OutpaintStage) -> dict[str, Any]:
    decoded, upload, plan = prepare(item, stage.target, stage.fit_options)
    content = content_of(decoded.original, plan, upload.scale)
    canvas = canvas_at_original(plan.canvas, upload.scale, content.size)
    passes = len(plan.passes)
    return {
        "key": item.key,
        "original": list(decoded.original.size),
        "upload": {
            "width": upload.width,
            "height": upload.height,
            "format": upload.format,
            "scale": upload.scale,
            "changes": list(upload.changes) or ["none: the file is sent as it is"],
        },
        "passes": [ratios.as_dict() for ratios in plan.passes],
        "canvas": [canvas.width, canvas.height],
        "box": list(canvas.box.as_tuple()),
        "resized_to": list(plan.output_size) if plan.output_size else None,
        "tasks": 1 + stage.n * (passes - 1) if passes else 0,
        "slots": stage.n if passes else 0,
        "estimated_units": stage.n * passes,
        "format": stage.output.pillow_format(decoded.format).lower(),
        "estimated_bytes": estimated_bytes(
            canvas.width * canvas.height,
            stage.n if passes else 1,
            stage.output.pillow_format(decoded.format),
        ),
    }


def _refused(key: str, problem: str, rule: str) -> dict[str, Any]:
    """An input `plan` cannot use: the whole error, and its parts for scripts."""
    return {
        "key": key,
        "error": f"item {key!r}: {problem} (rule: {rule})",
        "problem": problem,
        "rule": rule,
    }


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    if "error" in plan:
        return [f"{plan['key']}: cannot be expanded: {plan['problem']} (rule: {plan['rule']})"]
    upload = plan["upload"]
    lines = [
        f"{plan['key']}: {plan['original'][0]} x {plan['original'][1]}",
        f"  upload:  {upload['width']} x {upload['height']} {upload['format']}, "
        f"scale {upload['scale']:g}; {'; '.join(upload['changes'])}",
    ]
    disk = (
        f"  disk:    about {megabytes(plan['estimated_bytes'])} as {plan['format'].upper()} "
        "(an estimate)"
    )
    if not plan["passes"]:
        return [*lines, "  already the target shape: no call, copied", disk]
    for number, ratios in enumerate(plan["passes"], start=1):
        lines.append(f"  call {number}/{len(plan['passes'])}: {format_ratios(ratios)}")
    left, top, right, bottom = plan["box"]
    resized = plan["resized_to"]
    lines += [
        f"  canvas:  {plan['canvas'][0]} x {plan['canvas'][1]}, the original at "
        f"({left}, {top})-({right}, {bottom})"
        + (f", then resized to {resized[0]} x {resized[1]}" if resized else ""),
        f"  cost:    {count(plan['tasks'], 'task')}, {count(plan['slots'], 'slot')} each while "
        f"running, about {count(plan['estimated_units'], 'unit')} (an estimate: the API reports "
        "the real figure)",
        disk,
    ]
    return lines


def add_ratios(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    ratios = command(
        commands,
        common,
        "ratios",
        ratios_command,
        help="the four ratios for an aspect ratio and an area (the API's worked example)",
        description=(
            "Print up,down,left,right for a W x H original, centred on a canvas of --aspect "
            "with --area times the original's area, rounded to the API's 4 places."
        ),
        epilog="example:\n  kling-expand ratios 100 100 --area 3 --aspect 16:9\n"
        "  0.1495,0.1495,0.6547,0.6547\n\n" + EXIT_CODES,
    )
    ratios.add_argument("width", type=int, help="the original's width in pixels")
    ratios.add_argument("height", type=int, help="the original's height in pixels")
    ratios.add_argument(
        "--aspect", required=True, help='target aspect ratio: "16:9", "4/3", "16x9" or 1.78'
    )
    ratios.add_argument(
        "--area",
        type=from_text(area_text),
        required=True,
        help='canvas area, 1..3 originals, or "max": the largest canvas one call makes',
    )
    ratios.add_argument("--json", action="store_true", help="print the ratios and the canvas")


def ratios_command(args: argparse.Namespace) -> int:
    if args.width < 1 or args.height < 1:
        raise UsageError("width and height must be positive")
    aspect = parse_aspect(args.aspect)
    area = args.area
    if area == MAX_AREA:
        width, height = largest_size(args.width, args.height, aspect, (0.5, 0.5))
        area = math.floor(width) * math.floor(height) / (args.width * args.height)
    ratios = ratios_for_aspect(args.width, args.height, aspect=aspect, area=area)
    problems = ratios.problems()
    if problems:
        raise UsageError("; ".join(problems))
    canvas = canvas_for(args.width, args.height, ratios)
    if args.json:
        print_json(
            {
                "up": ratios.up,
                "down": ratios.down,
                "left": ratios.left,
                "right": ratios.right,
                "canvas": [canvas.width, canvas.height],
                "box": list(canvas.box.as_tuple()),
            }
        )
    else:
        values = (ratios.up, ratios.down, ratios.left, ratios.right)
        print(",".join(f"{value:.4f}" for value in values))
    return EXIT_OK
