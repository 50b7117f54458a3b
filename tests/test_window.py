from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from kling_expand_plugin.batch.window import windowed_map
from tests.helpers import wait_until


def slow_first(value: int) -> int:
    time.sleep(0.3 if value == 0 else 0.01)
    return value * 10


def test_input_order_is_kept_while_later_work_goes_on():
    rest_of_window_done = threading.Event()
    done: list[int] = []
    lock = threading.Lock()

    def work(value: int) -> tuple[int, bool]:
        if value == 0:  # the head ends only once the rest of its window has ended
            return value * 10, rest_of_window_done.wait(10)
        with lock:
            done.append(value)
            if len(done) == 3:
                rest_of_window_done.set()
        return value * 10, True

    out = [(value, future.result()) for value, future in windowed_map(work, range(8), window=4)]
    assert out == [(v, (v * 10, True)) for v in range(8)]  # the head did not hold up the others


def test_completed_order_hands_on_what_finished_first():
    out = [v for v, _ in windowed_map(slow_first, range(4), window=4, ordered=False)]
    assert out[-1] == 0 and sorted(out) == [0, 1, 2, 3]


def test_at_most_window_run_at_once_and_inputs_are_pulled_lazily():
    running, peak, pulled = 0, 0, []
    lock = threading.Lock()

    def work(value: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return value

    def source():
        for value in range(1000):
            pulled.append(value)
            yield value

    results = windowed_map(work, source(), window=3, reorder_limit=6)
    first = [next(results) for _ in range(5)]
    assert [v for v, _ in first] == [0, 1, 2, 3, 4]
    assert len(pulled) <= 5 + 6
    results.close()
    assert peak <= 3


def test_errors_come_back_on_their_future():
    def fail_on_two(value: int) -> int:
        if value == 2:
            raise ValueError("two")
        return value

    outcomes = {v: f.exception() for v, f in windowed_map(fail_on_two, range(4), window=2)}
    assert isinstance(outcomes[2], ValueError) and outcomes[1] is None
    with pytest.raises(ValueError):
        raise outcomes[2]


class Pixels:
    """Stands for a decoded image held by the work when it failed."""


def test_failed_work_lets_go_of_what_it_held_once_its_result_is_read():
    # An error keeps the frames it went through; the thread's frame kept the future, which
    # keeps the error: a reference cycle, freed only when Python's cycle collector ran.
    held: list[weakref.ref[Pixels]] = []

    def work(value: int) -> int:
        pixels = Pixels()
        held.append(weakref.ref(pixels))
        raise ValueError(f"bad input {value}")

    gc.collect()
    gc.disable()
    try:
        for _, future in windowed_map(work, range(3), window=2):
            assert isinstance(future.exception(), ValueError)
        del future
        wait_until(lambda: [ref() for ref in held] == [None, None, None], timeout=2)
        assert len(held) == 3
    finally:
        gc.enable()
