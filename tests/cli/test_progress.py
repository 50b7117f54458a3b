"""The progress line: its text, drawn only on a terminal, and logs that do not mangle it."""

from __future__ import annotations

import io
import logging
import time

from kling_expand_plugin.batch.progress import Progress, progress_line

SUMMARY = {
    "done": 3, "failed": 1, "skipped": 0, "results": 6, "units": 6.0, "created": 5,
    "slots_in_use": 4, "seconds": 2.5,
}  # fmt: skip


def test_the_line_counts_inputs_tasks_and_units():
    line = progress_line(SUMMARY, total=8, n=2)
    assert line == (
        "[##########..........] 4/8  done 3  failed 1  tasks 5  running 2  units 6  2.5 s"
    )
    assert progress_line({**SUMMARY, "skipped": 2}, None, 1).startswith("6 finished  done 3")
    assert "skipped 2" in progress_line({**SUMMARY, "skipped": 2}, None, 1)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_drawn_on_a_terminal_and_cleared_for_log_records():
    stream = FakeTerminal()
    logger = logging.getLogger("test-progress")
    logger.propagate = False
    with Progress(lambda: SUMMARY, total=8, n=2, stream=stream) as progress:
        handler = progress.handler("%(message)s")
        logger.addHandler(handler)
        try:
            deadline = time.monotonic() + 5
            while "\r" not in stream.getvalue() and time.monotonic() < deadline:
                time.sleep(0.01)
            logger.warning("a log line")
        finally:
            logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.startswith("\r\x1b[K[") and "\r\x1b[Ka log line\n" in text
    assert text.endswith("2.5 s\n")


def test_silent_when_not_a_terminal():
    stream = io.StringIO()
    with Progress(lambda: SUMMARY, total=8, n=2, stream=stream) as progress:
        progress.echo("a result line", stream)
        time.sleep(0.25)
    assert stream.getvalue() == "a result line\n"
