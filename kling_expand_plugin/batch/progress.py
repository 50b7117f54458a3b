"""A one-line progress display for batches, redrawn on stderr only when it is a terminal."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

INTERVAL = 0.2
BAR_WIDTH = 20


def progress_line(summary: dict[str, Any], total: int | None, n: int) -> str:
    """The line for the stage's `summary` counters: finished inputs, tasks, units, time."""
    finished = summary["done"] + summary["failed"] + summary["skipped"]
    # Slots are taken just before a create: a task runs once created (or re-attached).
    tasks = summary["created"] + summary.get("reattached", 0)
    running = min(summary["slots_in_use"] // max(n, 1), tasks)
    if total:
        filled = min(BAR_WIDTH, BAR_WIDTH * finished // total)
        head = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {finished}/{total}"
    else:
        head = f"{finished} finished"
    return (
        f"{head}  done {summary['done']}  failed {summary['failed']}"
        f"{'  skipped ' + str(summary['skipped']) if summary['skipped'] else ''}"
        f"  tasks {tasks}  running {running}"
        f"  units {summary['units']:g}  {summary['seconds']:.1f} s"
    )


class Progress:
    """Redraws `progress_line(read(), ...)` every 0.2 s from a thread while the batch runs.

    Does nothing unless `stream` is a terminal (or `enabled` says otherwise), so logs and
    pipes stay clean. Log records go through `handler()`, which clears the line first.
    """

    def __init__(
        self,
        read: Callable[[], dict[str, Any]],
        *,
        total: int | None,
        n: int,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.read = read
        self.total, self.n = total, n
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self.draw()
            with self._lock:
                self.stream.write("\n")
                self.stream.flush()
                self._shown = False

    def draw(self) -> None:
        """Redraw the line now."""
        line = progress_line(self.read(), self.total, self.n)
        with self._lock:
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Erase the line (before something else is written to the stream)."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self._shown = False

    def echo(self, text: str, stream: TextIO) -> None:
        """Print a line of output to `stream` without mangling the progress line."""
        self.clear()
        with self._lock:
            print(text, file=stream, flush=True)

    def handler(self, format: str) -> logging.Handler:
        """A logging handler on the same stream that clears the line before each record."""
        return _ClearingHandler(self, format)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self.draw()


class _ClearingHandler(logging.StreamHandler[TextIO]):
    def __init__(self, progress: Progress, format: str) -> None:
        super().__init__(progress.stream)
        self.progress = progress
        self.setFormatter(logging.Formatter(format))

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.clear()
        super().emit(record)
