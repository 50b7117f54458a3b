"""A bounded window of work in flight, with results handed back in input order."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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
) -> Generator[tuple[In, Future[Out]], None, None]:
    """Run `function` over `inputs`, `window` at a time; yield (input, finished future).

    With `ordered`, results come back in input order; finished work waits in a buffer of at
    most `reorder_limit` (default 4 x window) items while a slower one ahead of it runs, so a
    slow item does not idle the window. Inputs are pulled lazily: memory is bounded by the
    window and the buffer, not by the input. Closing the generator cancels work not started.
    """
    limit = reorder_limit if reorder_limit is not None else 4 * window
    source = enumerate(inputs)
    running: dict[Future[Out], tuple[int, In]] = {}
    done: dict[int, tuple[In, Future[Out]]] = {}
    next_out = 0
    exhausted = False
    with ThreadPoolExecutor(max_workers=window, thread_name_prefix="outpaint") as pool:
        try:
            while True:
                while not exhausted and len(running) < window and len(running) + len(done) < limit:
                    try:
                        index, value = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    running[pool.submit(function, value)] = (index, value)
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
        finally:
            for future in running:
                future.cancel()
