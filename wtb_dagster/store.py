"""The results store: one row per thread, rerun requests; SQLite by default, PostgreSQL by URL.

The schema evolves as a numbered list of migrations applied from the stored version, like
LangGraph's own checkpoint tables: a handful of tables needs no migration framework.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from wtb_dagster.errors import ConfigError, WTBError
from wtb_dagster.threads import MAIN_LINEAGE, ThreadResult

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
    sa.UniqueConstraint("workflow", "combo", "case_id", "lineage", name="uq_wtb_thread_key"),
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

schema_versions = sa.Table(
    "wtb_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[thread_results, rerun_requests])


# Append a function per schema change; never edit an applied one.
MIGRATIONS = [_create_v1]

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


def _ts(seconds: float) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite:///", "postgresql+psycopg://")):
        return url
    raise ConfigError(
        f"results store URL {url!r} is not supported; use sqlite:///path.db or "
        "postgresql://user@host:port/db (setting WTB_RESULTS_URL)"
    )


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
            self.engine = sa.create_engine(self.url, pool_size=pool_size, pool_pre_ping=True)
        self._is_setup = False

    def setup(self) -> None:
        """Create or migrate the schema to the newest version (safe to call repeatedly)."""
        if self._is_setup:
            return
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(748214)"))
                metadata.create_all(conn, tables=[schema_versions])
                current = conn.execute(sa.select(sa.func.max(schema_versions.c.version))).scalar()
                for version, migrate in enumerate(MIGRATIONS, start=1):
                    if current is not None and version <= current:
                        continue
                    migrate(conn)
                    conn.execute(
                        schema_versions.insert().values(
                            version=version, applied_at=datetime.now(UTC)
                        )
                    )
        except sa.exc.OperationalError as exc:
            raise ConfigError(f"cannot open the results store at {self.url!r}: {exc.orig}") from exc
        self._is_setup = True

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.max(schema_versions.c.version))).scalar() or 0
            )

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        self.setup()
        with self.engine.begin() as conn:
            yield conn

    # -- thread results ----------------------------------------------------------------------

    def upsert_results(self, results: Iterable[ThreadResult]) -> int:
        """Insert or replace rows keyed by (workflow, combo, case, lineage), in one transaction."""
        rows = [self._row(r) for r in results]
        if not rows:
            return 0
        with self._begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(thread_results)
            statement = statement.on_conflict_do_update(
                index_elements=["workflow", "combo", "case_id", "lineage"],
                set_={c: statement.excluded[c] for c in _RESULT_COLUMNS},
            )
            for start in range(0, len(rows), 500):
                conn.execute(statement, rows[start : start + 500])
        return len(rows)

    @staticmethod
    def _row(result: ThreadResult) -> dict[str, Any]:
        row = result.to_dict()
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

    def get_results(self, thread_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored rows of many threads, by thread id, in a few queries."""
        rows: dict[str, dict[str, Any]] = {}
        with self._begin() as conn:
            for start in range(0, len(thread_ids), 500):
                chunk = list(thread_ids[start : start + 500])
                query = sa.select(thread_results).where(thread_results.c.thread_id.in_(chunk))
                rows.update((r["thread_id"], dict(r)) for r in conn.execute(query).mappings())
        return rows

    def results_frame(
        self,
        workflow: str,
        combos: Iterable[str] | None = None,
        lineage: str | None = MAIN_LINEAGE,
        status: str | None = None,
    ) -> pd.DataFrame:
        """The stored threads of a workflow as a DataFrame (one row per thread).

        `lineage=None` includes forks; `MAIN_LINEAGE` (the default) only the original threads.
        """
        query = sa.select(thread_results).where(thread_results.c.workflow == workflow)
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
        return pd.DataFrame(rows, columns=[c.name for c in thread_results.columns])

    def count(self, workflow: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(thread_results)
        if workflow is not None:
            query = query.where(thread_results.c.workflow == workflow)
        with self._begin() as conn:
            return int(conn.execute(query).scalar() or 0)

    # -- rerun requests ----------------------------------------------------------------------

    def add_rerun_request(self, **fields: Any) -> int:
        now = datetime.now(UTC)
        allowed = {c.name for c in rerun_requests.columns} - {"id", "created_at", "updated_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise WTBError(f"rerun request: unknown field(s) {', '.join(sorted(unknown))}")
        with self._begin() as conn:
            result = conn.execute(
                rerun_requests.insert().values(
                    **{
                        k: _jsonable(v) if k == "state_patch" else _text(v)
                        for k, v in fields.items()
                    },
                    created_at=now,
                    updated_at=now,
                )
            )
            return int(result.inserted_primary_key[0])

    def rerun_requests(self, status: str | None = None, after_id: int = 0) -> list[dict[str, Any]]:
        query = sa.select(rerun_requests).where(rerun_requests.c.id > after_id)
        if status is not None:
            query = query.where(rerun_requests.c.status == status)
        with self._begin() as conn:
            return [dict(r) for r in conn.execute(query.order_by(rerun_requests.c.id)).mappings()]

    def get_rerun_request(self, request_id: int) -> dict[str, Any]:
        with self._begin() as conn:
            row = (
                conn.execute(sa.select(rerun_requests).where(rerun_requests.c.id == request_id))
                .mappings()
                .first()
            )
        if row is None:
            raise WTBError(f"rerun request {request_id} does not exist")
        return dict(row)

    def update_rerun_request(self, request_id: int, **fields: Any) -> None:
        with self._begin() as conn:
            conn.execute(
                rerun_requests.update()
                .where(rerun_requests.c.id == request_id)
                .values(**{k: _text(v) for k, v in fields.items()}, updated_at=datetime.now(UTC))
            )
