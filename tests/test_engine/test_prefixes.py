"""Shared prefixes on real checkpointers: a combo's thread starts where it stops agreeing with
a thread already run, and ends with the rows an independent run stores."""

from __future__ import annotations

import pytest

from tests import toy_graphs
from tests.conftest import toy_cases, toy_workflow
from wtb_dagster.api import Bench
from wtb_dagster.batches import run_batch
from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import VariantError
from wtb_dagster.execution import BatchPlan, LocalExecutor, ThreadTask, compile_for, run_task
from wtb_dagster.history import list_checkpoints
from wtb_dagster.prefixes import prepare_shared, shared_steps
from wtb_dagster.store import ResultsStore
from wtb_dagster.workflows import Registry, Workflow, load_registry, workflow_from_yaml


def run(urls: tuple[str, str], workflow: Workflow, **kwargs):
    checkpoint_url, results_url = urls
    store = ResultsStore(results_url)
    try:
        return run_batch(
            workflow, store, checkpoint_url, executor=LocalExecutor(max_concurrency=4), **kwargs
        )
    finally:
        store.close()


def content(results) -> dict[str, tuple]:
    return {r.thread_id: (r.status, r.scores, r.final_values) for r in results}


# -- where a donor's path stops agreeing ---------------------------------------------------------

PATH = [["c0", ["__start__"]], ["c1", ["a"]], ["c2", ["b"]], ["c3", ["c"]], ["c4", []]]
SAME = {"a": "1", "b": "2", "c": "3"}


@pytest.mark.parametrize(
    ("versions", "independent", "expected"),
    [
        ({**SAME, "b": "9"}, (), 2),  # differs at b: start at the checkpoint before b
        ({**SAME, "c": "9"}, (), 3),
        (SAME, (), 4),  # agrees all along: the donor's end, nothing to run
        ({**SAME, "a": "9"}, (), None),  # differs at the first node: nothing worth sharing
        ({**SAME, "c": "9"}, ("b",), 2),  # b must run in every thread itself
        (SAME, ("a",), None),
    ],
)
def test_the_shared_part_ends_before_the_first_node_whose_code_differs(
    versions, independent, expected
):
    assert shared_steps(PATH, SAME, versions, independent) == expected


def test_a_donor_path_that_does_not_end_lends_nothing():
    assert shared_steps(PATH[:3], SAME, {**SAME, "c": "9"}) is None


# -- the toy matrix ------------------------------------------------------------------------------


def test_sharing_stores_the_rows_of_independent_runs_and_skips_the_shared_nodes(
    store_urls, tmp_path
):
    independent = run((f"sqlite:///{tmp_path}/c.db", f"sqlite:///{tmp_path}/r.db"),
                      toy_workflow(share_prefix=False))  # fmt: skip
    assert toy_graphs.CALLS["a"] == 12
    toy_graphs.CALLS.clear()

    shared = run(store_urls, toy_workflow())
    assert content(shared.results) == content(independent.results)
    # a ran once per case (the baseline's); the b variants started after it
    assert toy_graphs.CALLS == {"a": 4, "b": 4, "b_double": 4, "b_async": 4, "c": 12}
    by_id = {r.thread_id: r for r in shared.results}
    row = by_id["toy/b=double/c1"]
    assert row.shared_from == "toy/baseline/c1" and row.nodes_executed == 2
    # the shared node's time is part of the combo's latency and timings
    assert set(row.node_timings) == {"a", "b", "c"}
    assert row.latency_s >= sum(by_id["toy/baseline/c1"].node_timings["a"])
    stored = ResultsStore(store_urls[1]).get_result("toy/b=double/c1")
    assert stored["shared_from"] == "toy/baseline/c1"
    assert stored["shared_checkpoint_id"] == by_id["toy/baseline/c1"].path[2][0]

    # the shared thread's history is its whole path, a chain of its own
    with open_checkpointer(store_urls[0]) as saver:
        graph = compile_for(toy_workflow(), "b=double", saver)
        checkpoints = list_checkpoints(graph, "toy/b=double/c1")
    assert [c.writer for c in checkpoints] == ["input", "__start__", "a", "b", "c"]
    assert [c.checkpoint_id for c in checkpoints[:3]] == [p[0] for p in row.path[:3]]


