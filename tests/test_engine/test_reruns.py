"""Rerun requests: validated before anything is written, executed once, as forks of the originals."""

from __future__ import annotations

import pytest

from tests import toy_graphs
from tests.conftest import toy_cases, toy_workflow
from wtb_dagster.api import Bench
from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ThreadNotFoundError, VariantError, WTBError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.rerun_request import rerun_request
from wtb_dagster.reruns import (
    create_rerun_request,
    execute_rerun_request,
    pending_requests,
    resolve_threads,
)
from wtb_dagster.workflows import Registry, Workflow


def ran_baseline(urls: tuple[str, str], workflow: Workflow | None = None) -> Bench:
    checkpoint_url, results_url = urls
    bench = Bench(
        Registry([workflow or toy_workflow()]),
        checkpoint_url=checkpoint_url,
        results_url=results_url,
        executor=LocalExecutor(max_concurrency=4),
    )
    bench.run_batch("toy", combos=["baseline"])
    toy_graphs.CALLS.clear()
    return bench


def test_rerun_request_round_trip_makes_linked_forks_once(store_urls):
    bench = ran_baseline(store_urls)
    request_id = bench.request_rerun(
        "toy", combo="baseline", before_node="b", variant="b=double", reason="try doubling"
    )
    assert [r.id for r in pending_requests(bench.store)] == [request_id]
    parents = resolve_threads(bench.store, bench.store.get_rerun_request(request_id))
    assert parents == [f"toy/baseline/c{i}" for i in range(4)]

    results = bench.execute_rerun(request_id, run_id="dagster-run-1")

    assert [r.status for r in results] == ["succeeded"] * 4
    assert [r.parent_thread_id for r in results] == parents
    assert all(r.combo == "b=double" and r.run_id == "dagster-run-1" for r in results)
    assert dict(toy_graphs.CALLS) == {"b_double": 4, "c": 4}  # a is never executed again
    for result, parent in zip(results, parents, strict=True):
        row = bench.store.get_result(result.thread_id)
        assert row["parent_thread_id"] == parent and row["lineage"].startswith("fork-")
        assert row["parent_checkpoint_id"] == bench.history(parent)[2].checkpoint_id
    request = bench.store.get_rerun_request(request_id)
    assert request.status == "done" and request.dagster_run_id == "dagster-run-1"
    assert request.result_thread_ids == [r.thread_id for r in results]
    assert request.error is None
    assert pending_requests(bench.store) == []

    again = bench.execute_rerun(request_id)

    assert [r.thread_id for r in again] == [r.thread_id for r in results]
    assert [r.final_values for r in again] == [r.final_values for r in results]
    assert dict(toy_graphs.CALLS) == {"b_double": 4, "c": 4}
    assert bench.store.count("toy") == 8


def test_request_for_one_thread_from_a_checkpoint_with_a_patch(sqlite_urls):
    bench = ran_baseline(sqlite_urls)
    thread_id = "toy/baseline/c2"
    checkpoint = bench.history(thread_id)[3]  # before c
    request = rerun_request(
        "toy", thread_ids=[thread_id], checkpoint_id=checkpoint.checkpoint_id, state_patch={"x": 7}
    )
    request_id = create_rerun_request(bench.store, bench.workflow("toy"), request)
    [result] = execute_rerun_request(
        bench.registry, bench.store, bench.checkpoint_url, LocalExecutor(1), request_id
    )
    assert result.final_values["x"] == 1007
    assert result.parent_checkpoint_id == checkpoint.checkpoint_id
    assert dict(toy_graphs.CALLS) == {"c": 1}
    # the same fork asked for by another request is found, not run again
    second = bench.request_rerun(
        "toy", thread_ids=[thread_id], after_node="b", state_patch={"x": 7}
    )
    assert [r.thread_id for r in bench.execute_rerun(second)] == [result.thread_id]
    assert dict(toy_graphs.CALLS) == {"c": 1}


def test_selection_skips_threads_that_never_reached_the_node(sqlite_urls):
    cases = [*toy_cases(2), TestCase(id="boom", input={"x": 1, "fail_at": "b"})]
    bench = ran_baseline(sqlite_urls, toy_workflow(cases=cases))
    request_id = bench.request_rerun("toy", before_node="c", state_patch={"x": 0})
    results = bench.execute_rerun(request_id)
    assert sorted(r.parent_thread_id for r in results) == ["toy/baseline/c0", "toy/baseline/c1"]
    request = bench.store.get_rerun_request(request_id)
    assert request.status == "done"
    assert "skipped 1 thread(s) that never reached the node: toy/baseline/boom" in request.error
    # only failed threads, from before the node that failed, with the cause patched away
    fix = bench.request_rerun(
        "toy", status_filter="failed", before_node="b", state_patch={"fail_at": ""}
    )
    [fixed] = bench.execute_rerun(fix)
    assert fixed.parent_thread_id == "toy/baseline/boom" and fixed.status == "succeeded"


