"""Storing a batch's results from a thread of its own.

The executor's loop calls back with each finished thread; writing the rows there would stall
it (a flush of 50 rows with their node events takes tens of milliseconds), and with it the
handing out of the next cases. The writer takes the rows and stores them in groups, in
order, each group's leases released only once its rows are stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from wtb_dagster.threads import ThreadResult


class ResultWriter:
    """Calls `write(rows)` from a background thread, for groups of up to `flush_every` rows
    or whatever arrived within `interval_s`; `close()` writes the rest and re-raises a write
    error (which `add` also raises, so a batch stops at the first one).

    >>> with ResultWriter(lambda rows: store.upsert_results(rows)) as writer:
    ...     writer.add(result)
    """

    def __init__(
        self,
        write: Callable[[list[ThreadResult]], None],
        flush_every: int = 50,
        interval_s: float = 2.0,
    ) -> None:
        self._write, self._flush_every, self._interval_s = write, flush_every, interval_s
        self._pending: list[ThreadResult] = []
        self._ready = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="wtb-result-writer", daemon=True)
        self._thread.start()

    def add(self, result: ThreadResult) -> None:
        with self._ready:
            if self._error is not None:
                raise self._error
            self._pending.append(result)
            if len(self._pending) >= self._flush_every:
                self._ready.notify()

    def _loop(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(
                    lambda: self._closed or len(self._pending) >= self._flush_every,
                    timeout=self._interval_s,
                )
                rows, self._pending = self._pending, []
                closing = self._closed
            if rows:
                try:
                    self._write(rows)
                except BaseException as exc:  # given to the batch's thread by add / close
                    with self._ready:
                        self._error = exc
                    return
            if closing:
                return

    def close(self) -> None:
        """Write what is pending, stop the thread; raise the error a write raised, if any."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
