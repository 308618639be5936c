"""The comparison aggregated in the results database equals the in-memory one, on SQLite and
on the real PostgreSQL, and never reads a thread's state."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import sqlalchemy as sa

from wtb_dagster.comparison import compare
from wtb_dagster.comparison_queries import compare_stored, thread_counts
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import (
    FAILED,
    INTERRUPTED,
    MAIN_LINEAGE,
    SUCCEEDED,
    TIMED_OUT,
    ThreadResult,
    fork_lineage,
    thread_id_for,
)

RESAMPLES = 999  # bootstrap resamples: the same seed on both paths, fewer for speed
COMBOS = ["baseline", "g=a", "g=b", "g=a+r=x"]
CASES = [f"case-{i:02d}" for i in range(18)]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/results.db"
    else:
        url = request.getfixturevalue("pg_url")
    store = ResultsStore(url)
    store.setup()
    yield store
    store.close()


def _thread(rng: random.Random, combo: str, case: str, trial: int, workflow: str = "w"):
    """One stored thread with every kind of row the comparison's rule treats apart."""
    roll = rng.random()
    status = SUCCEEDED
    if roll < 0.06:
        status = FAILED
    elif roll < 0.09:
        status = TIMED_OUT
    elif roll < 0.12:
        status = INTERRUPTED
    quality = {"baseline": 0.55, "g=a": 0.7, "g=b": 0.5, "g=a+r=x": 0.72}[combo]
    scores: dict = {}
    errors: dict = {}
    if status in (SUCCEEDED, TIMED_OUT, INTERRUPTED):  # a timed-out thread's scores are stale
        index = CASES.index(case)
        # deterministic cases: every trial scores alike (their spread must be exactly 0)
        deterministic = index % 3 == 0
        draw = random.Random(f"{combo}/{case}") if deterministic else rng
        scores = {
            "exact": float(draw.random() < quality),
            "f1": draw.random() * quality + 0.2,
            "judge": round(draw.random() * 4) / 4,
        }
        if rng.random() < 0.08:  # the judge scorer raised: the metric is missing
            del scores["judge"]
            errors = {"judge": "ValueError: malformed reply"}
        if rng.random() < 0.04:  # a NaN score is stored as null and does not count
            scores["f1"] = float("nan")
    priced = combo != "g=b" or rng.random() < 0.9  # some g=b threads used an unpriced model
    tokens_in = rng.randrange(100, 900)
    return ThreadResult(
        workflow=workflow,
        combo=combo,
        case_id=case,
        thread_id=thread_id_for(workflow, combo, case, trial=trial),
        status=status,
        trial=trial,
        input={"question": f"q {case}"},
        final_values={"answer": "x" * 200, "documents": ["d" * 100] * 5},
        scores=scores,
        score_errors=errors,
        error=None if status == SUCCEEDED else "boom",
        latency_s=round(rng.uniform(0.1, 3.0), 3),
        tokens_in=tokens_in,
        tokens_out=tokens_in // 3,
        cost_usd=tokens_in * 1e-6 if priced else None,
        path=[["cp", ["generate"]]],
    )


def _fork(parent: ThreadResult, change: dict, scores: dict, status: str = SUCCEEDED):
    lineage = fork_lineage(parent.thread_id, "cp-1", str(change))
    return ThreadResult(
        workflow=parent.workflow,
        combo=change.get("variant") or parent.combo,
        case_id=parent.case_id,
        thread_id=thread_id_for(parent.workflow, parent.combo, parent.case_id, lineage),
        status=status,
        lineage=lineage,
        parent_thread_id=parent.thread_id,
        parent_checkpoint_id="cp-1",
        change=change,
        scores=scores,
        latency_s=0.5,
        tokens_in=10,
        tokens_out=5,
        cost_usd=1e-5,
    )


def _fill(store: ResultsStore) -> list[ThreadResult]:
    rng = random.Random(19)
    threads = [
        _thread(rng, combo, case, trial)
        for combo in COMBOS
        for case in CASES
        # g=a+r=x ran fewer trials of some cases
        for trial in range(2 if combo == "g=a+r=x" and case < "case-06" else 3)
    ]
    # a combo none of whose threads finished: counted, never scored
    threads += [
        ThreadResult("w", "g=c", c, thread_id_for("w", "g=c", c), INTERRUPTED, latency_s=9.0)
        for c in CASES[:3]
    ]
    # another workflow's rows are never counted
    threads += [_thread(rng, "baseline", c, 0, workflow="other") for c in CASES[:4]]
    variant = {"from": "before g", "checkpoint_id": "cp-1", "variant": "g=t", "state_patch": None}
    patch = {"from": "checkpoint", "checkpoint_id": "cp-1", "variant": None,
             "state_patch": {"question": "?"}}  # fmt: skip
    mains = [t for t in threads if t.workflow == "w" and t.trial == 0 and t.combo == "baseline"]
    forks = [_fork(p, variant, {"exact": 1.0, "f1": 0.9}) for p in mains[:8]]
    forks += [_fork(p, patch, {"exact": 0.0, "f1": 0.3}) for p in mains[:4]]
    forks += [_fork(mains[8], patch, {}, status=FAILED)]
    forks += [_fork(forks[0], patch, {"exact": 1.0, "f1": 0.5, "judge": 1.0})]  # a fork's fork
    store.upsert_results(threads + forks)
    return threads + forks


