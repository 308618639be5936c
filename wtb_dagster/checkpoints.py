"""LangGraph checkpointers chosen by URL (reading a thread's checkpoints: `history`).

- `memory://[name]` — `InMemorySaver`, one per name and process (unit tests);
- `sqlite:///relative/path.db` or `sqlite:////absolute/path.db` — `SqliteSaver` (embedded default);
- `postgresql://user@host:port/db` — `PostgresSaver` over a psycopg connection pool.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from wtb_dagster.connections import attempt_timeout, connect_with_retry, connection_error
from wtb_dagster.errors import ConfigError
from wtb_dagster.urls import redact_url
from wtb_dagster.workspaces import on_put

_MEMORY: dict[str, InMemorySaver] = {}
_MEMORY_LOCK = threading.Lock()


# -- LangGraph's async saver calls, served by the sync savers -----------------------------------
# Graphs with async nodes run on LangGraph's async path (`astream`, see `execution`), which calls
# the saver's `aget_tuple`, `aput`, `aput_writes` (and `alist`, `aget_delta_channel_history`
# for state history and delta channels); SqliteSaver and PostgresSaver raise NotImplementedError
# there. The savers `open_checkpointer` returns answer those calls by running their own sync
# method in a worker thread (`asyncio.to_thread`), rather than LangGraph's AsyncSqliteSaver /
# AsyncPostgresSaver, because:
# - durability stays "sync": the async loop awaits `aput` before the next super-step, and the
#   await returns once the sync `put` has committed — the same guarantee as the sync path;
# - connections stay bounded: the calls use the saver's own connection or pool (and its lanes),
#   while an async saver is bound to one event loop and every thread run has a loop of its own
#   (`asyncio.run` per case), so it would open a connection or pool per case — unbounded on
#   PostgreSQL (Ray workers must stay within workers × pool_size) and a connect per case;
# - one code path reads and writes checkpoints, async graph or not (reading, forks, rollback
#   use the same sync saver), so the two cannot drift;
# - the event loop never blocks on the database: parallel nodes of a step keep running.
# The cost is a hop to a worker thread per saver call, small beside a database round trip.


class _AsyncInThreads:
    """LangGraph's async saver methods, each running the sync method in a worker thread.

    The sync method is looked up at call time, so a saver whose `put` is replaced (a test
    simulating a crash) is served by the replacement on both paths.
    """

    async def aget_tuple(self, config: Any) -> Any:
        return await asyncio.to_thread(self.get_tuple, config)  # type: ignore[attr-defined]

    async def alist(
        self,
        config: Any,
        *,
        filter: dict[str, Any] | None = None,
        before: Any = None,
        limit: int | None = None,
    ) -> AsyncIterator[Any]:
        # Read in one go: the sync savers hold their lock (and cursor) while a list is iterated.
        saver: Any = self
        items = await asyncio.to_thread(
            lambda: list(saver.list(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        return await asyncio.to_thread(
            self.put,  # type: ignore[attr-defined]
            config,
            checkpoint,
            metadata,
            new_versions,
        )

    async def aput_writes(
        self, config: Any, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await asyncio.to_thread(
            self.put_writes,  # type: ignore[attr-defined]
            config,
            writes,
            task_id,
            task_path,
        )

    async def aget_delta_channel_history(self, *, config: Any, channels: Sequence[str]) -> Any:
        saver: Any = self
        return await asyncio.to_thread(
            lambda: saver.get_delta_channel_history(config=config, channels=channels)
        )

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)  # type: ignore[attr-defined]

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)  # type: ignore[attr-defined]

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(
            self.copy_thread,  # type: ignore[attr-defined]
            source_thread_id,
            target_thread_id,
        )

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        saver: Any = self
        await asyncio.to_thread(lambda: saver.prune(thread_ids, strategy=strategy))


class _SnapshotsWorkspaces:
    """Every checkpoint of a thread that has a workspace records its files (`workspaces`).

    The snapshot is taken in `put`, which LangGraph calls once a super-step's nodes are done
    and (durability "sync") before the next step starts: the folder is still, and the
    manifest's digest goes into the checkpoint's own metadata, written with it."""

    def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        return super().put(config, checkpoint, on_put(config, metadata), new_versions)  # type: ignore[misc]


@functools.cache
def bench_saver(saver_class: type[BaseCheckpointSaver]) -> type[BaseCheckpointSaver]:
    """`saver_class` with LangGraph's async methods served by its sync ones in a worker thread,
    and workspace snapshots at every put (`_SnapshotsWorkspaces`)."""
    return type(
        saver_class.__name__,
        (_SnapshotsWorkspaces, _AsyncInThreads, saver_class),
        {"__module__": __name__, "__qualname__": saver_class.__qualname__},
    )


def serves_async(saver: BaseCheckpointSaver) -> bool:
    """Whether a saver answers LangGraph's async calls (`astream` needs them)."""
    return isinstance(saver, _AsyncInThreads) or (
        type(saver).aput_writes is not BaseCheckpointSaver.aput_writes
    )


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///…` URL (SQLAlchemy's convention: four slashes for absolute)."""
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"{redact_url(url)!r} is not a sqlite:/// URL")
    rest = url[len("sqlite:///") :]
    if not rest or rest == ":memory:":
        raise ConfigError(
            f"{redact_url(url)!r}: give a file path, e.g. sqlite:///data/checkpoints.db"
        )
    return Path(rest)


