"""Async nodes run on LangGraph's own async path: `astream` on an event loop of each thread run.

Real SQLite files and the local PostgreSQL; one test on a real local Ray.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

import psycopg
import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from tests import toy_graphs
from tests.conftest import toy_cases, toy_workflow
from wtb_dagster.api import Bench
from wtb_dagster.batches import run_batch
from wtb_dagster.checkpoints import open_checkpointer, saver_lanes, serves_async, thread_config
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError
from wtb_dagster.execution import LocalExecutor, ThreadTask, compile_for, run_thread
from wtb_dagster.scoring import builtin
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import thread_id_for
from wtb_dagster.workflows import Registry, Workflow


class Killed(BaseException):
    """Stands for SIGKILL inside one process: nothing after the raise runs."""


def async_cases(n: int, await_s: float = 0.0) -> list[TestCase]:
    # a(+1) → b(+100) → c(+1000)
    return [
        TestCase(id=f"c{i}", input={"x": i, "await_s": await_s}, expected={"answer": str(i + 1101)})
        for i in range(n)
    ]


def async_workflow(cases: list[TestCase]) -> Workflow:
    return Workflow(
        name="aw",
        graph=toy_graphs.async_linear,
        scorers=[builtin("exact_match", field="answer")],
        dataset=cases,
    )


@pytest.fixture(autouse=True)
def _reset_async_records():
    toy_graphs.ASYNC_RUNS.clear()
    toy_graphs.CANCELLED.clear()
    toy_graphs.IN_FLIGHT.update(now=0, peak=0)


def make_bench(urls: tuple[str, str], *workflows: Workflow, concurrency: int = 4) -> Bench:
    return Bench(
        Registry(workflows),
        checkpoint_url=urls[0],
        results_url=urls[1],
        executor=LocalExecutor(max_concurrency=concurrency),
    )


# -- batches ------------------------------------------------------------------------------------


def test_async_nodes_of_a_batch_overlap_and_every_row_is_right(store_urls):
    workflow = async_workflow(async_cases(8, await_s=0.1))
    bench = make_bench(store_urls, workflow, concurrency=4)
    summary = bench.run_batch("aw")
    assert summary.statuses == {"succeeded": 8}
    frame = bench.store.results_frame("aw")
    for row in frame.itertuples():
        i = int(row.case_id[1:])
        assert row.final_values["x"] == i + 1101
        assert row.final_values["trail"] == ["a", "b_awaits", "c_awaits"]
        assert row.scores == {"exact_match": 1.0}
        assert row.checkpoints == 5
        # the async twin of the node timer times the awaited work, not the coroutine's creation
        assert set(row.node_timings) == {"a", "b", "c"}
        assert min(row.node_timings["b"] + row.node_timings["c"]) >= 0.1
    assert toy_graphs.IN_FLIGHT["peak"] >= 2  # cases awaited at the same time
    # each thread run had an event loop of its own, closed when the run ended
    loops = {id(loop) for _, loop, _ in toy_graphs.ASYNC_RUNS}
    assert len(loops) == 8
    assert all(loop.is_closed() for _, loop, _ in toy_graphs.ASYNC_RUNS)


def test_async_node_runs_on_the_loop_run_thread_drives_not_on_a_bridge_thread(sqlite_urls):
    workflow = async_workflow(async_cases(2))
    with open_checkpointer(sqlite_urls[0]) as saver:
        graph = compile_for(workflow, "baseline", saver)
        for case in workflow.cases():
            result = run_thread(graph, workflow, ThreadTask("baseline", case, f"t-{case.id}"))
            assert result.status == "succeeded", result.error
    runs = toy_graphs.ASYNC_RUNS
    assert [node for node, _, _ in runs] == ["b_awaits", "c_awaits"] * 2
    # on the thread that called run_thread, on one loop per thread run: LangGraph's astream
    assert {thread for _, _, thread in runs} == {threading.current_thread()}
    assert runs[0][1] is runs[1][1] and runs[2][1] is runs[3][1] and runs[0][1] is not runs[2][1]
    assert "wtb-async-nodes" not in {t.name for t in threading.enumerate()}


def test_async_graph_runs_from_a_caller_that_already_runs_an_event_loop(sqlite_urls):
    workflow = async_workflow(async_cases(1))
    with open_checkpointer(sqlite_urls[0]) as saver:
        graph = compile_for(workflow, "baseline", saver)

        async def caller():  # a notebook cell, an async host
            task = ThreadTask("baseline", workflow.cases()[0], "t")
            return run_thread(graph, workflow, task), asyncio.get_running_loop()

        result, callers_loop = asyncio.run(caller())
    assert result.status == "succeeded", result.error
    assert result.final_values["x"] == 1101
    assert set(result.node_timings) == {"a", "b", "c"}  # the node stats travelled along
    loop, thread = toy_graphs.ASYNC_RUNS[0][1:]
    assert loop is not callers_loop and thread.name.startswith("wtb-loop")


def test_plain_sync_saver_is_rejected_for_an_async_combo_naming_the_fix():
    saver = SqliteSaver(sqlite3.connect(":memory:", check_same_thread=False))
    assert compile_for(toy_workflow(), "b=double", saver) is not None  # sync combos run as before
    with pytest.raises(ConfigError, match=r"combo 'b=async' has async nodes.*open_checkpointer"):
        compile_for(toy_workflow(), "b=async", saver)


def test_savers_and_their_lanes_serve_langgraphs_async_calls(store_urls):
    with open_checkpointer(store_urls[0], pool_size=3) as saver:
        lanes = saver_lanes(saver, 3)
        assert len(lanes) == (3 if store_urls[0].startswith("postgresql") else 1)
        assert all(serves_async(lane) for lane in lanes)
        graph = compile_for(toy_workflow(), "b=async", lanes[-1])
        result = run_thread(graph, toy_workflow(), ThreadTask("b=async", toy_cases(1)[0], "t"))
        assert result.status == "succeeded", result.error

        async def read() -> tuple:
            newest = await lanes[0].aget_tuple(thread_config("t"))
            history = [c async for c in lanes[-1].alist(thread_config("t"))]
            return newest, history

        newest, history = asyncio.run(read())
    assert newest.checkpoint["id"] == result.last_checkpoint_id
    assert len(history) == result.checkpoints == 5


# -- timeouts -----------------------------------------------------------------------------------


def test_async_node_past_the_case_timeout_is_cancelled_and_recorded_timed_out(sqlite_urls):
    cases = [
        TestCase(id="slow", input={"x": 1, "await_s": 30.0}),
        TestCase(id="ok", input={"x": 1}),
    ]
    bench = make_bench(sqlite_urls, async_workflow(cases))
    summary = bench.run_batch("aw", timeout_s=0.3)
    assert summary.statuses == {"timed_out": 1, "succeeded": 1}
    slow = bench.store.get_result("aw/baseline/slow")
    assert slow["status"] == "timed_out" and "0.3" in slow["error"]
    assert toy_graphs.CANCELLED == {"b_awaits": 1}  # LangGraph cancelled the coroutine


def test_case_timeout_spans_the_async_steps_not_each_one(sqlite_urls):
    # b and c each await 0.25 s: either step fits in 0.4 s, both do not
    cases = [TestCase(id="two_steps", input={"x": 1, "await_s": 0.25})]
    bench = make_bench(sqlite_urls, async_workflow(cases))
    bench.run_batch("aw", timeout_s=0.4)
    row = bench.store.get_result("aw/baseline/two_steps")
    assert row["status"] == "timed_out"
    assert toy_graphs.CALLS["b_awaits"] == 1 and toy_graphs.CANCELLED == {"c_awaits": 1}


# -- interrupts, forks, resuming ------------------------------------------------------------------


def test_interrupt_in_an_async_node_is_answered_with_resume(store_urls):
    review = Workflow(name="review", graph=toy_graphs.async_with_interrupt, dataset=toy_cases(1))
    bench = make_bench(store_urls, review)
    assert bench.run_batch("review").statuses == {"interrupted": 1}
    waiting = bench.store.get_result("review/baseline/c0")
    assert "interrupted before approve" in waiting["error"] and "approve?" in waiting["error"]
    answered = bench.resume("review/baseline/c0", "yes")
    assert answered.status == "succeeded", answered.error
    assert answered.final_values == {
        "x": 1001,
        "approved": "yes",
        "trail": ["a", "c"],
        "answer": "1001",
    }
    # a ran once; the interrupted node runs again on resume, as LangGraph defines it
    assert toy_graphs.CALLS["a"] == 1 and toy_graphs.CALLS["approve_async"] == 2


def test_forks_into_and_of_an_async_combo_run_only_the_nodes_downstream(sqlite_urls):
    bench = make_bench(sqlite_urls, toy_workflow())
    bench.run_batch("toy", combos=["baseline"], cases=["c0"])
    into = bench.fork("toy/baseline/c0", before_node="b", variant="b=async")
    assert into.status == "succeeded", into.error
    assert into.final_values["trail"] == ["a", "b_async", "c"] and into.final_values["x"] == 1101
    assert into.nodes_executed == 2 and toy_graphs.CALLS["a"] == 1
    patched = bench.fork(into.thread_id, before_node="c", state_patch={"x": 5})
    assert patched.status == "succeeded", patched.error
    assert (patched.final_values["x"], patched.nodes_executed) == (1005, 1)
    assert toy_graphs.CALLS["b_async"] == 1


def test_async_thread_killed_after_its_task_writes_resumes_without_rerunning_them(store_urls):
    checkpoint_url, results_url = store_urls
    workflow = toy_workflow()
    case = toy_cases()[1]
    thread_id = thread_id_for("toy", "b=async", case.id)
    with open_checkpointer(checkpoint_url) as saver:
        put = saver.put

        def put_then_die(config, checkpoint, metadata, new_versions):
            if metadata.get("step") == 2:  # the async b's writes are saved; its checkpoint is not
                raise Killed
            return put(config, checkpoint, metadata, new_versions)

        saver.put = put_then_die  # aput runs the saver's put: the async path dies here too
        graph = compile_for(workflow, "b=async", saver)
        with pytest.raises(Killed):
            run_thread(graph, workflow, ThreadTask("b=async", case, thread_id))
        saver.put = put
    assert toy_graphs.CALLS == {"a": 1, "b_async": 1}

    store = ResultsStore(results_url)
    summary = run_batch(workflow, store, checkpoint_url, combos=["b=async"], case_ids=[case.id])
    row = store.get_result(thread_id)
    store.close()
    assert summary.executed == 1
    assert row["status"] == "succeeded"
    assert row["final_values"]["trail"] == ["a", "b_async", "c"]
    assert row["final_values"]["x"] == 1 + 1 + 100 + 1000
    assert toy_graphs.CALLS == {"a": 1, "b_async": 1, "c": 1}  # b's saved writes were reused


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.conftest import toy_workflow
    from wtb_dagster.batches import run_batch
    from wtb_dagster.store import ResultsStore

    run_batch(toy_workflow(), ResultsStore(sys.argv[2]), sys.argv[1], combos=["b=async"],
              case_ids=["c0"])
    """
)