def test_a_request_that_cannot_run_is_marked_failed(sqlite_urls):
    bench = ran_baseline(sqlite_urls)
    request_id = bench.request_rerun("toy", thread_ids=["toy/baseline/c0"], before_node="c")
    with open_checkpointer(bench.checkpoint_url) as saver:
        saver.delete_thread("toy/baseline/c0")  # the parent's checkpoints are gone
    with pytest.raises(ThreadNotFoundError):
        bench.execute_rerun(request_id, run_id="r-9")
    request = bench.store.get_rerun_request(request_id)
    assert request.status == "failed" and request.dagster_run_id == "r-9"
    assert "has no checkpoints" in request.error


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"combo": "baseline"}, WTBError, "exactly one of checkpoint_id, before_node"),
        ({"before_node": "b", "after_node": "b"}, WTBError, "exactly one of"),
        ({"combo": "baseline", "checkpoint_id": "x"}, WTBError, "give exactly one thread id"),
        ({"thread_ids": ["toy/baseline/c0", "toy/baseline/c1"], "checkpoint_id": "x"},
         WTBError, "give exactly one thread id"),
        ({"thread_ids": ["toy/baseline/c0"], "combo": "baseline", "before_node": "b"},
         WTBError, "either by thread_ids or by combo"),
        ({"before_node": "zz"}, WTBError, "workflow 'toy' has no node 'zz'; its nodes: a, b, c"),
        ({"before_node": "b", "variant": "b=nope"}, VariantError, "no variant 'nope'"),
        ({"before_node": "b", "variant": "a=fast"}, VariantError, "node 'a' has no variants"),
        ({"before_node": "b", "combo": "b=nope"}, VariantError, "no variant 'nope'"),
        ({"before_node": "b", "status_filter": "weird"}, WTBError, "unknown status filter"),
        ({"before_node": "b", "status_filter": "failed"}, WTBError,
         "no stored threads of workflow 'toy' match.*run `wtb run toy`"),
        ({"before_node": "b", "thread_ids": ["toy/baseline/c9"]}, ThreadNotFoundError,
         r"no stored thread\(s\) toy/baseline/c9.*`wtb threads toy`"),
        ({"before_node": "b", "thread_ids": ["other/baseline/c0"]}, WTBError,
         "belongs to workflow 'other'"),
        ({"before_node": "b", "state_patch": {"nope": 1}}, WTBError, "no state key"),
        ({"before_node": "b", "state_patch": {"x": object()}}, WTBError, "JSON-serialisable"),
        ({"thread_ids": ["toy/baseline/c0"], "checkpoint_id": "1f0-nope"}, ThreadNotFoundError,
         "has no checkpoint '1f0-nope'.*wtb history"),
    ],
)  # fmt: skip
def test_bad_rerun_requests_are_rejected_without_writing_a_row(sqlite_urls, kwargs, error, message):
    bench = ran_baseline(sqlite_urls)
    with pytest.raises(error, match=message):
        bench.request_rerun("toy", **kwargs)
    assert bench.store.rerun_requests() == []


def test_explicit_thread_that_never_reached_the_node_is_rejected(sqlite_urls):
    cases = [TestCase(id="boom", input={"x": 1, "fail_at": "b"})]
    bench = ran_baseline(sqlite_urls, toy_workflow(cases=cases))
    with pytest.raises(WTBError, match=r"no checkpoint before node 'c'.*nodes it ran: a"):
        bench.request_rerun("toy", thread_ids=["toy/baseline/boom"], before_node="c")
    assert bench.store.rerun_requests() == []


@pytest.mark.ray
def test_rerun_request_forks_run_on_ray_workers(store_urls, tmp_path):
    ray = pytest.importorskip("ray")
    from wtb_dagster.ray_execution import RayExecutor

    bench = ran_baseline(store_urls)
    log = tmp_path / "calls.log"
    request_id = bench.request_rerun("toy", combo="baseline", before_node="c", state_patch={"x": 0})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor(
            num_workers=2, concurrency_per_worker=2, env_vars={"WTB_TEST_CALL_LOG": str(log)}
        )
        results = execute_rerun_request(
            bench.registry, bench.store, bench.checkpoint_url, executor, request_id, "ray-1"
        )
    finally:
        ray.shutdown()
    assert [r.status for r in results] == ["succeeded"] * 4, [r.error for r in results]
    assert {r.executor for r in results} == {"ray"}
    assert {r.final_values["x"] for r in results} == {1000}
    assert sorted(log.read_text().split()) == ["c"] * 4  # only the node after the checkpoint
    assert bench.store.get_rerun_request(request_id).status == "done"
