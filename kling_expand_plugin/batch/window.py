"""A bounded window of work in flight, with results handed back in input order."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def windowed_map(
    function: Callable[[In], Out],
    inputs: Iterable[In],
    *,
    window: int,
    ordered: bool = True,
    reorder_limit: int | None = None,
) -> Iterator[tuple[In, Future[Out]]]:
    """Run `function` over `inputs`, `window` at a time; yield (input, finished future).

    With `ordered`, results come back in input order; finished work waits in a buffer of at
    most `reorder_limit` (default 4 x window) items while a slower one ahead of it runs, so a
    slow item does not idle the window. Inputs are pulled lazily: memory is bounded by the
    window and the buffer, not by the input.

    Each piece of work runs on a daemon thread of its own. Closing the generator early does
    not wait for the work under way (it is the caller's to stop, say by cancelling what the
    function waits on), so that leaving a loop, or Ctrl-C, never hangs the process.
    """
    limit = reorder_limit if reorder_limit is not None else 4 * window
    source = enumerate(inputs)
    running: dict[Future[Out], tuple[int, In]] = {}
    done: dict[int, tuple[In, Future[Out]]] = {}
    next_out = 0
    exhausted = False
    while True:
        while not exhausted and len(running) < window and len(running) + len(done) < limit:
            try:
                index, value = next(source)
            except StopIteration:
                exhausted = True
                break
            running[_start(function, value)] = (index, value)
        if not running and not done:
            return
        if running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                index, value = running.pop(future)
                done[index] = (value, future)
        if ordered:
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
        else:
            for index in sorted(done):
                yield done.pop(index)


def _start(function: Callable[[In], Out], value: In) -> Future[Out]:
    """`function(value)` on a new daemon thread; its future."""
    future: Future[Out] = Future()
    threading.Thread(
        target=_run, args=(future, function, value), name="outpaint", daemon=True
    ).start()
    return future


def _run(future: Future[Out], function: Callable[[In], Out], value: In) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(function(value))
    except BaseException as error:  # handed to the consumer through the future
        future.set_exception(error)
        # The error's traceback holds this frame: were the frame to keep the future, which
        # keeps the error, the cycle would hold what the work held (pixels) until Python's
        # cycle collector ran, not until the consumer lets go of the future.
        del future
