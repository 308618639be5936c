"""Threads and batches on real checkpointers: SQLite files and the local PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import toy_graphs
from tests.conftest import toy_cases, toy_workflow
from wtb_dagster.api import Bench
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import DatasetError, VariantError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.store import ResultsStore
from wtb_dagster.workflows import Registry, Workflow


def make_bench(urls: tuple[str, str], *workflows: Workflow, concurrency: int = 4) -> Bench:
    checkpoint_url, results_url = urls
    return Bench(
        Registry(workflows or [toy_workflow()]),
        checkpoint_url=checkpoint_url,
        results_url=results_url,
        executor=LocalExecutor(max_concurrency=concurrency),
    )


def test_variant_really_replaces_the_executed_node(sqlite_urls):
    bench = make_bench(sqlite_urls)
    result = bench.run("toy", "c1", combo="b=double")
    assert result.status == "succeeded"
    # a: 1+1=2, b_double: 2*2=4, c: 4+1000
    assert result.final_values["x"] == 1004
    assert result.final_values["trail"] == ["a", "b_double", "c"]
    assert toy_graphs.CALLS["b"] == 0 and toy_graphs.CALLS["b_double"] == 1


def test_async_variant_runs_beside_sync_nodes_with_every_node_timed(sqlite_urls):
    bench = make_bench(sqlite_urls)
    result = bench.run("toy", "c0", combo="b=async")
    assert result.status == "succeeded", result.error
    assert result.final_values["trail"] == ["a", "b_async", "c"]
    assert set(result.node_timings) == {"a", "b", "c"} and result.nodes_executed == 3
    assert result.checkpoints == 5


def test_one_checkpoint_per_super_step(store_urls):
    bench = make_bench(store_urls)
    result = bench.run("toy", "c2")
    checkpoints = bench.get_checkpoints(result.thread_id)
    # input checkpoint, __start__, then one per node a, b, c
    assert [c.step for c in checkpoints] == [-1, 0, 1, 2, 3]
    assert [c.writer for c in checkpoints] == ["input", "__start__", "a", "b", "c"]
    assert result.checkpoints == 5
    assert result.first_checkpoint_id == checkpoints[0].checkpoint_id
    assert result.last_checkpoint_id == checkpoints[-1].checkpoint_id
    assert set(result.node_timings) == {"a", "b", "c"}
    assert bench.get_state(result.thread_id).values["x"] == 1013


def test_failing_case_is_recorded_and_the_rest_succeed(store_urls):
    cases = [*toy_cases(3), TestCase(id="boom", input={"x": 1, "fail_at": "b"})]
    bench = make_bench(store_urls, toy_workflow(cases=cases))
    summary = bench.run_batch("toy", combos=["baseline"])
    assert summary.statuses == {"succeeded": 3, "failed": 1}
    row = bench.store.get_result("toy/baseline/boom")
    assert row["status"] == "failed"
    assert "ValueError: node b was told to fail" in row["error"]
    assert row["nodes_executed"] == 2
    frame = bench.store.results_frame("toy")
    assert sorted(frame.case_id) == ["boom", "c0", "c1", "c2"]


def test_timeout_is_recorded_within_the_budget(sqlite_urls):
    cases = [TestCase(id="slow", input={"x": 1, "sleep": 0.4}), TestCase(id="ok", input={"x": 1})]
    bench = make_bench(sqlite_urls, toy_workflow(cases=cases))
    summary = bench.run_batch("toy", combos=["baseline"], timeout_s=0.6)
    slow = bench.store.get_result("toy/baseline/slow")
    assert slow["status"] == "timed_out"
    assert "0.6" in slow["error"]
    # each node sleeps 0.4 s: the case is cut off before its third node, which only "ok" ran
    assert toy_graphs.CALLS["c"] == 1
    assert not slow["final_values"]
    assert summary.statuses == {"timed_out": 1, "succeeded": 1}


def test_running_the_batch_again_executes_no_node(store_urls):
    bench = make_bench(store_urls)
    first = bench.run_batch("toy")
    assert first.executed == 12 and first.skipped == 0
    executed = sum(toy_graphs.CALLS.values())
    # 4 cases × (3 baseline nodes + 2 per b variant: node a is shared with the baseline)
    assert executed == 4 * (3 + 2 + 2)
    again = bench.run_batch("toy")
    assert again.executed == 0 and again.skipped == 12
    assert sum(toy_graphs.CALLS.values()) == executed
    assert bench.store.count("toy") == 12


def test_force_runs_again_without_duplicating_rows(sqlite_urls):
    bench = make_bench(sqlite_urls)
    bench.run_batch("toy", combos=["baseline"])
    summary = bench.run_batch("toy", combos=["baseline"], force=True)
    assert summary.executed == 4
    assert toy_graphs.CALLS["a"] == 8
    assert bench.store.count("toy") == 4
    # a forced run starts the thread afresh: one history, not two runs appended
    assert len(bench.get_checkpoints("toy/baseline/c0")) == 5


def test_thread_stopped_half_way_resumes_from_its_last_checkpoint(sqlite_urls, tmp_path):
    checkpoint_url, results_url = sqlite_urls
    script = (
        "from tests.conftest import toy_workflow\n"
        "from wtb_dagster.api import Bench\n"
        "from wtb_dagster.workflows import Registry\n"
        f"b = Bench(Registry([toy_workflow()]), {checkpoint_url!r}, {results_url!r})\n"
        "b.run_batch('toy', combos=['baseline'], cases=['c1'])\n"
    )
    env = {**os.environ, "WTB_TEST_CRASH_AT": "c"}
    crashed = subprocess.run([sys.executable, "-c", script], env=env, cwd=os.getcwd(), timeout=120)
    assert crashed.returncode == 17  # the process died inside node c
    bench = make_bench(sqlite_urls)
    assert bench.store.get_result("toy/baseline/c1") is None
    assert [c.writer for c in bench.get_checkpoints("toy/baseline/c1")][-1] == "b"

    summary = bench.run_batch("toy", combos=["baseline"], cases=["c1"])
    assert summary.statuses == {"succeeded": 1}
    assert dict(toy_graphs.CALLS) == {"c": 1}  # a and b were not executed again
    assert bench.store.get_result("toy/baseline/c1")["final_values"]["x"] == 1012


def test_retry_failed_resumes_only_the_failed_node(sqlite_urls):
    cases = [TestCase(id="flaky", input={"x": 1, "fail_at": "c"})]
    bench = make_bench(sqlite_urls, toy_workflow(cases=cases))
    bench.run_batch("toy", combos=["baseline"])
    assert bench.store.get_result("toy/baseline/flaky")["status"] == "failed"
    toy_graphs.CALLS.clear()
    assert bench.run_batch("toy", combos=["baseline"]).executed == 0  # stored: skipped
    bench.run_batch("toy", combos=["baseline"], retry_failed=True)
    assert dict(toy_graphs.CALLS) == {"c": 1}


def test_latency_bound_batch_runs_concurrently(sqlite_urls):
    cases = [TestCase(id=f"s{i}", input={"x": i, "sleep": 0.05}) for i in range(16)]
    bench = make_bench(sqlite_urls, toy_workflow(cases=cases), concurrency=16)
    toy_graphs.IN_FLIGHT.update(now=0, peak=0)
    summary = bench.run_batch("toy", combos=["baseline"])
    assert summary.statuses == {"succeeded": 16}
    # slow (LLM-like) nodes of different cases overlap instead of running one after another
    assert toy_graphs.IN_FLIGHT["peak"] >= 8, toy_graphs.IN_FLIGHT


def test_one_thread_at_a_time_when_max_concurrency_is_one(sqlite_urls):
    cases = [TestCase(id=f"s{i}", input={"x": i, "sleep": 0.01}) for i in range(4)]
    bench = make_bench(sqlite_urls, toy_workflow(cases=cases), concurrency=1)
    toy_graphs.IN_FLIGHT.update(now=0, peak=0)
    bench.run_batch("toy", combos=["baseline"])
    assert toy_graphs.IN_FLIGHT["peak"] == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"combos": ["b=nope"]}, VariantError, "node 'b' has no variant 'nope'; declared: async"),
        ({"combos": ["zz=double"]}, VariantError, "node 'zz' has no variants; varied nodes: b"),
        ({"case_ids": ["missing"]}, DatasetError, "unknown case id(s) missing"),
    ],
)
def test_bad_batch_input_leaves_the_store_unchanged(sqlite_urls, kwargs, error, message):
    bench = make_bench(sqlite_urls)
    bench.run_batch("toy", combos=["baseline"], cases=["c0"])
    before = bench.store.results_frame("toy").to_dict("records")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench.run_batch("toy", combos=kwargs.get("combos"), cases=kwargs.get("case_ids"))
    assert bench.store.results_frame("toy").to_dict("records") == before
    assert toy_graphs.CALLS["a"] == 1


def test_malformed_dataset_leaves_the_store_unchanged(sqlite_urls, tmp_path):
    dataset = tmp_path / "cases.jsonl"
    dataset.write_text('{"id": "a", "input": {"x": 1}}\n{"id": "b", "input": {"x": 2}\n')
    bench = make_bench(sqlite_urls, Workflow(name="toy", graph=toy_graphs.linear, dataset=dataset))
    with pytest.raises(DatasetError, match=r"cases.jsonl:2: not valid JSON"):
        bench.run_batch("toy")
    assert ResultsStore(sqlite_urls[1]).count() == 0
    assert toy_graphs.CALLS == {}
