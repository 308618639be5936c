"""The results store: one row per thread, rerun requests; SQLite by default, PostgreSQL by URL.

The schema evolves as a numbered list of frozen migrations (`migrations`) applied from the
stored version, like LangGraph's own checkpoint tables: a handful of tables needs no migration
framework.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from wtb_dagster.connections import connection_error, retry_transient_connects, safe_cause
from wtb_dagster.errors import ConfigError, WTBError
from wtb_dagster.migrations import SCHEMA_LOCK_KEY, current_version, migrate
from wtb_dagster.rerun_request import PENDING, RerunRequest, StoredRerunRequest
from wtb_dagster.threads import MAIN_LINEAGE, SUCCEEDED, ThreadResult
from wtb_dagster.urls import redact_url, scrub

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
metadata = sa.MetaData()

thread_results = sa.Table(
    "wtb_thread_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("combo", sa.String(500), nullable=False),
    sa.Column("case_id", sa.String(200), nullable=False),
    sa.Column("lineage", sa.String(200), nullable=False, server_default=""),
    sa.Column("thread_id", sa.String(1000), nullable=False, unique=True),
    sa.Column("parent_thread_id", sa.String(1000)),
    sa.Column("parent_checkpoint_id", sa.String(100)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("input", JSONType),
    sa.Column("expected", JSONType),
    sa.Column("final_values", JSONType),
    sa.Column("scores", JSONType),
    sa.Column("score_errors", JSONType),
    sa.Column("error", sa.Text),
    sa.Column("node_timings", JSONType),
    sa.Column("nodes_executed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("checkpoints", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_checkpoint_id", sa.String(100)),
    sa.Column("last_checkpoint_id", sa.String(100)),
    sa.Column("latency_s", sa.Float, nullable=False, server_default="0"),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("executor", sa.String(50)),
    sa.Column("run_id", sa.String(100)),
    sa.Column("change", JSONType),
    sa.Column("code_version", sa.String(40)),
    sa.Column("trial", sa.Integer, nullable=False, server_default="0"),
    # shared prefixes (`prefixes`): the thread this one starts from, up to which checkpoint
    sa.Column("shared_from", sa.String(1000)),
    sa.Column("shared_checkpoint_id", sa.String(100)),
    sa.Column("path", JSONType),  # [[checkpoint id, [nodes run next]], …], oldest first
    sa.Column("node_versions", JSONType),  # node → code version it ran under
    # chat-model usage of the nodes run for this result (`telemetry`); cost NULL = unknown
    sa.Column("tokens_in", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tokens_out", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float),
    # node → its executions' chat-model usage ({model: {input, output, calls}}), in order:
    # a thread sharing a prefix counts the shared nodes' usage as its own, as their time
    sa.Column("node_usage", JSONType),
    sa.UniqueConstraint(
        "workflow", "combo", "case_id", "trial", "lineage", name="uq_wtb_thread_key"
    ),
    sa.Index("ix_wtb_thread_workflow_combo", "workflow", "combo", "lineage"),
    sa.Index("ix_wtb_thread_workflow_status", "workflow", "status"),
    sa.Index("ix_wtb_thread_parent", "parent_thread_id"),
)

rerun_requests = sa.Table(
    "wtb_rerun_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    # which threads: explicit ids, or a combo / status filter over the main lineage
    sa.Column("thread_ids", JSONType),
    sa.Column("combo", sa.String(500)),
    sa.Column("status_filter", sa.String(20)),
    # from where: a checkpoint id, or just before / just after a node
    sa.Column("checkpoint_id", sa.String(100)),
    sa.Column("before_node", sa.String(200)),
    sa.Column("after_node", sa.String(200)),
    # what changes
    sa.Column("variant", sa.String(500)),
    sa.Column("state_patch", JSONType),
    sa.Column("reason", sa.Text),
    sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
    sa.Column("dagster_run_id", sa.String(100)),
    sa.Column("result_thread_ids", JSONType),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_wtb_rerun_status", "status", "id"),
)

# The live tables above must equal what `migrations` builds (a test compares them).
thread_leases = sa.Table(
    "wtb_thread_leases",
    metadata,
    sa.Column("thread_id", sa.String(1000), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_wtb_lease_owner", "owner"),
)

# The judge's replies by request, and the tokens and cost paid for them (see `judge`).
judge_cache = sa.Table(
    "wtb_judge_cache",
    metadata,
    sa.Column("cache_key", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    # the first thread judged with this request: who the usage is reported under
    sa.Column("workflow", sa.String(200)),
    sa.Column("thread_id", sa.String(1000)),
    sa.Column("request", JSONType),
    sa.Column("reply", sa.Text),
    sa.Column("error", sa.Text),  # set: the reply was no judgement, so it is asked again
    # paid: every call made for this request (a malformed reply is paid for too)
    sa.Column("calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tokens_in", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tokens_out", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float),  # NULL: no price given for the model
    sa.Column("latency_s", sa.Float, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_wtb_judge_workflow", "workflow", "kind"),
)


# One row per node execution of a thread: the audit trail (`telemetry`). Written in the
# transaction that writes the thread's result row, so neither is ever stored without the other.
node_events = sa.Table(
    "wtb_node_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("thread_id", sa.String(1000), nullable=False),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("combo", sa.String(500), nullable=False),
    sa.Column("case_id", sa.String(200), nullable=False),
    sa.Column("trial", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lineage", sa.String(200), nullable=False, server_default=""),
    # the thread's n-th recorded execution: a resume, retry or rerun of it counts up
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),  # order of the node's start in the attempt
    sa.Column("node", sa.String(200), nullable=False),
    sa.Column("step", sa.Integer),  # LangGraph's super-step
    sa.Column("status", sa.String(20), nullable=False),  # ok | error | interrupted
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("duration_s", sa.Float, nullable=False, server_default="0"),
    sa.Column("tokens_in", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tokens_out", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float),  # NULL: a model it called has no price
    sa.Column("usage", JSONType),  # model → {input, output, calls}
    sa.Column("run_id", sa.String(100)),
    sa.UniqueConstraint("thread_id", "attempt", "seq", name="uq_wtb_node_event"),
    sa.Index("ix_wtb_event_workflow_combo", "workflow", "combo"),
)

EVENT_COLUMNS = [c.name for c in node_events.columns if c.name != "id"]


def _lock_schema(conn: Connection) -> None:
    # Processes starting together must not migrate at once: PostgreSQL has advisory locks;
    # SQLite's write lock is taken up front (BEGIN IMMEDIATE) instead of at the first write.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})"))
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_RESULT_COLUMNS = [c.name for c in thread_results.columns if c.name != "id"]


def _text(value: Any) -> Any:
    # PostgreSQL text and JSONB cannot hold NUL characters; keep a visible trace of them instead
    # of failing the whole batch's transaction (done on every backend, so both store the same).
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy of graph values: NaN becomes None, models their dump, the rest repr."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_text(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalars and arrays
        return _jsonable(value.tolist())
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump())
    return _text(repr(value))


def result_from_row(row: Mapping[str, Any]) -> ThreadResult:
    """A `ThreadResult` from a stored results row (the inverse of `ResultsStore._row`)."""
    fields = {k: v for k, v in row.items() if k in ThreadResult.__dataclass_fields__}
    for key in ("started_at", "finished_at"):
        value = fields.get(key)
        fields[key] = value.timestamp() if isinstance(value, datetime) else float(value or 0.0)
    for key in ("input", "scores", "score_errors", "node_timings"):
        fields[key] = fields.get(key) or {}
    return ThreadResult(**fields)


def _ts(seconds: float) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite:///", "postgresql+psycopg://")):
        return url
    raise ConfigError(
        f"results store URL {redact_url(url)!r} is not supported; use sqlite:///path.db or "
        "postgresql://user@host:port/db (setting WTB_RESULTS_URL)"
    )


def _held_by(owner: str, thread_id: Any) -> Any:
    """SQL: whether `owner` holds the lease of the thread that `thread_id` (a column) names."""
    return (
        sa.select(thread_leases.c.thread_id)
        .where(thread_leases.c.thread_id == thread_id, thread_leases.c.owner == owner)
        .exists()
    )


def _usage_and_events(
    conn: Connection,
    results: list[ThreadResult],
    rows: list[dict[str, Any]],
    lease_owner: str | None,
) -> list[dict[str, Any]]:
    """The node-event rows to insert with `rows`, and the rows' usage made cumulative.

    A thread whose stored row this upsert will not replace (its lease is another's) gets no
    events either. A run that continued a stored thread (resume, retry, rollback) adds its
    tokens and cost to the stored row's; a restarted one replaces them. Events are numbered
    as the thread's next attempt: after its stored ones, plus the hand-outs Ray lost.
    """
    ids = [r.thread_id for r in results]
    stored: dict[str, tuple[bool, int, int, float | None]] = {}
    last_attempt: dict[str, int] = {}
    held: Any = sa.true()
    if lease_owner is not None:
        held = _held_by(lease_owner, thread_results.c.thread_id)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = sa.select(
            thread_results.c.thread_id,
            held.label("writable"),
            thread_results.c.tokens_in,
            thread_results.c.tokens_out,
            thread_results.c.cost_usd,
        ).where(thread_results.c.thread_id.in_(chunk))
        stored.update((r[0], (bool(r[1]), r[2] or 0, r[3] or 0, r[4])) for r in conn.execute(query))
        attempts = (
            sa.select(node_events.c.thread_id, sa.func.max(node_events.c.attempt))
            .where(node_events.c.thread_id.in_(chunk))
            .group_by(node_events.c.thread_id)
        )
        last_attempt.update((r[0], int(r[1] or 0)) for r in conn.execute(attempts))
    events: list[dict[str, Any]] = []
    for result, row in zip(results, rows, strict=True):
        previous = stored.get(result.thread_id)
        if previous is not None and not previous[0]:
            continue
        if previous is not None and not result.restarted and (previous[1] or previous[2]):
            row["tokens_in"] += previous[1]
            row["tokens_out"] += previous[2]
            if previous[3] is None or row["cost_usd"] is None:
                row["cost_usd"] = None
            else:
                row["cost_usd"] += previous[3]
        attempt = last_attempt.get(result.thread_id, 0) + max(result.attempts, 1)
        events.extend(
            _event_row(result, event, attempt, seq) for seq, event in enumerate(result.events)
        )
    return events


def _event_row(
    result: ThreadResult, event: Mapping[str, Any], attempt: int, seq: int
) -> dict[str, Any]:
    return {
        "thread_id": result.thread_id,
        "workflow": result.workflow,
        "combo": result.combo,
        "case_id": result.case_id,
        "trial": result.trial,
        "lineage": result.lineage,
        "attempt": attempt,
        "seq": seq,
        "node": event["node"],
        "step": event.get("step"),
        "status": event["status"],
        "error": _text(event.get("error")),
        "started_at": _ts(event.get("started_at") or 0.0),
        "finished_at": _ts(event.get("finished_at") or 0.0),
        "duration_s": float(event.get("duration_s") or 0.0),
        "tokens_in": int(event.get("tokens_in") or 0),
        "tokens_out": int(event.get("tokens_out") or 0),
        "cost_usd": event.get("cost_usd"),
        "usage": _jsonable(event.get("usage") or {}),
        "run_id": result.run_id,
    }


class ResultsStore:
    """Thread results and rerun requests in one SQL database.

    >>> store = ResultsStore("sqlite:///data/results.db")
    >>> store.setup()
    """

    def __init__(self, url: str, pool_size: int = 5) -> None:
        self.url = normalise_url(url)
        if self.url.startswith("sqlite:///"):
            Path(self.url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                self.url, connect_args={"timeout": 60, "check_same_thread": False}
            )
        else:
            try:
                self.engine = sa.create_engine(self.url, pool_size=pool_size, pool_pre_ping=True)
            except (ValueError, sa.exc.ArgumentError) as exc:
                raise ConfigError(
                    f"results store URL {redact_url(self.url)!r} is malformed "
                    f"({scrub(str(exc), self.url)}); "
                    "expected postgresql://user:password@host:port/db (setting WTB_RESULTS_URL)"
                ) from None
            # a missing database fails at once; a server starting up or full is waited for
            sa.event.listen(self.engine, "do_connect", retry_transient_connects)
        self._is_setup = False

    def setup(self) -> None:
        """Create or migrate the schema to the newest version (safe to call repeatedly)."""
        if self._is_setup:
            return
        try:
            with self.engine.begin() as conn:
                _lock_schema(conn)
                migrate(conn)
        except sa.exc.OperationalError as exc:
            error = connection_error("results store", self.url, "WTB_RESULTS_URL", exc)
            raise error from safe_cause(exc, self.url)
        self._is_setup = True

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return current_version(conn)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        self.setup()
        with self.engine.begin() as conn:
            yield conn

    # -- thread results ----------------------------------------------------------------------

    def upsert_results(
        self, results: Iterable[ThreadResult], lease_owner: str | None = None
    ) -> int:
        """Insert or replace rows keyed by (workflow, combo, case, trial, lineage), in one
        transaction.

        With `lease_owner`, an existing row is replaced only while that owner holds the
        thread's lease (`leases.ThreadLeases`): a run that lost its lease cannot overwrite the
        row of the run that took the thread over.
        """
        results = list(results)
        rows = [self._row(r) for r in results]
        if not rows:
            return 0
        with self._begin() as conn:
            # the node events go in this transaction too: a row and its events, or neither
            events = _usage_and_events(conn, results, rows, lease_owner)
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(thread_results)
            fence = None
            if lease_owner is not None:
                fence = _held_by(lease_owner, statement.excluded.thread_id)
            statement = statement.on_conflict_do_update(
                index_elements=["workflow", "combo", "case_id", "trial", "lineage"],
                set_={c: statement.excluded[c] for c in _RESULT_COLUMNS},
                where=fence,
            )
            for start in range(0, len(rows), 500):
                conn.execute(statement, rows[start : start + 500])
            for start in range(0, len(events), 500):
                conn.execute(node_events.insert(), events[start : start + 500])
        return len(rows)

    def events(self, thread_id: str) -> pd.DataFrame:
        """The node events of one thread, every attempt, in the order the nodes started."""
        query = (
            sa.select(node_events)
            .where(node_events.c.thread_id == thread_id)
            .order_by(node_events.c.attempt, node_events.c.seq)
        )
        with self._begin() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return pd.DataFrame(rows, columns=[c.name for c in node_events.columns])

    def events_frame(self, workflow: str, combos: Iterable[str] | None = None) -> pd.DataFrame:
        """The node events of a workflow's threads (optionally of some combos only)."""
        query = sa.select(node_events).where(node_events.c.workflow == workflow)
        if combos is not None:
            query = query.where(node_events.c.combo.in_(list(combos)))
        query = query.order_by(node_events.c.thread_id, node_events.c.attempt, node_events.c.seq)
        with self._begin() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return pd.DataFrame(rows, columns=[c.name for c in node_events.columns])

    @staticmethod
    def _row(result: ThreadResult) -> dict[str, Any]:
        # a shallow read of the fields (events are rows of their own): asdict would deep-copy
        # every value, and `_jsonable` builds what is stored anyway
        row = {c: getattr(result, c) for c in _RESULT_COLUMNS if hasattr(result, c)}
        for key in ("input", "expected", "final_values", "scores", "score_errors", "change"):
            row[key] = _jsonable(row[key])
        row["node_timings"] = _jsonable(row["node_timings"])
        row["error"] = _text(row["error"])
        row["started_at"] = _ts(result.started_at)
        row["finished_at"] = _ts(result.finished_at)
        return {c: row.get(c) for c in _RESULT_COLUMNS}

    def statuses(
        self, workflow: str, combo: str | None = None, lineage: str = MAIN_LINEAGE
    ) -> dict[str, tuple[str, str | None]]:
        """`thread_id -> (status, code version)` of the stored threads of a workflow (and combo)."""
        query = sa.select(
            thread_results.c.thread_id, thread_results.c.status, thread_results.c.code_version
        ).where(thread_results.c.workflow == workflow, thread_results.c.lineage == lineage)
        if combo is not None:
            query = query.where(thread_results.c.combo == combo)
        with self._begin() as conn:
            return {row[0]: (row[1], row[2]) for row in conn.execute(query)}

    def statuses_of(self, thread_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """`thread_id -> (status, code version)` of the given threads that are stored."""
        found: dict[str, tuple[str, str | None]] = {}
        with self._begin() as conn:
            for start in range(0, len(thread_ids), 500):
                query = sa.select(
                    thread_results.c.thread_id,
                    thread_results.c.status,
                    thread_results.c.code_version,
                ).where(thread_results.c.thread_id.in_(list(thread_ids[start : start + 500])))
                found.update((row[0], (row[1], row[2])) for row in conn.execute(query))
        return found

    def share_candidates(
        self, workflow: str, case_ids: Sequence[str], finished_after: float | None = None
    ) -> list[dict[str, Any]]:
        """The succeeded main threads of these cases that recorded a path (and finished after
        `finished_after`, a Unix time): those a new thread of the same case may share a
        prefix with (`prefixes`)."""
        columns = [
            thread_results.c[name]
            for name in (
                "thread_id", "case_id", "trial", "input", "path", "node_versions",
                "node_timings", "node_usage",
            )
        ]  # fmt: skip
        rows: list[dict[str, Any]] = []
        with self._begin() as conn:
            for start in range(0, len(case_ids), 500):
                query = sa.select(*columns).where(
                    thread_results.c.workflow == workflow,
                    thread_results.c.lineage == MAIN_LINEAGE,
                    thread_results.c.status == SUCCEEDED,
                    thread_results.c.path.is_not(None),
                    thread_results.c.case_id.in_(list(case_ids[start : start + 500])),
                )
                if finished_after is not None:
                    query = query.where(thread_results.c.finished_at >= _ts(finished_after))
                rows.extend(dict(r) for r in conn.execute(query).mappings())
        return rows

    def get_result(self, thread_id: str) -> dict[str, Any] | None:
        with self._begin() as conn:
            row = (
                conn.execute(
                    sa.select(thread_results).where(thread_results.c.thread_id == thread_id)
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def get_results(
        self, thread_ids: Sequence[str], columns: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The stored rows of many threads (only `columns` of them, if given), by thread id,
        in a few queries."""
        chosen = [thread_results.c[c] for c in {"thread_id", *columns}] if columns else None
        rows: dict[str, dict[str, Any]] = {}
        with self._begin() as conn:
            for start in range(0, len(thread_ids), 500):
                chunk = list(thread_ids[start : start + 500])
                query = sa.select(*(chosen or [thread_results])).where(
                    thread_results.c.thread_id.in_(chunk)
                )
                rows.update((r["thread_id"], dict(r)) for r in conn.execute(query).mappings())
        return rows

    def results_frame(
        self,
        workflow: str,
        combos: Iterable[str] | None = None,
        lineage: str | None = MAIN_LINEAGE,
        status: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """The stored threads of a workflow as a DataFrame (one row per thread).

        `lineage=None` includes forks; `MAIN_LINEAGE` (the default) only the original threads.
        `columns`: only these (the JSON ones — final values, paths — cost the most to read).
        """
        chosen = [thread_results.c[c] for c in columns] if columns else list(thread_results.c)
        query = sa.select(*chosen).where(thread_results.c.workflow == workflow)
        if combos is not None:
            query = query.where(thread_results.c.combo.in_(list(combos)))
        if lineage is not None:
            query = query.where(thread_results.c.lineage == lineage)
        if status is not None:
            query = query.where(thread_results.c.status == status)
        query = query.order_by(
            thread_results.c.combo, thread_results.c.case_id, thread_results.c.id
        )
        with self._begin() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return pd.DataFrame(rows, columns=[c.name for c in chosen])

    def combos(self, workflow: str, lineage: str | None = MAIN_LINEAGE) -> list[str]:
        """The combos a workflow has stored threads of (one `SELECT DISTINCT`: a sensor tick
        asking it stays cheap whatever the number of threads)."""
        query = sa.select(thread_results.c.combo).distinct()
        query = query.where(thread_results.c.workflow == workflow)
        if lineage is not None:
            query = query.where(thread_results.c.lineage == lineage)
        with self._begin() as conn:
            return sorted(row[0] for row in conn.execute(query))

    def count(self, workflow: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(thread_results)
        if workflow is not None:
            query = query.where(thread_results.c.workflow == workflow)
        with self._begin() as conn:
            return int(conn.execute(query).scalar() or 0)

    # -- rerun requests ----------------------------------------------------------------------

    def add_rerun_request(self, request: RerunRequest, status: str = PENDING) -> int:
        """Store a request (validated by the caller, see `reruns.create_rerun_request`)."""
        now = datetime.now(UTC)
        values = request.model_dump()
        values["state_patch"] = _jsonable(values["state_patch"])
        with self._begin() as conn:
            result = conn.execute(
                rerun_requests.insert().values(
                    **{k: _text(v) for k, v in values.items()},
                    status=status,
                    created_at=now,
                    updated_at=now,
                )
            )
            return int(result.inserted_primary_key[0])

    def rerun_requests(
        self, status: str | None = None, after_id: int = 0, limit: int | None = None
    ) -> list[StoredRerunRequest]:
        """Stored requests, oldest (lowest id) first; with `status`, only those."""
        query = sa.select(rerun_requests).where(rerun_requests.c.id > after_id)
        if status is not None:
            query = query.where(rerun_requests.c.status == status)
        query = query.order_by(rerun_requests.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self._begin() as conn:
            return [StoredRerunRequest(**r) for r in conn.execute(query).mappings()]

    def get_rerun_request(self, request_id: int) -> StoredRerunRequest:
        with self._begin() as conn:
            row = (
                conn.execute(sa.select(rerun_requests).where(rerun_requests.c.id == request_id))
                .mappings()
                .first()
            )
        if row is None:
            raise WTBError(f"rerun request {request_id} does not exist")
        return StoredRerunRequest(**row)

    def update_rerun_request(self, request_id: int, **fields: Any) -> None:
        with self._begin() as conn:
            conn.execute(
                rerun_requests.update()
                .where(rerun_requests.c.id == request_id)
                .values(**{k: _text(v) for k, v in fields.items()}, updated_at=datetime.now(UTC))
            )