def test_share_prefix_false_and_independent_nodes_run_in_every_thread(tmp_path):
    urls = (f"sqlite:///{tmp_path}/c.db", f"sqlite:///{tmp_path}/r.db")
    summary = run(urls, toy_workflow(independent=["a"]))
    assert toy_graphs.CALLS["a"] == 12
    assert all(r.shared_from is None for r in summary.results)

    toy_graphs.CALLS.clear()
    urls = (f"sqlite:///{tmp_path}/c2.db", f"sqlite:///{tmp_path}/r2.db")
    run(urls, toy_workflow(share_prefix=False))
    assert toy_graphs.CALLS["a"] == 12


def test_the_yaml_settings_and_an_unknown_independent_node(tmp_path):
    entry = {
        "graph": "tests.toy_graphs:linear",
        "share_prefix": False,
        "nodes": {"a": {"independent": True}},
    }
    workflow = workflow_from_yaml("toy", entry, tmp_path)
    assert workflow.share_prefix is False and workflow.independent == ["a"]
    with pytest.raises(
        VariantError, match=r"nodes.zz: the graph has no such node; its nodes: a, b, c"
    ):
        workflow_from_yaml("toy", {**entry, "nodes": {"zz": {"independent": True}}}, tmp_path)


def test_a_changed_variant_reruns_only_its_combo_from_the_checkpoint_before_it(store_urls):
    run(store_urls, toy_workflow())
    toy_graphs.CALLS.clear()
    changed = toy_workflow(
        variants={"b": {"double": toy_graphs.node_b_double_v2, "async": toy_graphs.node_b_async}}
    )
    summary = run(store_urls, changed)
    assert summary.executed == 4 and summary.skipped == 8
    assert toy_graphs.CALLS == {"b_double_v2": 4, "c": 4}
    assert {r.final_values["x"] for r in summary.results} == {1003, 1005, 1007, 1009}
    assert {r.nodes_executed for r in summary.results} == {2}


def test_a_stale_thread_with_no_other_donor_shares_with_its_own_earlier_run(store_urls):
    run(store_urls, toy_workflow(combos=["b=double"]))
    toy_graphs.CALLS.clear()
    changed = toy_workflow(
        combos=["b=double"],
        variants={"b": {"double": toy_graphs.node_b_double_v2, "async": toy_graphs.node_b_async}},
    )
    summary = run(store_urls, changed)
    assert toy_graphs.CALLS == {"b_double_v2": 4, "c": 4}
    assert {r.shared_from for r in summary.results} == {r.thread_id for r in summary.results}
    with open_checkpointer(store_urls[0]) as saver:
        graph = compile_for(changed, "b=double", saver)
        checkpoints = list_checkpoints(graph, "toy/b=double/c2")
        # one clean chain: the old run's b and c checkpoints are gone, none left parked
        assert [c.writer for c in checkpoints] == ["input", "__start__", "a", "b", "c"]
        assert (
            graph.get_state({"configurable": {"thread_id": "toy/b=double/c2"}}).values["x"] == 1007
        )
        assert not list(saver.list({"configurable": {"thread_id": "toy/b=double/c2#wtb-parked"}}))


def test_force_reruns_everything_and_shares_only_what_it_ran_itself(store_urls):
    first = run(store_urls, toy_workflow())
    toy_graphs.CALLS.clear()
    again = run(store_urls, toy_workflow(), force=True)
    assert toy_graphs.CALLS == {"a": 4, "b": 4, "b_double": 4, "b_async": 4, "c": 12}
    assert content(again.results) == content(first.results)
    baseline = {r.thread_id: r for r in again.results if r.combo == "baseline"}
    for result in again.results:
        if result.combo != "baseline":
            donor = baseline[result.shared_from]
            assert result.shared_checkpoint_id == donor.path[2][0]  # the new baseline run's


def test_each_trial_shares_with_the_same_trial(tmp_path):
    urls = (f"sqlite:///{tmp_path}/c.db", f"sqlite:///{tmp_path}/r.db")
    summary = run(urls, toy_workflow(trials=2))
    assert toy_graphs.CALLS["a"] == 8
    shared = {r.thread_id: r.shared_from for r in summary.results if r.shared_from}
    assert shared["toy/b=double/c0#t1"] == "toy/baseline/c0#t1"
    assert shared["toy/b=double/c0"] == "toy/baseline/c0"


def test_a_changed_case_input_is_not_shared_with_the_old_one(tmp_path):
    urls = (f"sqlite:///{tmp_path}/c.db", f"sqlite:///{tmp_path}/r.db")
    run(urls, toy_workflow(), combos=["baseline"])
    toy_graphs.CALLS.clear()
    cases = [TestCase(id=c.id, input={"x": c.input["x"] + 50}) for c in toy_cases()]
    summary = run(urls, toy_workflow(cases=cases), combos=["b=double"])
    assert toy_graphs.CALLS["a"] == 4
    assert all(r.shared_from is None for r in summary.results)


