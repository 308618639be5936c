"""rerun_requests_sensor and node_code_changed_sensor, with build_sensor_context, on SQLite and
on the local PostgreSQL; the rerun job executes what the sensor requested."""

from __future__ import annotations

import importlib
import sys

import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)

from assets import BENCH_ASSETS
from assets.partitions import workflows_partitions
from assets.rerun_job import rerun_job
from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    ResultsStoreResource,
    WorkflowRegistryResource,
)
from sensors.node_code_changed import changed_implementations, make_node_code_changed_sensor
from sensors.rerun_requests import make_rerun_requests_sensor
from tests import toy_graphs
from tests.dagster_fixtures import write_toy_registry
from wtb_dagster.api import Bench
from wtb_dagster.execution import LocalExecutor


def tick(sensor, instance, resources, cursor=None):
    """One sensor evaluation; returns its result and the cursor it leaves."""
    with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
        cursor_after = getattr(result, "cursor", None) or context.cursor
    return result, cursor_after


def _resources(config, checkpoint_url, results_url):
    return {
        "registry": WorkflowRegistryResource(config_path=str(config)),
        "checkpointer": CheckpointerResource(url=checkpoint_url),
        "results": ResultsStoreResource(url=results_url),
        "executor": ExecutorResource(kind="local", max_concurrency=4),
        "quality": QualityGates(),
    }


def test_rerun_request_yields_exactly_one_run_and_its_results_are_forks(tmp_path, store_urls):
    checkpoint_url, results_url = store_urls
    config = write_toy_registry(tmp_path, n_cases=2)
    bench = Bench(config, checkpoint_url, results_url, LocalExecutor(2))
    bench.run_batch("toy", combos=["baseline"])
    parent = "toy/baseline/c1"
    request_id = bench.request_rerun(
        "toy", thread_ids=[parent], before_node="c", state_patch={"x": 5}, reason="test"
    )
    resources = _resources(config, checkpoint_url, results_url)
    sensor = make_rerun_requests_sensor(rerun_job)
    with DagsterInstance.ephemeral() as instance:
        first, cursor = tick(sensor, instance, resources)
        assert isinstance(first, SensorResult)
        (run_request,) = first.run_requests
        assert isinstance(run_request, RunRequest)
        assert run_request.run_key == f"rerun-{request_id}"
        # a second tick with the cursor the first one set: nothing new to launch
        second, _ = tick(sensor, instance, resources, cursor)
        assert isinstance(second, SkipReason)

        toy_graphs.CALLS.clear()
        result = rerun_job.execute_in_process(
            run_config=run_request.run_config, resources=resources, instance=instance
        )
        assert result.success
    assert dict(toy_graphs.CALLS) == {"c": 1}  # only the node downstream of the checkpoint
    request = bench.store.get_rerun_request(request_id)
    assert request["status"] == "done"
    assert request["dagster_run_id"] == result.run_id
    (fork_id,) = request["result_thread_ids"]
    fork = bench.store.get_result(fork_id)
    assert fork["parent_thread_id"] == parent and fork["lineage"].startswith("fork-")
    assert fork["final_values"]["x"] == 1005  # the patched x=5, then c adds 1000
    assert bench.store.get_result(parent)["final_values"]["x"] == 1012  # parent untouched


def test_rerun_job_from_the_launchpad_stores_and_runs_a_new_request(tmp_path, sqlite_urls):
    checkpoint_url, results_url = sqlite_urls
    config = write_toy_registry(tmp_path, n_cases=2)
    bench = Bench(config, checkpoint_url, results_url, LocalExecutor(2))
    bench.run_batch("toy", combos=["baseline"])
    run_config = {
        "ops": {
            "execute_rerun": {
                "config": {"workflow": "toy", "combo": "baseline", "before_node": "b",
                           "variant": "b=double"}
            }
        }
    }  # fmt: skip
    with DagsterInstance.ephemeral() as instance:
        result = rerun_job.execute_in_process(
            run_config=run_config,
            resources=_resources(config, checkpoint_url, results_url),
            instance=instance,
        )
    assert result.success
    forks = bench.store.results_frame("toy", lineage=None)
    forks = forks[forks.lineage != ""]
    assert sorted(forks.combo) == ["b=double", "b=double"]
    assert set(forks.parent_thread_id) == {"toy/baseline/c0", "toy/baseline/c1"}


