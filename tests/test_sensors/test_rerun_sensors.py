"""rerun_requests_sensor and node_code_changed_sensor, with build_sensor_context, on SQLite and
on the local PostgreSQL; the rerun job executes what the sensor requested."""

from __future__ import annotations

import importlib
import sys
from datetime import UTC, datetime

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from assets import BENCH_ASSETS
from assets.partitions import workflows_partitions
from jobs.rerun import rerun_job
from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    ResultsStoreResource,
    WorkflowRegistryResource,
)
from sensors.node_code_changed import make_node_code_changed_sensor
from sensors.rerun_requests import make_rerun_requests_sensor
from tests import toy_graphs
from tests.dagster_fixtures import write_toy_registry
from wtb_dagster.api import Bench
from wtb_dagster.errors import WTBError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.reruns import changed_implementations
from wtb_dagster.store import rerun_requests


def tick(sensor, instance, resources, cursor=None):
    """One sensor evaluation; returns its result and the cursor it leaves."""
    with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
        cursor_after = getattr(result, "cursor", None) or context.cursor
    return result, cursor_after


def daemon_tags(run_request):
    """The tags the sensor daemon gives the run it launches for a RunRequest."""
    return {
        **run_request.tags,
        RUN_KEY_TAG: run_request.run_key,
        SENSOR_NAME_TAG: "rerun_requests_sensor",
    }


def queue_like_the_daemon(instance, run_request):
    """The run the daemon creates for a RunRequest: run key and sensor tags, not started yet."""
    run = instance.create_run_for_job(
        rerun_job, run_config=run_request.run_config, tags=daemon_tags(run_request)
    )
    assert run.status == DagsterRunStatus.NOT_STARTED
    return run


def launched_ids(result):
    assert isinstance(result, SensorResult), result
    return [int(r.run_key.removeprefix("rerun-")) for r in result.run_requests]


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
        cursor = None  # whatever cursor a tick leaves is handed to the next one
        first, cursor = tick(sensor, instance, resources, cursor)
        assert isinstance(first, SensorResult)
        (run_request,) = first.run_requests
        assert isinstance(run_request, RunRequest)
        assert run_request.run_key == f"rerun-{request_id}"
        # the daemon creates the run; until it starts, the request is pending but not relaunched
        queue_like_the_daemon(instance, run_request)
        second, cursor = tick(sensor, instance, resources, cursor)
        assert (
            second.skip_message
            == "no pending rerun request to launch (1 pending with a run already)"
        )

        toy_graphs.CALLS.clear()
        result = rerun_job.execute_in_process(
            run_config=run_request.run_config,
            resources=resources,
            instance=instance,
            tags=daemon_tags(run_request),
        )
        assert result.success
        third, cursor = tick(sensor, instance, resources, cursor)
        assert third.skip_message == "no pending rerun request"
    assert dict(toy_graphs.CALLS) == {"c": 1}  # only the node downstream of the checkpoint
    request = bench.store.get_rerun_request(request_id)
    assert request.status == "done"
    assert request.dagster_run_id == result.run_id
    (fork_id,) = request.result_thread_ids
    fork = bench.store.get_result(fork_id)
    assert fork["parent_thread_id"] == parent and fork["lineage"].startswith("fork-")
    assert fork["final_values"]["x"] == 1005  # the patched x=5, then c adds 1000
    assert bench.store.get_result(parent)["final_values"]["x"] == 1012  # parent untouched


def _toy_bench(tmp_path, checkpoint_url, results_url):
    config = write_toy_registry(tmp_path, n_cases=2)
    bench = Bench(config, checkpoint_url, results_url, LocalExecutor(2))
    bench.run_batch("toy", combos=["baseline"])
    return config, bench


def _request(bench, case="c0", node="c"):
    return bench.request_rerun("toy", thread_ids=[f"toy/baseline/{case}"], before_node=node)