def test_a_donor_run_again_since_it_was_chosen_leaves_the_thread_to_run_from_its_input(
    tmp_path,
):
    urls = (f"sqlite:///{tmp_path}/c.db", f"sqlite:///{tmp_path}/r.db")
    workflow = toy_workflow()
    run(urls, workflow, combos=["baseline"])
    case = toy_cases()[1]
    task = ThreadTask(
        combo="b=double",
        case=case,
        thread_id="toy/b=double/c1",
        may_share=True,
        shared_from="toy/baseline/c1",
        shared_checkpoint_id="1f000000-0000-6000-8000-000000000000",  # no such checkpoint
        shared_path=[["x", ["__start__"]]],
        shared_timings={"a": [0.5]},
    )
    toy_graphs.CALLS.clear()
    with open_checkpointer(urls[0]) as saver:
        graph = compile_for(workflow, "b=double", saver)
        plan = BatchPlan(workflow, urls[0], [task], prepare=prepare_shared)
        result = run_task(plan, graph, saver, task, "local")
    assert result.status == "succeeded" and result.final_values["x"] == 1004
    assert result.shared_from is None and result.nodes_executed == 3
    assert toy_graphs.CALLS == {"a": 1, "b_double": 1, "c": 1}
    assert [p[1] for p in result.path] == [["__start__"], ["a"], ["b"], ["c"], []]


# -- the demo ------------------------------------------------------------------------------------


def demo_rows(tmp_path, name: str, share: bool, executor=None, cases=None) -> dict:
    workflow = load_registry("wtb.yaml").get("demo")
    workflow.share_prefix = share
    bench = Bench(
        Registry([workflow]),
        checkpoint_url=f"sqlite:///{tmp_path}/{name}-c.db",
        results_url=f"sqlite:///{tmp_path}/{name}-r.db",
        executor=executor or LocalExecutor(max_concurrency=8),
    )
    summary = bench.run_batch("demo", cases=cases)
    bench.close()
    assert set(summary.statuses) == {"succeeded"}
    return {r.thread_id: r for r in summary.results}


def test_every_demo_combo_ends_as_an_independent_run_with_fewer_node_executions(tmp_path):
    shared = demo_rows(tmp_path, "shared", True)
    alone = demo_rows(tmp_path, "alone", False)
    assert content(shared.values()) == content(alone.values())
    executed = sum(r.nodes_executed for r in shared.values())
    assert executed <= 0.5 * sum(r.nodes_executed for r in alone.values())
    # a SQL question never reaches retrieve: its retrieve=bm25 thread executes nothing
    sql = shared["demo/retrieve=bm25/sql-001"]
    assert sql.nodes_executed == 0 and sql.shared_from == "demo/baseline/sql-001"
    assert sql.final_values == shared["demo/baseline/sql-001"].final_values
    # and combos share with each other, not only with the baseline
    both = shared["demo/generate=template+retrieve=bm25/docs-001"]
    assert both.shared_from == "demo/retrieve=bm25/docs-001"


@pytest.mark.ray
def test_on_ray_sharing_ends_as_the_local_independent_run(tmp_path):
    ray = pytest.importorskip("ray")
    from wtb_dagster.ray_execution import RayExecutor

    cases = ["docs-001", "docs-002", "sql-001", "sql-002"]
    alone = demo_rows(tmp_path, "alone", False, cases=cases)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        shared = demo_rows(tmp_path, "ray", True, RayExecutor(num_workers=2), cases=cases)
    finally:
        ray.shutdown()
    assert content(shared.values()) == content(alone.values())
    assert {r.executor for r in shared.values()} == {"ray"}
    assert sum(r.nodes_executed for r in shared.values()) < sum(
        r.nodes_executed for r in alone.values()
    )


def test_a_saver_without_sql_shares_through_its_own_methods(tmp_path):
    # the in-memory saver has no tables: the chain is copied with its put / put_writes
    urls = (f"memory://prefixes-{tmp_path.name}", f"sqlite:///{tmp_path}/r.db")
    summary = run(urls, toy_workflow())
    assert toy_graphs.CALLS == {"a": 4, "b": 4, "b_double": 4, "b_async": 4, "c": 12}
    assert {r.final_values["x"] for r in summary.results if r.combo == "b=double"} == {
        1002,
        1004,
        1006,
        1008,
    }