def test_changed_implementations_lists_only_changed_pairs():
    before = {"a": {"baseline": "1"}, "b": {"baseline": "2", "double": "3"}}
    after = {
        "a": {"baseline": "1"},
        "b": {"baseline": "2", "double": "9"},
        "new": {"baseline": "5"},
    }
    assert changed_implementations(before, after) == [("b", "double")]


GRAPH_MODULE = """\
from langgraph.graph import END, START, StateGraph
from tests.toy_graphs import State, node_a, node_b

def node_c(state):
    return {{"x": state["x"] + {increment}, "answer": str(state["x"] + {increment})}}

def build():
    graph = StateGraph(State)
    graph.add_node("a", node_a)
    graph.add_node("b", node_b)
    graph.add_node("c", node_c)
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    graph.add_edge("c", END)
    return graph
"""


def test_code_change_sensor_requests_reruns_from_just_before_the_changed_node(
    tmp_path, store_urls, monkeypatch
):
    checkpoint_url, results_url = store_urls
    module = tmp_path / "wtb_cc_graph.py"
    module.write_text(GRAPH_MODULE.format(increment=1000))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_toy_registry(tmp_path, n_cases=2)
    config.write_text(config.read_text().replace("tests.toy_graphs:linear", "wtb_cc_graph:build"))
    resources = _resources(config, checkpoint_url, results_url)
    sensor = make_node_code_changed_sensor()

    def materialize_definitions(instance):
        sys.modules.pop("wtb_cc_graph", None)
        importlib.invalidate_caches()
        result = materialize(
            BENCH_ASSETS,
            selection=["workflow_definitions"],
            partition_key="toy",
            instance=instance,
            resources=resources,
        )
        assert result.success

    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(workflows_partitions.name, ["toy"])
        materialize_definitions(instance)
        first, cursor = tick(sensor, instance, resources)
        assert "no node's code changed" in first.skip_message
        bench = Bench(config, checkpoint_url, results_url, LocalExecutor(2))
        bench.run_batch("toy")  # baseline and b=double, two cases each

        module.write_text(GRAPH_MODULE.format(increment=2000))  # node c changes
        materialize_definitions(instance)
        second, cursor = tick(sensor, instance, resources, cursor)
        message = second.skip_message
        assert "before c" in message
        requests = bench.store.rerun_requests(status="pending")
        assert {(r["combo"], r["before_node"]) for r in requests} == {
            ("baseline", "c"),
            ("b=double", "c"),
        }
        # the next tick sees no further change
        again, _ = tick(sensor, instance, resources, cursor)
        assert "no node's code changed" in again.skip_message

        # the rerun runs in a fresh process (a Dagster run) that imports the new code
        sys.modules.pop("wtb_cc_graph", None)
        toy_graphs.CALLS.clear()
        fresh = Bench(config, checkpoint_url, results_url, LocalExecutor(2))
        forks = fresh.execute_rerun(requests[0]["id"])
    assert len(forks) == 2
    assert all(set(f.node_timings) == {"c"} for f in forks)  # a and b were not executed again
    assert toy_graphs.CALLS == {}
    assert {f.final_values["x"] - f.final_values["x"] % 1000 for f in forks} <= {2000, 3000}


@pytest.mark.parametrize("broken", ["workflows: [oops]\n"])
def test_code_change_sensor_skips_quietly_without_materializations(tmp_path, broken):
    (tmp_path / "wtb.yaml").write_text(broken)
    sensor = make_node_code_changed_sensor()
    with DagsterInstance.ephemeral() as instance:
        resources = {
            "registry": WorkflowRegistryResource(config_path=str(tmp_path / "wtb.yaml")),
            "results": ResultsStoreResource(url=f"sqlite:///{tmp_path}/r.db"),
        }
        result, _ = tick(sensor, instance, resources)
        assert isinstance(result, SkipReason)
