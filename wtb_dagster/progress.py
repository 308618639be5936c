"""Progress of long batches: done / total, rate and ETA, reported at a bounded rate."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from wtb_dagster.threads import ThreadResult


class ProgressReporter:
    """Calls `emit(line)` at most every `interval_s` seconds, and always for the last thread.

    >>> reporter = ProgressReporter(print, interval_s=5)
    >>> bench.run_batch("demo", progress=reporter)
    """

    def __init__(self, emit: Callable[[str], None], interval_s: float = 2.0) -> None:
        self.emit = emit
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.last = 0.0
        self.statuses: Counter[str] = Counter()

    def line(self, done: int, total: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate else float("inf")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return f"{done}/{total} threads ({rate:.1f}/s, ETA {eta:.0f} s) — {counts}"

    def __call__(self, done: int, total: int, result: ThreadResult) -> None:
        self.statuses[result.status] += 1
        now = time.monotonic()
        if done == total or now - self.last >= self.interval_s:
            self.last = now
            self.emit(self.line(done, total))


class TerminalBar(ProgressReporter):
    """A one-line bar on a terminal; plain periodic lines when the stream is not a terminal."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        tty = stream.isatty()
        super().__init__(self._write, interval_s=0.1 if tty else 5.0)
        self.tty = tty

    def _write(self, text: str) -> None:
        self.stream.write(("\r" + text + "\033[K") if self.tty else text + "\n")
        self.stream.flush()

    def line(self, done: int, total: int) -> str:
        filled = int(self.width * done / total) if total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        return f"[{bar}] " + super().line(done, total)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
