"""Thread leases: a run executes a thread only while it holds that thread's lease.

Two runs that overlap on one store (two `wtb run`s, a sensor run and a backfill, …) must never
advance the same LangGraph thread at once, nor overwrite a finished row with a worse one. A
lease is a row `(thread_id, owner, host, pid, expires_at)` in the results store, taken with one
conditional upsert (atomic on SQLite and PostgreSQL alike) and kept alive by a heartbeat. A
lease is free when it has expired, or when its owner ran on this host and that process is
gone (a killed run is taken over at once, not after the expiry). The results store only lets
the lease's owner replace a thread's row (`ResultsStore.upsert_results(lease_owner=…)`), so a
run that lost its lease (hung past the expiry) cannot overwrite the row of the run that took
over.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from wtb_dagster.store import ResultsStore, thread_leases

DEFAULT_TTL_S = 60.0
_CHUNK = 500


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield list(items[start : start + _CHUNK])


class ThreadLeases:
    """The leases one run holds; a context manager that renews them and releases them on exit.

    >>> with ThreadLeases(store) as leases:
    ...     mine = leases.acquire(["demo/baseline/docs-001"])
    """

    def __init__(self, store: ResultsStore, ttl_s: float | None = None) -> None:
        self.store = store
        self.ttl_s = float(ttl_s or os.environ.get("WTB_LEASE_TTL_S") or DEFAULT_TTL_S)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> ThreadLeases:
        self.store.setup()
        self._heartbeat = threading.Thread(
            target=self._renew_until_stopped, name="wtb-lease-heartbeat", daemon=True
        )
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        self.release_all()

    def acquire(self, thread_ids: Iterable[str]) -> set[str]:
        """Take the free leases among `thread_ids`; returns the ids this run now holds."""
        ids = list(dict.fromkeys(thread_ids))
        held: set[str] = set()
        for chunk in _chunks(ids):
            with self.store.engine.begin() as conn:
                self._upsert(conn, chunk)
                rows = conn.execute(
                    sa.select(
                        thread_leases.c.thread_id, thread_leases.c.owner, thread_leases.c.pid
                    ).where(thread_leases.c.thread_id.in_(chunk), thread_leases.c.host == self.host)
                ).all()
                dead = {
                    owner for _, owner, pid in rows if owner != self.owner and not _pid_alive(pid)
                }
                for owner in dead:  # a killed run of this host: take its leases now
                    conn.execute(
                        thread_leases.update()
                        .where(thread_leases.c.thread_id.in_(chunk), thread_leases.c.owner == owner)
                        .values(owner=self.owner, pid=self.pid, expires_at=self._expiry())
                    )
                held.update(
                    conn.execute(
                        sa.select(thread_leases.c.thread_id).where(
                            thread_leases.c.thread_id.in_(chunk),
                            thread_leases.c.owner == self.owner,
                        )
                    ).scalars()
                )
        return held

    def holders(self, thread_ids: Iterable[str]) -> dict[str, str]:
        """`thread_id -> owner` of the leases other runs hold among `thread_ids`."""
        ids = list(dict.fromkeys(thread_ids))
        found: dict[str, str] = {}
        with self.store.engine.connect() as conn:
            for chunk in _chunks(ids):
                query = sa.select(thread_leases.c.thread_id, thread_leases.c.owner).where(
                    thread_leases.c.thread_id.in_(chunk), thread_leases.c.owner != self.owner
                )
                found.update((tid, owner) for tid, owner in conn.execute(query))
        return found

    def release(self, thread_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(thread_ids))
        with self.store.engine.begin() as conn:
            for chunk in _chunks(ids):
                conn.execute(
                    thread_leases.delete().where(
                        thread_leases.c.thread_id.in_(chunk), thread_leases.c.owner == self.owner
                    )
                )

    def release_all(self) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(thread_leases.delete().where(thread_leases.c.owner == self.owner))

    def renew(self) -> None:
        """Push the expiry of every lease this run holds forward by the lease's lifetime."""
        with self.store.engine.begin() as conn:
            conn.execute(
                thread_leases.update()
                .where(thread_leases.c.owner == self.owner)
                .values(expires_at=self._expiry())
            )

    def _expiry(self) -> float:
        return time.time() + self.ttl_s

    def _upsert(self, conn: Any, chunk: list[str]) -> None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(thread_leases)
        expires = self._expiry()
        rows = [
            {
                "thread_id": t,
                "owner": self.owner,
                "host": self.host,
                "pid": self.pid,
                "expires_at": expires,
            }
            for t in chunk
        ]
        # Taken over only when expired (or already ours); a live lease of another run stays.
        statement = statement.on_conflict_do_update(
            index_elements=["thread_id"],
            set_={c: statement.excluded[c] for c in ("owner", "host", "pid", "expires_at")},
            where=(thread_leases.c.expires_at < time.time())
            | (thread_leases.c.owner == self.owner),
        )
        conn.execute(statement, rows)

    def _renew_until_stopped(self) -> None:
        # Renew three times per lifetime: one missed beat (a slow database) loses nothing.
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception:  # the next beat tries again; fencing guards the rows meanwhile
                continue
