"""Comparisons computed in the results database: nothing per thread is loaded.

`compare_stored` gives the comparison `comparison.compare` gives over the same threads, but
builds its `Aggregates` with SQL (SQLAlchemy Core, for SQLite and PostgreSQL alike), so its
memory grows with combos × cases, not with threads × state size:

- the metric names: the distinct keys of the scored threads' `scores` (one scan);
- per (combo, case): threads, failures, interrupted, token and cost sums, and per metric the
  count, the sum (the mean is sum / count, as pandas divides: sums of 0/1 or other exactly
  representable scores are exact, so ties and zero differences of the paired tests come out
  as in memory), and the sums of (value − the case's minimum) and its square for the
  variance (shifted by the minimum: no cancellation, and identical trials' spread exactly 0).
  A failed or timed-out thread's value is 0 and an interrupted one has none
  (`comparison.scored_threads`, the rule, written once more as a SQL CASE; a test pins the
  two equal);
- per (combo, metric): the latency p50 and p95 of the threads with a value for the metric —
  PostgreSQL's `percentile_cont`; SQLite has no percentile, so a window query ranks each
  combo's latencies and returns only the one or two rows each percentile interpolates
  between (the sort happens in SQLite, which spills to its temp store; Python gets ≤ 4 rows
  per combo and metric).

Forks are few (one per rerun thread) and their row labels follow parent chains and change
descriptions (`fork_labels`); they are read with their narrow columns only (no final values,
paths or inputs) and aggregated in memory by `comparison.aggregate_forks`.

Only the floating-point order of summation differs from the in-memory path: means, variances
and costs agree to the last few bits, counts, tests and verdicts exactly.

>>> print(compare_stored(store, "demo").to_markdown())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wtb_dagster.comparison import (
    CASE_USAGE_COLUMNS,
    Aggregates,
    Comparison,
    aggregate_forks,
    comparison_from,
)
from wtb_dagster.matrix import BASELINE
from wtb_dagster.statistics import ALPHA, N_RESAMPLES, SEED, check_correction
from wtb_dagster.store import ResultsStore, thread_results
from wtb_dagster.threads import FAILED, INTERRUPTED, MAIN_LINEAGE, TIMED_OUT

T = thread_results.c
BROKEN = (FAILED, TIMED_OUT)
QUANTILES = {"p50": 0.5, "p95": 0.95}
# what a fork's label and its aggregates read: never final values, paths or inputs
FORK_COLUMNS = [
    "thread_id", "parent_thread_id", "lineage", "change", "combo", "case_id", "trial",
    "status", "scores", "latency_s", "tokens_in", "tokens_out", "cost_usd",
]  # fmt: skip
_CHUNK = 500


def compare_stored(
    store: ResultsStore,
    workflow: str,
    combos: Sequence[str] | None = None,
    include_forks: bool = False,
    baseline: str = BASELINE,
    primary_metric: str | None = None,
    correction: str = "holm",
    alpha: float = ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    """The comparison of a workflow's stored threads, aggregated in the results database.

    `combos`: only these main-lineage combos (default: every stored one); with
    `include_forks`, every fork of the workflow is a row of its own too. The other arguments
    are those of `comparison.comparison_from`.
    """
    check_correction(correction)
    aggregates = stored_aggregates(store, workflow, combos, include_forks)
    return comparison_from(
        aggregates, baseline, primary_metric, correction, alpha, n_resamples, seed
    )


def stored_aggregates(
    store: ResultsStore,
    workflow: str,
    combos: Sequence[str] | None = None,
    include_forks: bool = False,
) -> Aggregates:
    """The `comparison.Aggregates` of a workflow's stored threads (see the module doc)."""
    store.setup()
    main = sa.and_(T.workflow == workflow, T.lineage == MAIN_LINEAGE)
    if combos is not None:
        main = sa.and_(main, T.combo.in_(list(combos)))
    forks = sa.and_(T.workflow == workflow, T.lineage != MAIN_LINEAGE)
    with store.engine.connect() as conn:
        metrics = metric_names(conn, sa.or_(main, forks) if include_forks else main)
        aggregates = _main_aggregates(conn, main, metrics)
        if include_forks:
            aggregates = aggregates.combined(_fork_aggregates(conn, forks, main, metrics))
    return aggregates


def thread_counts(store: ResultsStore, workflow: str) -> pd.DataFrame:
    """Per (combo, forked): stored threads and interrupted ones, counted in the database."""
    forked = (T.lineage != MAIN_LINEAGE).label("forked")
    query = (
        sa.select(
            T.combo,
            forked,
            sa.func.count().label("threads"),
            _count_if(T.status == INTERRUPTED).label("interrupted"),
        )
        .where(T.workflow == workflow)
        .group_by(T.combo, forked)
        .order_by(T.combo)
    )
    store.setup()
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["combo", "forked", "threads", "interrupted"])
    return frame.astype({"forked": bool, "threads": int, "interrupted": int})


