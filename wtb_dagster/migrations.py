"""The results store's schema history: one frozen function per version, applied in order.

Each migration spells out the tables *as they were at that version*; none refers to the live
table objects in `store`, so a database built fresh and one upgraded from any older version
end up identical (a test builds version 1, upgrades it and compares). Never edit an applied
migration: append one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

SCHEMA_LOCK_KEY = 748214  # PostgreSQL advisory lock: one process migrates at a time

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _v1_result_columns() -> list[sa.Column]:
    """The columns of `wtb_thread_results` at version 1 (frozen: later versions add to them)."""
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("combo", sa.String(500), nullable=False),
        sa.Column("case_id", sa.String(200), nullable=False),
        sa.Column("lineage", sa.String(200), nullable=False, server_default=""),
        sa.Column("thread_id", sa.String(1000), nullable=False, unique=True),
        sa.Column("parent_thread_id", sa.String(1000)),
        sa.Column("parent_checkpoint_id", sa.String(100)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("input", _JSON),
        sa.Column("expected", _JSON),
        sa.Column("final_values", _JSON),
        sa.Column("scores", _JSON),
        sa.Column("score_errors", _JSON),
        sa.Column("error", sa.Text),
        sa.Column("node_timings", _JSON),
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
        sa.Column("change", _JSON),
        sa.Column("code_version", sa.String(40)),
    ]


def _v1_result_keys() -> list[sa.SchemaItem]:
    return [
        sa.UniqueConstraint("workflow", "combo", "case_id", "lineage", name="uq_wtb_thread_key"),
        *_result_indexes(),
    ]


def _result_indexes() -> list[sa.Index]:
    return [
        sa.Index("ix_wtb_thread_workflow_combo", "workflow", "combo", "lineage"),
        sa.Index("ix_wtb_thread_workflow_status", "workflow", "status"),
        sa.Index("ix_wtb_thread_parent", "parent_thread_id"),
    ]


def _v1_results_and_requests(conn: Connection) -> None:
    """Version 1: thread results and rerun requests."""
    frozen = sa.MetaData()
    sa.Table("wtb_thread_results", frozen, *_v1_result_columns(), *_v1_result_keys())
    sa.Table(
        "wtb_rerun_requests",
        frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("thread_ids", _JSON),
        sa.Column("combo", sa.String(500)),
        sa.Column("status_filter", sa.String(20)),
        sa.Column("checkpoint_id", sa.String(100)),
        sa.Column("before_node", sa.String(200)),
        sa.Column("after_node", sa.String(200)),
        sa.Column("variant", sa.String(500)),
        sa.Column("state_patch", _JSON),
        sa.Column("reason", sa.Text),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("dagster_run_id", sa.String(100)),
        sa.Column("result_thread_ids", _JSON),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_wtb_rerun_status", "status", "id"),
    )
    frozen.create_all(conn)


def _v2_thread_leases(conn: Connection) -> None:
    """Version 2: one lease per thread being executed, so overlapping runs never share one."""
    frozen = sa.MetaData()
    sa.Table(
        "wtb_thread_leases",
        frozen,
        sa.Column("thread_id", sa.String(1000), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Index("ix_wtb_lease_owner", "owner"),
    )
    frozen.create_all(conn)


def _v3_trials(conn: Connection) -> None:
    """Version 3: a `trial` per thread; the key of a result is (workflow, combo, case, trial,
    lineage). Existing rows are trial 0 (their thread ids stay as they were)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("ALTER TABLE wtb_thread_results ADD COLUMN trial INTEGER DEFAULT '0' NOT NULL")
        )
        conn.execute(sa.text("ALTER TABLE wtb_thread_results DROP CONSTRAINT uq_wtb_thread_key"))
        conn.execute(
            sa.text(
                "ALTER TABLE wtb_thread_results ADD CONSTRAINT uq_wtb_thread_key "
                "UNIQUE (workflow, combo, case_id, trial, lineage)"
            )
        )
        return
    # SQLite cannot change a table's constraints: rebuild the table and copy the rows.
    for index in _result_indexes():
        conn.execute(sa.text(f"DROP INDEX {index.name}"))
    conn.execute(sa.text("ALTER TABLE wtb_thread_results RENAME TO wtb_thread_results_v2"))
    frozen = sa.MetaData()
    columns = _v1_result_columns()
    names = ", ".join(c.name for c in columns)
    sa.Table(
        "wtb_thread_results",
        frozen,
        *columns,
        sa.Column("trial", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint(
            "workflow", "combo", "case_id", "trial", "lineage", name="uq_wtb_thread_key"
        ),
        *_result_indexes(),
    )
    frozen.create_all(conn)
    conn.execute(
        sa.text(
            f"INSERT INTO wtb_thread_results ({names}, trial) "
            f"SELECT {names}, 0 FROM wtb_thread_results_v2"
        )
    )
    conn.execute(sa.text("DROP TABLE wtb_thread_results_v2"))


def _v4_judge_cache(conn: Connection) -> None:
    """Version 4: the judge's replies by request (`judge`), with the usage paid for them."""
    frozen = sa.MetaData()
    sa.Table(
        "wtb_judge_cache",
        frozen,
        sa.Column("cache_key", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("workflow", sa.String(200)),
        sa.Column("thread_id", sa.String(1000)),
        sa.Column("request", _JSON),
        sa.Column("reply", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("calls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tokens_in", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tokens_out", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float),
        sa.Column("latency_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_wtb_judge_workflow", "workflow", "kind"),
    )
    frozen.create_all(conn)


def _v5_shared_prefixes(conn: Connection) -> None:
    """Version 5: what a thread shares with another (`prefixes`): the thread whose checkpoints
    it starts from and the last shared checkpoint, its path (checkpoint id → nodes run next)
    and the code version of every node it ran under."""
    for name, kind in (
        ("shared_from", "VARCHAR(1000)"),
        ("shared_checkpoint_id", "VARCHAR(100)"),
        ("path", "JSONB" if conn.dialect.name == "postgresql" else "JSON"),
        ("node_versions", "JSONB" if conn.dialect.name == "postgresql" else "JSON"),
    ):
        conn.execute(sa.text(f"ALTER TABLE wtb_thread_results ADD COLUMN {name} {kind}"))


def _v6_node_events(conn: Connection) -> None:
    """Version 6: node telemetry (`telemetry`). One row per node execution of a thread (the
    audit trail: attempt, step, times, status, error, tokens, cost), and each thread's
    chat-model tokens and cost on its result row (cost NULL: unknown, a model had no price)."""
    frozen = sa.MetaData()
    sa.Table(
        "wtb_node_events",
        frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("thread_id", sa.String(1000), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("combo", sa.String(500), nullable=False),
        sa.Column("case_id", sa.String(200), nullable=False),
        sa.Column("trial", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lineage", sa.String(200), nullable=False, server_default=""),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("step", sa.Integer),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("tokens_in", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tokens_out", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float),
        sa.Column("usage", _JSON),
        sa.Column("run_id", sa.String(100)),
        sa.UniqueConstraint("thread_id", "attempt", "seq", name="uq_wtb_node_event"),
        sa.Index("ix_wtb_event_workflow_combo", "workflow", "combo"),
    )
    frozen.create_all(conn)
    for name, kind in (
        ("tokens_in", "INTEGER DEFAULT '0' NOT NULL"),
        ("tokens_out", "INTEGER DEFAULT '0' NOT NULL"),
        ("cost_usd", "FLOAT"),
    ):
        conn.execute(sa.text(f"ALTER TABLE wtb_thread_results ADD COLUMN {name} {kind}"))


def _v7_node_usage(conn: Connection) -> None:
    """Version 7: each node's chat-model usage per execution, so a thread that shares a
    prefix counts the shared nodes' tokens and cost as its own (as it does their time)."""
    kind = "JSONB" if conn.dialect.name == "postgresql" else "JSON"
    conn.execute(sa.text(f"ALTER TABLE wtb_thread_results ADD COLUMN node_usage {kind}"))


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_results_and_requests,
    _v2_thread_leases,
    _v3_trials,
    _v4_judge_cache,
    _v5_shared_prefixes,
    _v6_node_events,
    _v7_node_usage,
]
LATEST = len(MIGRATIONS)

_versions = sa.Table(
    "wtb_schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def current_version(conn: Connection) -> int:
    """The newest applied version (0 for an empty database)."""
    if not sa.inspect(conn).has_table(_versions.name):
        return 0
    return int(conn.execute(sa.select(sa.func.max(_versions.c.version))).scalar() or 0)


def migrate(conn: Connection, target: int = LATEST) -> int:
    """Apply the migrations after the stored version up to `target`, in the caller's
    transaction; returns the version reached. The caller serialises concurrent migrators."""
    _versions.create(conn, checkfirst=True)
    version = current_version(conn)
    for number, step in enumerate(MIGRATIONS[:target], start=1):
        if number <= version:
            continue
        step(conn)
        conn.execute(_versions.insert().values(version=number, applied_at=datetime.now(UTC)))
        version = number
    return version
