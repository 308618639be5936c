"""Executor parity: the same batch on the local executor and on Ray gives the same threads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from tests.conftest import toy_cases, toy_workflow
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.parity import check_parity
from wtb_dagster.ray_execution import RayExecutor
from wtb_dagster.scoring import builtin
from wtb_dagster.workflows import Workflow, load_registry

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def executors() -> dict:
    return {
        "local": LocalExecutor(max_concurrency=4),
        "ray": RayExecutor(num_workers=2, concurrency_per_worker=4),
    }


def test_toy_workflow_gives_the_same_threads_on_local_and_ray(tmp_path):
    cases = [*toy_cases(4), TestCase(id="boom", input={"x": 1, "fail_at": "b"})]
    report = check_parity(toy_workflow(cases=cases), executors=executors(), base_dir=tmp_path)
    assert report.ok, report.to_markdown()
    assert report.threads == 15 and report.executors == ["local", "ray"]
    for summary in report.summaries.values():
        assert summary.statuses == {"succeeded": 14, "failed": 1}  # variants replace b
    # each executor had its own stores
    assert (tmp_path / "local" / "results.db").exists() and (
        tmp_path / "ray" / "results.db"
    ).exists()
    text = report.to_markdown()
    assert "no mismatch" in text and "| ray | 15 |" in text


def test_demo_workflow_gives_the_same_threads_on_local_and_ray():
    demo = load_registry(REPO / "wtb.yaml").get("demo")
    case_ids = [f"docs-{i:03d}" for i in (1, 2, 3, 4, 5)] + [
        f"sql-{i:03d}" for i in (1, 2, 3, 4, 5)
    ]
    # default executors and throwaway stores in a temporary folder
    report = check_parity(demo, case_ids=case_ids)
    assert report.ok, report.to_markdown()
    assert report.threads == 10 * len(demo.matrix())
    assert report.summaries["ray"].executed == report.threads


class PidState(TypedDict, total=False):
    x: int
    pid: int


def record_pid(state: PidState) -> dict:
    return {"pid": os.getpid()}


def pid_graph() -> StateGraph:
    graph = StateGraph(PidState)
    graph.add_node("record_pid", record_pid)
    graph.add_edge(START, "record_pid")
    graph.add_edge("record_pid", END)
    return graph


def test_a_node_that_depends_on_where_it_runs_is_reported(tmp_path):
    workflow = Workflow(
        name="where",
        graph=pid_graph,
        scorers=[builtin("exact_match", field="pid")],
        dataset=[TestCase(id="only", input={"x": 1}, expected={"pid": os.getpid()})],
    )
    report = check_parity(workflow, executors=executors(), base_dir=tmp_path)
    assert not report.ok
    fields = sorted(m.field for m in report.mismatches)
    assert fields == ["final_values", "scores"]
    scores = next(m for m in report.mismatches if m.field == "scores").values
    assert scores == {"local": {"exact_match": 1.0}, "ray": {"exact_match": 0.0}}
    assert "| where/baseline/only | final_values |" in report.to_markdown()


def test_one_executor_is_not_a_comparison():
    with pytest.raises(ConfigError, match="at least two executors"):
        check_parity(toy_workflow(), executors={"local": LocalExecutor()})
