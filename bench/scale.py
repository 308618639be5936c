"""Scale bench: the comparison of a workflow with a million stored threads, in bounded memory.

    .venv/bin/python -m bench.scale                  # 1,000,000 and 10,000 rows
    .venv/bin/python -m bench.scale --rows 2000      # a smoke test

For each row count it creates a PostgreSQL database of its own on the local server, fills
the results table in bulk (one INSERT … SELECT over generate_series: 10 combos × N/50 cases
× 5 trials, 3 % failed, 1 % timed out, 1 % interrupted, two metrics, tokens and cost, and a
~1.3 KB `final_values` of incompressible text, so that loading the rows would cost what it
costs in production), then runs `comparison_queries.compare_stored` in a child process and
prints its wall time (and the part of it spent reading and aggregating, before the statistics)
and peak RSS (the child's own `ru_maxrss`; the child's RSS before the
comparison, after its imports, is shown beside it). With `--in-memory-up-to N` the old path
(`ResultsStore.results_frame` + `comparison.compare`) runs too for row counts up to N, for
contrast. Every database is dropped at the end, also after an error.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKFLOW = "scale"
COMBOS = 10
TRIALS = 5
STATE_MD5S = 40  # 32 hex characters each: a final state of ~1.3 KB that does not compress
RSS_TARGET_MB = 1024


@dataclass
class Measurement:
    rows: int
    path: str
    table_mb: float
    fill_s: float
    wall_s: float
    aggregate_s: float
    rss_before_mb: float
    peak_rss_mb: float
    labels: int
    cases: int


def fill_sql(rows: int) -> str:
    """The INSERT … SELECT that writes `rows` synthetic thread results (ids 0 … rows − 1)."""
    cases = -(-rows // (COMBOS * TRIALS))
    state = " || ".join(f"md5(g::text || '{k}')" for k in range(STATE_MD5S))
    return f"""
    INSERT INTO wtb_thread_results (
        workflow, combo, case_id, lineage, thread_id, status, input, expected, final_values,
        scores, score_errors, error, node_timings, nodes_executed, checkpoints,
        first_checkpoint_id, last_checkpoint_id, latency_s, attempts, executor, trial, path,
        tokens_in, tokens_out, cost_usd
    )
    SELECT
        '{WORKFLOW}', combo, case_id, '',
        '{WORKFLOW}/' || combo || '/' || case_id || CASE WHEN trial > 0 THEN '#t' || trial
            ELSE '' END,
        status,
        jsonb_build_object('question', 'question of ' || case_id),
        jsonb_build_object('answer', md5(case_id)),
        jsonb_build_object('answer', substr(state, 1, 256), 'context', substr(state, 257)),
        CASE WHEN status = 'failed' THEN '{{}}'::jsonb ELSE jsonb_build_object(
            'exact', CASE WHEN random() < 0.5 + 0.02 * combo_index THEN 1.0 ELSE 0.0 END,
            'f1', round(random()::numeric, 4)) END,
        '{{}}'::jsonb,
        CASE WHEN status = 'succeeded' THEN NULL ELSE 'boom' END,
        jsonb_build_object('retrieve', jsonb_build_array(0.1), 'generate', jsonb_build_array(0.4)),
        3, 4, 'cp-first', 'cp-last',
        0.2 + 3 * random(), 1, 'ray', trial,
        jsonb_build_array(jsonb_build_array('cp-first', jsonb_build_array('retrieve'))),
        tokens_in, tokens_in / 3, tokens_in * 2e-6
    FROM (
        SELECT
            g,
            g % {COMBOS} AS combo_index,
            CASE WHEN g % {COMBOS} = 0 THEN 'baseline'
                ELSE 'generate=v' || (g % {COMBOS}) END AS combo,
            'case-' || lpad(((g / {COMBOS}) % {cases})::text, 6, '0') AS case_id,
            g / ({COMBOS} * {cases}) AS trial,
            CASE WHEN r < 0.03 THEN 'failed' WHEN r < 0.04 THEN 'timed_out'
                WHEN r < 0.05 THEN 'interrupted' ELSE 'succeeded' END AS status,
            200 + (random() * 800)::int AS tokens_in,
            {state} AS state
        FROM (SELECT g, random() AS r FROM generate_series(0, {rows - 1}) AS g) AS numbered
    ) AS threads
    """


def fill(url: str, rows: int) -> tuple[float, float]:
    """Create the schema and write `rows` threads; returns (seconds, table size in MB)."""
    from wtb_dagster.store import ResultsStore

    store = ResultsStore(url)
    store.setup()
    started = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        conn.execute(sa.text(fill_sql(rows)))
    with store.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text("VACUUM ANALYZE wtb_thread_results")
        )
        size = conn.execute(
            sa.text("SELECT pg_total_relation_size('wtb_thread_results')")
        ).scalar_one()
    store.close()
    return time.perf_counter() - started, size / 2**20


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(url: str, path: str, resamples: int) -> None:
    """Run one comparison and print its figures as JSON (the parent reads the last line)."""
    from wtb_dagster.comparison import aggregate, comparison_from
    from wtb_dagster.comparison_queries import stored_aggregates
    from wtb_dagster.store import ResultsStore

    store = ResultsStore(url)
    store.setup()
    before = _rss_mb()
    started = time.perf_counter()
    # the two halves of `compare_stored` (or of `compare`), timed apart: reading and
    # aggregating the rows, then the statistics over cases (bootstrap, tests)
    if path == "database":
        aggregates = stored_aggregates(store, WORKFLOW)
    else:
        aggregates = aggregate(store.results_frame(WORKFLOW))
    aggregated = time.perf_counter()
    comparison = comparison_from(aggregates, n_resamples=resamples)
    finished = time.perf_counter()
    figures = {
        "wall_s": finished - started,
        "aggregate_s": aggregated - started,
        "rss_before_mb": before,
        "peak_rss_mb": _rss_mb(),
        "labels": int(comparison.summary.combo.nunique()),
        "cases": int(comparison.per_case.shape[1]),
    }
    print(json.dumps(figures))


def measure(url: str, path: str, resamples: int) -> dict:
    command = [sys.executable, "-m", "bench.scale", "--child", url, "--path", path]
    command += ["--resamples", str(resamples)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the {path} comparison failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(
    rows: Sequence[int], admin_url: str, resamples: int, in_memory_up_to: int
) -> list[Measurement]:
    """Fill one database per row count, measure the comparison(s), drop the database."""
    from wtb_dagster.store import normalise_url

    admin = sa.create_engine(normalise_url(admin_url), isolation_level="AUTOCOMMIT")
    host = admin_url.rsplit("/", 1)[0]
    results = []
    try:
        for count in rows:
            name = f"wtb_scale_{uuid.uuid4().hex[:12]}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                url = f"{host}/{name}"
                fill_s, table_mb = fill(url, count)
                paths = ["database"] + (["in memory"] if count <= in_memory_up_to else [])
                for path in paths:
                    got = measure(url, path, resamples)
                    results.append(Measurement(count, path, table_mb, fill_s, **got))
                    print(_line(results[-1]), flush=True)
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
    return results


HEADER = (
    "| rows | path | table MB | fill s | compare wall s | of which reading + aggregating s | "
    "RSS before MB | peak RSS MB | labels × cases |"
)


def _line(m: Measurement) -> str:
    return (
        f"| {m.rows:,} | {m.path} | {m.table_mb:,.0f} | {m.fill_s:.1f} | {m.wall_s:.1f} | "
        f"{m.aggregate_s:.1f} | "
        f"{m.rss_before_mb:.0f} | {m.peak_rss_mb:.0f} | {m.labels} × {m.cases:,} |"
    )


def table(results: Sequence[Measurement]) -> str:
    """The measurements as a markdown table."""
    rule = "| " + " | ".join("---" for _ in HEADER.strip("|").split("|")) + " |"
    return "\n".join([HEADER, rule, *(_line(m) for m in results)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000])
    parser.add_argument("--admin-url", default=ADMIN_URL, help="a database to create others from")
    parser.add_argument("--resamples", type=int, default=None, help="bootstrap resamples")
    parser.add_argument(
        "--in-memory-up-to",
        type=int,
        default=10_000,
        help="also time the in-memory path (results_frame + compare) up to this many rows",
    )
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="database", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.resamples is None:
        from wtb_dagster.statistics import N_RESAMPLES

        args.resamples = N_RESAMPLES
    if args.child:
        child(args.child, args.path, args.resamples)
        return 0
    print(f"{HEADER}\n(filling and comparing; one line per measurement)", flush=True)
    results = run(args.rows, args.admin_url, args.resamples, args.in_memory_up_to)
    print()
    print(table(results))
    worst = max((m.peak_rss_mb for m in results if m.path == "database"), default=0.0)
    verdict = "within" if worst <= RSS_TARGET_MB else "OVER"
    print(f"\npeak RSS of the database path: {worst:.0f} MB, {verdict} {RSS_TARGET_MB} MB")
    return 0 if worst <= RSS_TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