def test_process_killed_after_an_async_node_resumes_from_its_checkpoint(store_urls):
    env = {**os.environ, "WTB_TEST_CRASH_AT": "c"}  # the process dies as c starts
    child = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, *store_urls],
        env=env,
        cwd=os.getcwd(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 17, child.stderr
    store = ResultsStore(store_urls[1])
    summary = run_batch(toy_workflow(), store, store_urls[0], combos=["b=async"], case_ids=["c0"])
    row = store.get_result(thread_id_for("toy", "b=async", "c0"))
    store.close()
    assert summary.executed == 1 and row["status"] == "succeeded"
    assert row["final_values"]["trail"] == ["a", "b_async", "c"]
    assert toy_graphs.CALLS == {"c": 1}  # a and the async b were durable before c started


# -- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_async_workflow_on_ray_workers_stays_within_the_connection_budget(
    local_ray, pg_url, tmp_path
):
    from wtb_dagster.ray_execution import RayExecutor

    workers, pool_size = 2, 2
    database = pg_url.rsplit("/", 1)[1]
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while not done.is_set():
                count = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                ).fetchone()[0]
                peak = max(peak, count)
                done.wait(0.01)

    # Results in SQLite: every PostgreSQL connection during the batch is a checkpointer's.
    store = ResultsStore(f"sqlite:///{tmp_path}/results.db")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        executor = RayExecutor(num_workers=workers, concurrency_per_worker=8, pool_size=pool_size)
        summary = run_batch(
            async_workflow(async_cases(32, await_s=0.05)), store, pg_url, executor=executor
        )
    finally:
        done.set()
        sampler.join(10)
    assert summary.statuses == {"succeeded": 32}
    frame = store.results_frame("aw")
    assert set(frame.executor) == {"ray"}
    assert all(row.final_values["x"] == int(row.case_id[1:]) + 1101 for row in frame.itertuples())
    assert set(frame.iloc[0].node_timings) == {"a", "b", "c"}
    assert 0 < peak <= workers * pool_size, peak
    store.close()