def _assert_same(got, want) -> None:
    """Every table equal up to the order of floating-point summation; the text identical."""
    for name in ("summary", "per_case", "deltas", "costs"):
        pd.testing.assert_frame_equal(
            getattr(got, name).reset_index(drop=True),
            getattr(want, name).reset_index(drop=True),
            check_dtype=False,
            check_index_type=False,
            check_column_type=False,
            rtol=1e-9,
            atol=1e-12,
            obj=name,
        )
    assert got.metrics == want.metrics and got.primary_metric == want.primary_metric
    assert got.detection_alpha == pytest.approx(want.detection_alpha, rel=1e-12)
    assert got.verdicts() == want.verdicts()
    assert got.to_markdown(max_cases=50) == want.to_markdown(max_cases=50)


@pytest.mark.parametrize("include_forks", [False, True])
@pytest.mark.parametrize("correction", ["holm", "none"])
def test_stored_comparison_equals_the_in_memory_one(store, include_forks, correction):
    _fill(store)
    frame = store.results_frame("w", lineage=None if include_forks else MAIN_LINEAGE)
    want = compare(frame, include_forks=include_forks, correction=correction, n_resamples=RESAMPLES)
    got = compare_stored(
        store, "w", include_forks=include_forks, correction=correction, n_resamples=RESAMPLES
    )
    _assert_same(got, want)
    # the data covers what it claims: failures, interrupts, a missing metric, unknown costs
    summary = got.summary.set_index(["combo", "metric"])
    assert summary.loc[("baseline", "exact"), "failures"] > 0
    assert got.summary.interrupted.sum() > 0
    assert summary.loc[("g=a", "judge"), "threads"] < summary.loc[("g=a", "exact"), "threads"]
    assert got.costs.set_index("combo").cost_mean_usd.isna().loc["g=b"]
    unscored = got.summary[got.summary.combo == "g=c"]
    assert list(unscored.n) == [0] and list(unscored.interrupted) == [3]
    if include_forks:
        assert any("⑂" in c for c in got.summary.combo)


def test_stored_comparison_of_some_combos_equals_the_asset_selection(store):
    _fill(store)
    matrix = ["baseline", "g=a", "g=b"]
    frame = store.results_frame("w", lineage=None)
    main = frame[(frame.lineage == MAIN_LINEAGE) & frame.combo.isin(matrix)]
    forks = frame[frame.lineage != MAIN_LINEAGE]
    want = compare(pd.concat([main, forks]), primary_metric="f1", n_resamples=RESAMPLES)
    got = compare_stored(
        store, "w", combos=matrix, include_forks=True, primary_metric="f1", n_resamples=RESAMPLES
    )
    _assert_same(got, want)
    assert got.primary_metric == "f1"


def test_identical_trials_have_exactly_zero_spread_and_the_in_memory_mean(store):
    threads = [
        ThreadResult(
            "w",
            "baseline",
            c,
            thread_id_for("w", "baseline", c, trial=t),
            SUCCEEDED,
            trial=t,
            scores={"m": 0.1 * (i + 1)},
            latency_s=1.0,
        )
        for i, c in enumerate(CASES[:4])
        for t in range(3)
    ]
    store.upsert_results(threads)
    got = compare_stored(store, "w", n_resamples=RESAMPLES)
    want = compare(store.results_frame("w"), n_resamples=RESAMPLES)
    assert got.summary.iloc[0]["within_case_sd"] == 0.0
    assert list(got.per_case.loc["baseline"]) == list(want.per_case.loc["baseline"])  # bitwise


def test_stored_comparison_never_reads_a_threads_state(store):
    _fill(store)
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        compare_stored(store, "w", include_forks=True, n_resamples=RESAMPLES)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert reads
    for column in ("final_values", "input", "path", "node_usage", "node_timings"):
        assert not any(column in s for s in reads), column


def test_unknown_workflow_gives_an_empty_comparison(store):
    _fill(store)
    got = compare_stored(store, "nobody")
    assert got.summary.empty and got.deltas.empty and got.metrics == []


def test_thread_counts_count_main_threads_and_forks_per_combo(store):
    threads = _fill(store)
    counts = thread_counts(store, "w").set_index(["combo", "forked"])
    mains = [t for t in threads if t.workflow == "w" and t.lineage == MAIN_LINEAGE]
    assert counts.loc[("baseline", False), "threads"] == sum(t.combo == "baseline" for t in mains)
    assert counts.loc[("g=c", False), "interrupted"] == 3
    assert (
        counts[counts.index.get_level_values("forked")].threads.sum()
        == len(threads) - len(mains) - 4
    )