def metric_names(conn: Connection, scope: Any) -> list[str]:
    """The sorted distinct keys of the `scores` of the non-interrupted threads in `scope`."""
    # only objects reach the set-returning function: jsonb_each raises on a JSON null
    objects = sa.case((_json_type(conn, T.scores) == "object", T.scores))
    each = "jsonb_each" if conn.dialect.name == "postgresql" else "json_each"
    keys = getattr(sa.func, each)(objects).table_valued("key", "value")
    query = (
        sa.select(keys.c.key)
        .select_from(thread_results)
        .join(keys, sa.true())
        .where(scope, T.status != INTERRUPTED)
        .distinct()
    )
    return sorted(str(k) for (k,) in conn.execute(query) if k is not None)


def _json_type(conn: Connection, column: Any) -> Any:
    name = "jsonb_typeof" if conn.dialect.name == "postgresql" else "json_type"
    return getattr(sa.func, name)(column)


def _count_if(condition: Any) -> Any:
    return sa.func.sum(sa.case((condition, 1), else_=0))


def _value(metric: str) -> Any:
    """SQL: the value a thread counts with on `metric` — the rule of `scored_threads`."""
    return sa.case(
        (T.status.in_(BROKEN), sa.literal(0.0, sa.Float)),
        (T.status == INTERRUPTED, sa.null()),
        else_=T.scores[metric].as_float(),
    )


def _main_aggregates(conn: Connection, scope: Any, metrics: list[str]) -> Aggregates:
    """The main-lineage threads in `scope`, aggregated per (combo, case) in one query."""
    values = [_value(m).label(f"v{i}") for i, m in enumerate(metrics)]
    base = sa.select(
        T.combo, T.case_id, T.status, T.tokens_in, T.tokens_out, T.cost_usd, *values
    ).where(scope)
    scored = base.cte("scored")
    lows = (
        sa.select(
            scored.c.combo,
            scored.c.case_id,
            *[sa.func.min(scored.c[f"v{i}"]).label(f"lo{i}") for i in range(len(metrics))],
        )
        .group_by(scored.c.combo, scored.c.case_id)
        .subquery("lows")
    )
    per_metric = []
    for i in range(len(metrics)):
        shifted = scored.c[f"v{i}"] - lows.c[f"lo{i}"]
        per_metric += [
            sa.func.count(scored.c[f"v{i}"]),
            sa.func.sum(scored.c[f"v{i}"]),
            sa.func.sum(shifted),
            sa.func.sum(shifted * shifted),
        ]
    query = (
        sa.select(
            scored.c.combo,
            scored.c.case_id,
            sa.func.count(),
            _count_if(scored.c.status.in_(BROKEN)),
            _count_if(scored.c.status == INTERRUPTED),
            sa.func.coalesce(sa.func.sum(scored.c.tokens_in), 0),
            sa.func.coalesce(sa.func.sum(scored.c.tokens_out), 0),
            sa.func.count(scored.c.cost_usd),
            sa.func.sum(scored.c.cost_usd),
            *per_metric,
        )
        .select_from(
            scored.join(
                lows,
                sa.and_(scored.c.combo == lows.c.combo, scored.c.case_id == lows.c.case_id),
            )
        )
        .group_by(scored.c.combo, scored.c.case_id)
    )
    rows = conn.execute(query).all()
    if not rows:
        return Aggregates.empty()
    head = ["combo", "case_id", "threads", "failures", "interrupted", "tokens_in_total",
            "tokens_out_total", "costs_known", "cost_sum"]  # fmt: skip
    columns = head + [f"{k}{i}" for i in range(len(metrics)) for k in ("n", "sum", "s1", "s2")]
    cases = pd.DataFrame(rows, columns=columns)
    counts = (
        cases.groupby("combo", sort=True)[["threads", "failures", "interrupted"]].sum().astype(int)
    )
    case_stats = _case_stats(cases, metrics)
    return Aggregates(
        # a metric only ever stored as null has no value anywhere: not compared (as in memory)
        metrics=sorted(case_stats.index.get_level_values("metric").unique()),
        case_stats=case_stats,
        latency=_latency(conn, scope, metrics),
        counts=counts,
        case_usage=_case_usage(cases),
    )


