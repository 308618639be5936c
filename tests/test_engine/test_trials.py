"""Trials: every (combo, case) run N times, each trial its own deterministic thread."""

from __future__ import annotations

import hashlib
import random
from typing import TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from tests.test_engine.test_execution import make_bench
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError, ThreadNotFoundError
from wtb_dagster.threads import parse_thread_id, thread_id_for
from wtb_dagster.workflows import Workflow, load_registry


class NoisyState(TypedDict, total=False):
    x: int
    score: float


def sample(state: NoisyState, config: RunnableConfig) -> dict:
    """A stochastic node: a draw seeded by the thread id (each trial is its own sample)."""
    thread_id = config["configurable"]["thread_id"]
    rng = random.Random(hashlib.sha256(thread_id.encode()).digest())
    return {"score": round(rng.random(), 6)}


def noisy() -> StateGraph:
    graph = StateGraph(NoisyState)
    graph.add_node("sample", sample)
    graph.add_edge(START, "sample")
    graph.add_edge("sample", END)
    return graph


def score_field(case: TestCase, state: dict) -> dict:
    return {"score": float(state["score"])}


def noisy_workflow(trials: int = 3) -> Workflow:
    return Workflow(
        name="noisy",
        graph=noisy,
        variants={"sample": {"same": sample}},  # an identical stochastic variant
        scorers=[score_field],
        dataset=[TestCase(id=f"c{i}", input={"x": i}) for i in range(5)],
        trials=trials,
    )


def test_thread_ids_carry_the_trial_and_parse_back():
    assert thread_id_for("w", "baseline", "c1") == "w/baseline/c1"
    tid = thread_id_for("w", "b=x", "c1", lineage="fork-0123456789", trial=2)
    assert tid == "w/b=x/c1#t2@fork-0123456789"
    key = parse_thread_id(tid)
    assert (key.workflow, key.combo, key.case_id, key.lineage, key.trial) == (
        "w", "b=x", "c1", "fork-0123456789", 2,
    )  # fmt: skip
    assert parse_thread_id("w/baseline/c1").trial == 0
    with pytest.raises(ThreadNotFoundError):
        parse_thread_id("w/baseline/c1#t0")  # trial 0 has no suffix: one spelling per thread


def test_each_trial_is_its_own_thread_stored_once_and_found_again(store_urls):
    bench = make_bench(store_urls, noisy_workflow(trials=3))
    summary = bench.run_batch("noisy")
    assert summary.executed == 2 * 5 * 3 and summary.statuses == {"succeeded": 30}
    frame = bench.store.results_frame("noisy")
    assert sorted(frame.trial.unique()) == [0, 1, 2]
    assert frame.groupby(["combo", "case_id"]).size().eq(3).all()
    # the draws differ between trials (each is its own sample) …
    assert (
        frame[frame.combo == "baseline"]
        .groupby("case_id")
        .scores.apply(lambda s: len({v["score"] for v in s}))
        .eq(3)
        .all()
    )
    # … and a rerun finds every trial stored
    again = bench.run_batch("noisy")
    assert again.executed == 0 and again.skipped == 30
    # more trials later run only the new ones
    more = bench.run_batch("noisy", trials=4)
    assert more.executed == 10 and more.skipped == 30


def test_a_case_scores_the_mean_of_its_trials_and_the_spread_is_reported(sqlite_urls):
    bench = make_bench(sqlite_urls, noisy_workflow(trials=3))
    bench.run_batch("noisy")
    comparison = bench.compare("noisy")
    row = comparison.summary.set_index(["combo", "metric"]).loc[("baseline", "score")]
    frame = bench.store.results_frame("noisy", combos=["baseline"])
    per_case = frame.assign(v=[s["score"] for s in frame.scores]).groupby("case_id").v.mean()
    assert row["n"] == 5
    assert row["mean"] == pytest.approx(per_case.mean())
    assert row["within_case_sd"] > 0  # trial-to-trial noise is seen, not hidden


def test_a_fork_of_a_trial_thread_keeps_its_trial(sqlite_urls):
    bench = make_bench(sqlite_urls, noisy_workflow(trials=2))
    bench.run_batch("noisy", combos=["baseline"])
    fork = bench.fork("noisy/baseline/c0#t1", before_node="sample", variant="sample=same")
    assert fork.thread_id.startswith("noisy/sample=same/c0#t1@fork-")
    assert fork.trial == 1
    assert bench.store.get_result(fork.thread_id)["trial"] == 1


def test_trials_come_from_wtb_yaml_and_bad_values_are_clear_errors(tmp_path):
    config = tmp_path / "wtb.yaml"
    (tmp_path / "cases.jsonl").write_text('{"id": "a", "input": {"x": 1}}\n')
    entry = "workflows:\n  n:\n    graph: tests.test_engine.test_trials:noisy\n"
    config.write_text(entry + "    dataset: cases.jsonl\n    trials: 4\n")
    assert load_registry(config).get("n").trials == 4
    config.write_text(entry + "    dataset: cases.jsonl\n    trials: 0\n")
    with pytest.raises(ConfigError, match="trials"):
        load_registry(config)
    with pytest.raises(ConfigError, match="trials must be a whole number"):
        make_bench((f"sqlite:///{tmp_path}/c.db", f"sqlite:///{tmp_path}/r.db"),
                   noisy_workflow()).run_batch("noisy", trials=0)  # fmt: skip


def test_the_demo_sampling_variant_is_reproducible_per_thread(sqlite_urls):
    from wtb_dagster.demo.workflow import generate_sampled

    state = {
        "question": "How long is the warranty?",
        "relevant": [{"text": "The warranty lasts two years. Returns take 30 days. Call us."}],
    }

    def answer(thread_id: str) -> str:
        return generate_sampled(state, {"configurable": {"thread_id": thread_id}})["answer"]

    assert answer("demo/generate=sampled/q#t1") == answer("demo/generate=sampled/q#t1")
    answers = {answer(f"demo/generate=sampled/q#t{i}") for i in range(1, 40)}
    assert len(answers) > 1  # a sample, not a constant
