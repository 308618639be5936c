"""Checkpoint savers that commit the writes of many concurrent threads in one transaction.

Durability stays LangGraph's "sync": `put`, `put_writes` and `delete_thread` return only once
a transaction holding their rows has committed, so a killed process loses only calls that had
not returned. What changes is who pays for the commit: the calls that arrive while a commit
is in flight queue up, and the next commit takes them all (group commit, as databases do for
their own log). With 32 threads stepping at once, one commit serves many checkpoints.

How a group forms (`GroupCommit`): a call records its statements (the saver's own SQL and
serialization, see below) and queues them. If no commit is in flight, the caller becomes the
leader: it takes the whole queue, runs it in one transaction, commits, and wakes the members;
callers arriving meanwhile wait, and the first of them leads the next group. No timer and no
background thread: a lone thread commits at once, as a plain saver would.

Errors: if a group's transaction fails, it is rolled back and each member is retried in a
transaction of its own, so a bad call fails alone and the others still commit. The savers'
writes are upserts (`INSERT OR REPLACE`, `ON CONFLICT … DO UPDATE / NOTHING`) and deletes, so
running a member again after a commit of unknown outcome is harmless.

Order: members run in arrival order and one group commits at a time per saver (per pool for
PostgreSQL lanes), so a call that arrived first never commits after one that arrived later.

The savers reuse `SqliteSaver` / `PostgresSaver` whole: their `put`, `put_writes` and
`delete_thread` run unchanged and write through the saver's cursor; the subclasses replace
only that cursor (for writes) with one that records the statements, so SQL, serde and the
blob layout are LangGraph's. `GroupCommitSqliteSaver` and `GroupCommitPostgresSaver` are
subclasses, so anything layered over them (`bench_saver`, a `put` override calling
`super().put`) reaches them by plain inheritance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from langgraph.checkpoint.postgres import PostgresSaver, _internal
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.sqlite import SqliteSaver
from psycopg import Pipeline
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

# (cursor method, SQL, parameters) — replayed on the real cursor by the group's leader
Statement = tuple[str, str, Any]

# A wait on someone else's commit ends with an error after this long: the databases' own
# timeouts (SQLite's busy timeout of 60 s, PostgreSQL's statement timeouts) end a stuck
# commit well before, so reaching it means a leader that will never report.
DEFAULT_TIMEOUT_S = 300.0


class _RecordingCursor:
    """Stands in for the saver's cursor inside its write methods: keeps the statements.

    Only `execute` and `executemany` exist: a future saver version that reads from the
    cursor inside a write fails loudly here rather than being silently misserved.
    """

    def __init__(self) -> None:
        self.statements: list[Statement] = []

    def execute(self, sql: str, params: Any = None) -> None:
        self.statements.append(("execute", sql, params))

    def executemany(self, sql: str, params_seq: Any) -> None:
        # materialised now: the caller's generator must not run on the leader's thread late
        self.statements.append(("executemany", sql, list(params_seq)))


def replay(cursor: Any, statements: Sequence[Statement]) -> None:
    """Run recorded statements on a real cursor, in order."""
    for method, sql, params in statements:
        if method == "execute":
            cursor.execute(sql, params)
        else:
            cursor.executemany(sql, params)


class _Member:
    __slots__ = ("done", "error", "lead", "statements", "woken")

    def __init__(self, statements: list[Statement]) -> None:
        self.statements = statements
        self.done = False  # its group has finished (committed, or failed: see `error`)
        self.lead = False  # handed the leadership: it commits the next group
        self.error: BaseException | None = None
        # Each waiter sleeps on an event of its own: a commit wakes exactly its members and
        # the next leader, not every waiting thread (with 32 threads and one GIL, waking all
        # of them at each commit costs more than the commit saves on SQLite).
        self.woken = threading.Event()


class GroupCommit:
    """Runs the statements of concurrent callers in shared transactions.

    `transact(groups)` must run every statement list of `groups` in one transaction and
    commit it, or roll back and raise. `submit` returns once its statements are committed.
    One transaction runs at a time, so groups commit in arrival order. (Two or four at once
    on PostgreSQL measured no faster on the bench: its cost is CPU, not commit latency.)
    """

    def __init__(
        self,
        transact: Callable[[Sequence[Sequence[Statement]]], None],
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._transact = transact
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._queue: list[_Member] = []
        self._leading = False  # a leader is committing, or has been handed the lead
        # counters (read by tests and the benchmark): calls committed, transactions committed
        self.members_committed = 0
        self.commits = 0

    def queued(self) -> int:
        """Calls waiting for the next group (not yet in a transaction)."""
        with self._lock:
            return len(self._queue)

    def submit(self, statements: list[Statement]) -> None:
        """Queue `statements`; return once a commit holds them (raise if theirs failed)."""
        member = _Member(statements)
        with self._lock:
            self._queue.append(member)
            if not self._leading:
                self._leading = member.lead = True
        while True:
            if member.lead:
                self._lead(member)
            if member.done:
                return _outcome(member)
            if not member.woken.wait(self._timeout_s):
                self._give_up(member)

    def _lead(self, member: _Member) -> None:
        """Commit what is queued (this member's call among it), then pass the lead to the
        first call still waiting."""
        with self._lock:
            member.lead = False
            member.woken.clear()  # it woke to lead; from now on it may wake for its outcome
            group, self._queue = self._queue, []
        try:
            if group:
                self._commit(group)
        finally:
            with self._lock:
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._leading = False
                else:
                    successor.lead = True
            if successor is not None:
                successor.woken.set()

    def _give_up(self, member: _Member) -> None:
        with self._lock:
            if member.lead or member.done:  # woken just now: carry on as usual
                return
            if member in self._queue:  # never taken: it will not commit later either
                self._queue.remove(member)
                raise TimeoutError(
                    f"group commit: no commit took this write within {self._timeout_s:g} s "
                    "(the commit before it is stuck)"
                )
        raise TimeoutError(
            f"group commit: the commit holding this write did not finish within "
            f"{self._timeout_s:g} s; it may still commit"
        )

    def _commit(self, group: list[_Member]) -> None:
        try:
            try:
                self._transact([m.statements for m in group])
                self.commits += 1
            except Exception as exc:
                if len(group) == 1:
                    group[0].error = exc
                else:
                    # One member may have failed the shared transaction (it was rolled back):
                    # each one alone, so only a bad one fails.
                    for member in group:
                        try:
                            self._transact([member.statements])
                            self.commits += 1
                        except Exception as own:
                            member.error = own
            self.members_committed += sum(m.error is None for m in group)
        except BaseException as exc:  # interrupted mid-commit: no member may think it is safe
            for member in group:
                if member.error is None:
                    member.error = RuntimeError(f"group commit interrupted: {exc!r}")
            raise
        finally:
            for member in group:
                member.done = True
                member.woken.set()


def _outcome(member: _Member) -> None:
    if member.error is not None:
        raise member.error


class GroupCommitSqliteSaver(SqliteSaver):
    """`SqliteSaver` whose writes from concurrent threads share commits (`GroupCommit`).

    Readers use the connection as `SqliteSaver` does; a group runs and commits under the
    saver's lock, so a reader never sees a write that is not committed yet.
    """

    def __init__(
        self,
        conn: Any,
        *,
        serde: SerializerProtocol | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(conn, serde=serde)
        self.group = GroupCommit(self._transact, timeout_s)

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[Any]:
        """A reading cursor as `SqliteSaver` gives it; a writing one (`transaction=True`,
        what `put`, `put_writes` and `delete_thread` ask for) records the statements, which
        are committed with their group when the block ends."""
        if not transaction:
            with super().cursor(transaction=False) as cur:
                yield cur
            return
        recorder = _RecordingCursor()
        yield recorder
        self.group.submit(recorder.statements)

    def _transact(self, groups: Sequence[Sequence[Statement]]) -> None:
        with self.lock:
            self.setup()
            cur = self.conn.cursor()
            try:
                if not self.conn.in_transaction:
                    cur.execute("BEGIN")  # also on a connection in autocommit mode
                for statements in groups:
                    replay(cur, statements)
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
            finally:
                cur.close()


class GroupCommitPostgresSaver(PostgresSaver):
    """`PostgresSaver` whose writes from concurrent threads share commits (`GroupCommit`).

    A group runs on one connection of the pool in one transaction, pipelined (one round trip
    for all its statements, then the commit). Savers over the same pool (`saver_lanes`) pass
    `group=` to share one `GroupCommit`, so the lanes' writes form one queue and keep their
    arrival order.
    """

    def __init__(
        self,
        conn: Any,
        pipe: Pipeline | None = None,
        serde: SerializerProtocol | None = None,
        *,
        group: GroupCommit | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if pipe is not None:
            raise ValueError(
                "GroupCommitPostgresSaver runs its own transactions: give it a connection or "
                "a pool, not a pipeline"
            )
        super().__init__(conn, serde=serde)
        self.group = group if group is not None else GroupCommit(self._transact, timeout_s)

    @contextmanager
    def _cursor(self, *, pipeline: bool = False) -> Iterator[Any]:
        # PostgresSaver asks for a pipelined cursor exactly in its writes (put, put_writes,
        # delete_thread); those are recorded and group-committed, reads go through as they are.
        if not pipeline:
            with super()._cursor() as cur:
                yield cur
            return
        recorder = _RecordingCursor()
        yield recorder
        self.group.submit(recorder.statements)

    def _transact(self, groups: Sequence[Sequence[Statement]]) -> None:
        # A pool hands the group a connection of its own; a single connection is shared with
        # this saver's reads, which its lock keeps out of the transaction.
        lock = nullcontext() if isinstance(self.conn, ConnectionPool) else self.lock
        with lock, _internal.get_connection(self.conn) as conn:
            if self.supports_pipeline:
                # Leaving the pipeline syncs and reads every result, COMMIT's included: when
                # this returns without error, the server has committed the group.
                with (
                    conn.pipeline(),
                    conn.transaction(),
                    conn.cursor(binary=True, row_factory=dict_row) as cur,
                ):
                    for statements in groups:
                        replay(cur, statements)
            else:
                with conn.transaction(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    for statements in groups:
                        replay(cur, statements)