def _case_stats(cases: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Index (combo, metric, case_id): mean, var, count — what pandas' groupby agg gives."""
    parts = []
    for i, metric in enumerate(metrics):
        n = cases[f"n{i}"].astype(int)
        has = n > 0
        part = cases.loc[has, ["combo", "case_id"]].assign(metric=metric)
        n = n[has].to_numpy()
        total = cases.loc[has, f"sum{i}"].astype(float).to_numpy()
        s1 = cases.loc[has, f"s1{i}"].astype(float).to_numpy()
        s2 = cases.loc[has, f"s2{i}"].astype(float).to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            # sums of shifted values: exact 0 spread for identical trials; never below 0
            var = np.where(n >= 2, np.maximum(s2 - s1 * s1 / n, 0.0) / (n - 1), math.nan)
        parts.append(part.assign(mean=total / n, var=var, count=n))
    if not parts:
        return Aggregates.empty().case_stats
    stats = pd.concat(parts, ignore_index=True)
    stats = stats.astype({"mean": float, "var": float, "count": "int64"})
    return stats.set_index(["combo", "metric", "case_id"])[["mean", "var", "count"]].sort_index()


def _case_usage(cases: pd.DataFrame) -> pd.DataFrame:
    """Per (combo, case): mean tokens and cost over the trials, their sums (`costs` rules)."""
    threads = cases.threads.astype(int)
    known = cases.costs_known.astype(int) == threads  # one unknown cost: the case's is unknown
    total = cases.cost_sum.astype(float).where(known, math.nan)
    usage = pd.DataFrame(
        {
            "combo": cases.combo,
            "case_id": cases.case_id,
            "threads": threads,
            "tokens_in": cases.tokens_in_total.astype(float) / threads,
            "tokens_out": cases.tokens_out_total.astype(float) / threads,
            "cost_usd": total / threads,
            "tokens_in_total": cases.tokens_in_total.astype(int),
            "tokens_out_total": cases.tokens_out_total.astype(int),
            "cost_total_usd": total,
        }
    )
    return usage[CASE_USAGE_COLUMNS]


def _latency(conn: Connection, scope: Any, metrics: list[str]) -> pd.DataFrame:
    """Index (combo, metric): p50, p95 of the latency of the threads with a value (linear
    interpolation between the closest ranks, as pandas and `percentile_cont` do)."""
    if not metrics:
        return Aggregates.empty().latency
    if conn.dialect.name == "postgresql":
        rows = _latency_postgres(conn, scope, metrics)
    else:
        rows = [r for i, m in enumerate(metrics) for r in _latency_ranked(conn, scope, i, m)]
    frame = pd.DataFrame(rows, columns=["combo", "metric", "p50", "p95"]).dropna(
        subset=["p50", "p95"], how="all"
    )
    return frame.astype({"p50": float, "p95": float}).set_index(["combo", "metric"]).sort_index()


def _latency_postgres(conn: Connection, scope: Any, metrics: list[str]) -> list[tuple]:
    columns = [
        sa.func.percentile_cont(q).within_group(sa.case((_value(m).is_not(None), T.latency_s)))
        for m in metrics
        for q in QUANTILES.values()
    ]
    query = sa.select(T.combo, *columns).where(scope).group_by(T.combo)
    rows = []
    for combo, *values in conn.execute(query):
        for i, metric in enumerate(metrics):
            rows.append((combo, metric, values[2 * i], values[2 * i + 1]))
    return rows


def _latency_ranked(conn: Connection, scope: Any, index: int, metric: str) -> list[tuple]:
    """SQLite: each combo's latencies ranked; only the rows the percentiles need come back."""
    ranked = (
        sa.select(
            T.combo,
            T.latency_s,
            (sa.func.row_number().over(partition_by=T.combo, order_by=T.latency_s) - 1).label(
                "rank"
            ),
            sa.func.count().over(partition_by=T.combo).label("size"),
        )
        .where(scope, _value(metric).is_not(None))
        .subquery(f"ranked{index}")
    )
    wanted = []
    for q in QUANTILES.values():
        floor = sa.cast((ranked.c.size - 1) * q, sa.Integer)  # ranks are ≥ 0: cast truncates
        wanted += [ranked.c.rank == floor, ranked.c.rank == floor + 1]
    query = sa.select(ranked.c.combo, ranked.c.rank, ranked.c.size, ranked.c.latency_s).where(
        sa.or_(*wanted)
    )
    by_combo: dict[str, tuple[int, dict[int, float]]] = {}
    for combo, rank, size, latency in conn.execute(query):
        by_combo.setdefault(combo, (int(size), {}))[1][int(rank)] = float(latency)
    rows = []
    for combo, (size, at) in by_combo.items():
        rows.append((combo, metric, *(_interpolate(at, size, q) for q in QUANTILES.values())))
    return rows


def _interpolate(at: dict[int, float], size: int, q: float) -> float:
    """The q-quantile from the sorted values at ranks floor(q·(n−1)) and the next one."""
    position = q * (size - 1)
    low = int(position)
    fraction = position - math.floor(position)
    if fraction == 0 or low + 1 >= size:
        return at[low]
    return at[low] + (at[low + 1] - at[low]) * fraction


def _fork_aggregates(conn: Connection, forks: Any, main: Any, metrics: list[str]) -> Aggregates:
    """The forks, labelled by their parent chains, aggregated in memory (narrow columns)."""
    columns = [T[c] for c in FORK_COLUMNS]
    rows = [dict(r) for r in conn.execute(sa.select(*columns).where(forks)).mappings()]
    if not rows:
        return Aggregates.empty()
    # the main-lineage threads forked from: their labels start the forks' labels
    own = {r["thread_id"] for r in rows}
    parent_ids = sorted({r["parent_thread_id"] for r in rows} - own - {None})
    for start in range(0, len(parent_ids), _CHUNK):
        chunk = parent_ids[start : start + _CHUNK]
        query = sa.select(*columns).where(main, T.thread_id.in_(chunk))
        rows.extend(dict(r) for r in conn.execute(query).mappings())
    return aggregate_forks(pd.DataFrame(rows, columns=FORK_COLUMNS), metrics)