def test_request_committed_late_below_a_launched_id_is_launched_by_the_next_tick(tmp_path, pg_url):
    # PostgreSQL hands out the id at insert and shows the row at commit: id 1 can appear after 2
    config, bench = _toy_bench(tmp_path, pg_url, pg_url)
    resources = _resources(config, pg_url, pg_url)
    sensor = make_rerun_requests_sensor(rerun_job)
    now = datetime.now(UTC)
    with bench.store.engine.connect() as late, DagsterInstance.ephemeral() as instance:
        cursor = None
        transaction = late.begin()
        late_id = late.execute(
            rerun_requests.insert().values(
                workflow="toy",
                thread_ids=["toy/baseline/c1"],
                before_node="c",
                status="pending",
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
        early_id = _request(bench)
        assert late_id < early_id
        first, cursor = tick(sensor, instance, resources, cursor)
        assert launched_ids(first) == [early_id]
        queue_like_the_daemon(instance, first.run_requests[0])
        transaction.commit()
        second, cursor = tick(sensor, instance, resources, cursor)
        assert launched_ids(second) == [late_id]
        # it runs like any other request
        result = rerun_job.execute_in_process(
            run_config=second.run_requests[0].run_config,
            resources=resources,
            instance=instance,
            tags=daemon_tags(second.run_requests[0]),
        )
        assert result.success
    assert bench.store.get_rerun_request(late_id).status == "done"


def test_request_inserted_with_a_lower_id_after_a_tick_is_launched(tmp_path, sqlite_urls):
    checkpoint_url, results_url = sqlite_urls
    config, bench = _toy_bench(tmp_path, checkpoint_url, results_url)
    resources = _resources(config, checkpoint_url, results_url)
    sensor = make_rerun_requests_sensor(rerun_job)
    low, high = _request(bench, "c0"), _request(bench, "c1")
    row = bench.store.get_rerun_request(low)
    with bench.store.engine.begin() as conn:
        conn.execute(rerun_requests.delete().where(rerun_requests.c.id == low))
    with DagsterInstance.ephemeral() as instance:
        cursor = None
        first, cursor = tick(sensor, instance, resources, cursor)
        assert launched_ids(first) == [high]
        queue_like_the_daemon(instance, first.run_requests[0])
        with bench.store.engine.begin() as conn:
            conn.execute(rerun_requests.insert().values(**row.model_dump()))  # id 1 < launched 2
        second, cursor = tick(sensor, instance, resources, cursor)
        assert launched_ids(second) == [low]


def test_done_and_running_requests_are_not_launched_pending_ones_are(tmp_path, sqlite_urls):
    checkpoint_url, results_url = sqlite_urls
    config, bench = _toy_bench(tmp_path, checkpoint_url, results_url)
    resources = _resources(config, checkpoint_url, results_url)
    sensor = make_rerun_requests_sensor(rerun_job)
    done, running, pending = (
        _request(bench, "c0"),
        _request(bench, "c1"),
        _request(bench, "c0", "b"),
    )
    bench.execute_rerun(done)
    assert bench.store.get_rerun_request(done).status == "done"
    bench.store.update_rerun_request(running, status="running", dagster_run_id="elsewhere")
    with DagsterInstance.ephemeral() as instance:
        cursor = None
        result, cursor = tick(sensor, instance, resources, cursor)
        assert launched_ids(result) == [pending]
        bench.execute_rerun(pending)
        result, cursor = tick(sensor, instance, resources, cursor)
        assert result.skip_message == "no pending rerun request"


def test_at_most_max_runs_per_tick_oldest_first_and_a_spent_run_key_does_not_block(
    tmp_path, sqlite_urls, capfd
):
    checkpoint_url, results_url = sqlite_urls
    config, bench = _toy_bench(tmp_path, checkpoint_url, results_url)
    resources = _resources(config, checkpoint_url, results_url)
    sensor = make_rerun_requests_sensor(rerun_job, max_runs_per_tick=2)
    ids = [_request(bench, case, node) for case in ("c0", "c1") for node in ("b", "c")]
    with DagsterInstance.ephemeral() as instance:
        cursor = None
        first, cursor = tick(sensor, instance, resources, cursor)
        assert launched_ids(first) == ids[:2]
        # both runs are cancelled before they start: their requests stay pending, run key spent
        for run_request in first.run_requests:
            run = queue_like_the_daemon(instance, run_request)
            instance.report_run_canceled(run)
        second, cursor = tick(sensor, instance, resources, cursor)
        assert launched_ids(second) == ids[2:]
        warning = capfd.readouterr().err
        assert "still pending although their run ended" in warning
        assert f"#{ids[0]} (run " in warning and "CANCELED" in warning
        for run_request in second.run_requests:
            queue_like_the_daemon(instance, run_request)
        third, cursor = tick(sensor, instance, resources, cursor)
        assert third.skip_message.endswith("(4 pending with a run already)")


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
        assert {(r.combo, r.before_node) for r in requests} == {
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
        forks = fresh.execute_rerun(requests[0].id)
    assert len(forks) == 2
    assert all(set(f.node_timings) == {"c"} for f in forks)  # a and b were not executed again
    assert toy_graphs.CALLS == {}
    assert {f.final_values["x"] - f.final_values["x"] % 1000 for f in forks} <= {2000, 3000}


def _materialize_definitions(instance, resources):
    sys.modules.pop("wtb_cc_graph", None)  # as a new run would: import the code as it is now
    importlib.invalidate_caches()
    result = materialize(
        BENCH_ASSETS,
        selection=["workflow_definitions"],
        partition_key="toy",
        instance=instance,
        resources=resources,
    )
    assert result.success


def _code_change_setup(tmp_path, monkeypatch, checkpoint_url, results_url, instance):
    """The toy workflow with node c in a module of its own, its definitions materialized and
    seen by a first tick, and both combos run; returns (config, resources, cursor, bench)."""
    (tmp_path / "wtb_cc_graph.py").write_text(GRAPH_MODULE.format(increment=1000))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_toy_registry(tmp_path, n_cases=2)
    config.write_text(config.read_text().replace("tests.toy_graphs:linear", "wtb_cc_graph:build"))
    resources = _resources(config, checkpoint_url, results_url)
    instance.add_dynamic_partitions(workflows_partitions.name, ["toy"])
    _materialize_definitions(instance, resources)
    first, cursor = tick(make_node_code_changed_sensor(), instance, resources)
    assert first.skip_message == "no node's code changed"
    bench = Bench(config, checkpoint_url, results_url, LocalExecutor(2))
    bench.run_batch("toy")  # baseline and b=double, two cases each
    return config, resources, cursor, bench


def _change_node_c(tmp_path, instance, resources, increment):
    (tmp_path / "wtb_cc_graph.py").write_text(GRAPH_MODULE.format(increment=increment))
    _materialize_definitions(instance, resources)


def _requests(bench):
    return sorted((r.combo, r.before_node, r.reason) for r in bench.store.rerun_requests())


def test_code_change_sensor_keeps_a_change_whose_workflow_failed_to_load_and_retries_it(
    tmp_path, sqlite_urls, monkeypatch
):
    sensor = make_node_code_changed_sensor()
    with DagsterInstance.ephemeral() as instance:
        config, resources, cursor, bench = _code_change_setup(
            tmp_path, monkeypatch, *sqlite_urls, instance
        )
        _change_node_c(tmp_path, instance, resources, 2000)
        good_yaml = config.read_text()
        config.write_text("workflows: [oops]\n")  # the registry fails while the tick runs
        failed, cursor = tick(sensor, instance, resources, cursor)
        assert failed.skip_message == "will retry toy (see the tick's log)"
        assert bench.store.rerun_requests() == []
        config.write_text(good_yaml)
        retried, cursor = tick(sensor, instance, resources, cursor)
        assert "created rerun requests: " in retried.skip_message
        requests = _requests(bench)
        assert [(combo, node) for combo, node, _ in requests] == [
            ("b=double", "c"),
            ("baseline", "c"),
        ]
        assert requests[0][2].startswith("code of c=baseline changed: ")
        again, _ = tick(sensor, instance, resources, cursor)
        assert again.skip_message == "no node's code changed"
        assert _requests(bench) == requests


def test_code_change_sensor_retries_only_the_request_that_failed_and_never_duplicates(
    tmp_path, store_urls, monkeypatch
):
    import sensors.node_code_changed as module

    real_create = module.create_rerun_request
    failures = []

    def create_failing_once_for_b_double(store, workflow, request):
        if request.combo == "b=double" and not failures:
            failures.append(request)
            raise WTBError("the results store is read-only for a moment")
        return real_create(store, workflow, request)

    monkeypatch.setattr(module, "create_rerun_request", create_failing_once_for_b_double)
    sensor = make_node_code_changed_sensor()
    with DagsterInstance.ephemeral() as instance:
        _, resources, cursor, bench = _code_change_setup(
            tmp_path, monkeypatch, *store_urls, instance
        )
        _change_node_c(tmp_path, instance, resources, 2000)
        partial, cursor = tick(sensor, instance, resources, cursor)
        assert "toy [baseline] before c" in partial.skip_message
        assert partial.skip_message.endswith("will retry toy (see the tick's log)")
        assert [combo for combo, _, _ in _requests(bench)] == ["baseline"]
        # the baseline request even runs before the retry: done, it is still not made again
        (baseline,) = bench.store.rerun_requests()
        bench.execute_rerun(baseline.id)
        assert bench.store.get_rerun_request(baseline.id).status == "done"
        retried, cursor = tick(sensor, instance, resources, cursor)
        assert "toy [b=double] before c" in retried.skip_message
        assert "baseline" not in retried.skip_message
        first_change = _requests(bench)
        assert [combo for combo, _, _ in first_change] == ["b=double", "baseline"]
        quiet, cursor = tick(sensor, instance, resources, cursor)
        assert quiet.skip_message == "no node's code changed"
        assert _requests(bench) == first_change
        # a further change of the same node is new work: one more request per combo
        _change_node_c(tmp_path, instance, resources, 3000)
        second, _ = tick(sensor, instance, resources, cursor)
        assert second.skip_message.count("before c") == 2
        requests = _requests(bench)
        assert len(requests) == 4 and len(set(requests)) == 4


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