def postgres_conninfo(url: str) -> str:
    """A libpq connection string from a SQLAlchemy- or libpq-style PostgreSQL URL."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _scheme(url: str) -> str:
    if url.startswith("memory://"):
        return "memory"
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return "postgres"
    raise ConfigError(
        f"checkpointer URL {redact_url(url)!r} is not supported; use memory://, sqlite:///path.db "
        "or postgresql://user@host:port/db (setting WTB_CHECKPOINT_URL)"
    )


def check_checkpoint_url(url: str) -> str:
    """Validate a checkpointer URL without opening it."""
    _scheme(url)
    return url


@contextmanager
def open_checkpointer(
    url: str, pool_size: int = 4, setup: bool = True
) -> Iterator[BaseCheckpointSaver]:
    """Open the checkpointer a URL names; closes its connections on exit.

    `setup=False` skips creating tables (workers, once the driver has set them up).
    """
    scheme = _scheme(url)
    if scheme == "memory":
        with _MEMORY_LOCK:
            saver = _MEMORY.setdefault(url, bench_saver(InMemorySaver)())
        yield saver
    elif scheme == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        from wtb_dagster.group_commit import GroupCommitSqliteSaver
        from wtb_dagster.settings import group_commit

        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The saver serialises access with its own lock; several processes (Ray workers) may
        # share the file, so waiting for the write lock beats failing with "database is locked".
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
        conn.execute("PRAGMA busy_timeout=60000")
        # WAL with synchronous=NORMAL survives a killed process (what resuming needs); only a
        # power cut may lose the newest checkpoints, and it spares an fsync per checkpoint.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            # group commit keeps durability; on SQLite it is opt-in (WTB_GROUP_COMMIT=on) as
            # it measured no faster there: the cost of a checkpoint is CPU, not its commit
            sqlite_class = GroupCommitSqliteSaver if group_commit() == "on" else SqliteSaver
            saver = bench_saver(sqlite_class)(conn)
            if setup:
                saver.setup()
            yield saver
        finally:
            conn.close()
    else:
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        from wtb_dagster.group_commit import GroupCommitPostgresSaver
        from wtb_dagster.settings import group_commit

        conninfo = postgres_conninfo(url)
        if setup:
            # The driver probes once for a clear error; workers (setup=False) open a URL the
            # driver already reached, and must stay within their pool's connection budget.
            _probe_postgres(url, conninfo)
        pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
            open=False,
        )
        try:
            pool.open(wait=True, timeout=15)
        except Exception as exc:
            pool.close()
            error = connection_error(_CHECKPOINTER, url, "WTB_CHECKPOINT_URL", exc)
            raise error from None  # the driver's text is in the message, scrubbed
        try:
            # concurrent threads' checkpoints share commits, durability kept (`group_commit`)
            postgres_class = PostgresSaver if group_commit() == "off" else GroupCommitPostgresSaver
            saver = bench_saver(postgres_class)(pool)  # type: ignore[arg-type]
            if setup:
                _postgres_setup_once(saver, postgres_conninfo(url))
            yield saver
        finally:
            pool.close()


_CHECKPOINTER = "PostgreSQL checkpointer"


def _probe_postgres(url: str, conninfo: str) -> None:
    """One direct connection before the pool opens: a permanent error (missing database,
    rejected role) fails at once with the server's message instead of the pool's timeout;
    transient ones (server starting or full, connection refused) are retried for a while."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.Error:
        given = {}
    timeout = {} if "connect_timeout" in given else {"connect_timeout": attempt_timeout()}
    try:
        connect_with_retry(lambda: psycopg.connect(conninfo, **timeout)).close()
    except (psycopg.Error, OSError) as exc:
        error = connection_error(_CHECKPOINTER, url, "WTB_CHECKPOINT_URL", exc)
    else:
        return
    raise error  # outside the except block: no chained driver error, whose text is unscrubbed


def _postgres_setup_once(saver: Any, conninfo: str) -> None:
    # Several processes may start at once; an advisory lock keeps LangGraph's migrations from
    # racing each other. It is held on a connection of its own so that a pool of one
    # connection is still free for setup() itself.
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(748213)")
        try:
            saver.setup()
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(748213)")


def saver_backend(saver: Any) -> str:
    """Which database a saver writes to: "sqlite", "postgres" or "other" (memory, or a saver
    of the user's), for the code that reads or writes its tables directly."""
    modules = {c.__module__ for c in type(saver).__mro__}
    if "langgraph.checkpoint.sqlite" in modules:
        return "sqlite"
    if "langgraph.checkpoint.postgres" in modules:
        return "postgres"
    return "other"


def saver_lanes(saver: BaseCheckpointSaver, count: int) -> list[BaseCheckpointSaver]:
    """`count` savers over the same PostgreSQL pool (the given one first), so that threads of
    one process use that many connections at once.

    `PostgresSaver` runs one statement at a time per instance (it holds a lock around each
    cursor): a single saver uses one connection of its pool whatever the pool's size. SQLite
    writes are serialised by the file anyway, and memory needs no lanes: one saver.
    """
    if count <= 1 or saver_backend(saver) != "postgres":
        return [saver]
    lane: Any = type(saver)  # the same class: lanes serve async calls as the first saver does
    pool = saver.conn  # type: ignore[attr-defined]
    # group-committing lanes share one queue: bigger groups, one arrival order for all writes
    from wtb_dagster.group_commit import GroupCommitPostgresSaver

    shared = {"group": saver.group} if isinstance(saver, GroupCommitPostgresSaver) else {}
    return [saver, *(lane(pool, serde=saver.serde, **shared) for _ in range(count - 1))]


def thread_config(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    # checkpoint_ns "" is the root graph; savers' put_writes expect the key to be present
    configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}
