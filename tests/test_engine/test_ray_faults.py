"""Ray workers that die at any moment — starting, loading the plan, running, idle between
batches: every batch finishes with every case stored once and the same content as a clean run
on the local executor, and no CPU stays held by a dead or replaced actor.

The Ray workers import this module by name when they unpickle a batch's plan (its graph
factory is defined here), inside `ray_worker.Worker.load`; the module-level hook below lets a
test kill workers at exactly that moment.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from tests.test_engine.test_ray_execution import CPUS, assert_cpus_released, killable, rows_per_key
from wtb_dagster.batches import run_batch
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ExecutionError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.ray_execution import RayExecutor
from wtb_dagster.scoring import builtin
from wtb_dagster.store import ResultsStore
from wtb_dagster.workflows import Workflow

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

# "<path>:<n>": the first n worker processes that import this module SIGKILL themselves.
DIE_ON_LOAD = "WTB_TEST_DIE_ON_LOAD"


def _die_while_loading() -> None:
    spec = os.environ.get(DIE_ON_LOAD)
    if not spec:
        return  # the driver, and the workers of other tests
    base, _, times = spec.rpartition(":")
    for i in range(int(times)):
        try:  # O_EXCL: each of the n deaths is claimed by exactly one process
            os.close(os.open(f"{base}.{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        os.kill(os.getpid(), signal.SIGKILL)


_die_while_loading()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def graph() -> StateGraph:
    """The killable graph, by a name in this module: workers import this module to load it."""
    return killable()


def fault_workflow(tmp_path: Path, n: int, kill_case: str = "none") -> Workflow:
    """a(+1) → k(+10) → c(+100); node k of `kill_case` SIGKILLs its worker on its first try."""
    marker = str(tmp_path / "killed-once")
    cases = [
        TestCase(
            id=f"k{i:02d}",
            input={"x": i, "case": f"k{i:02d}", "kill_case": kill_case, "marker": marker},
            expected={"answer": str(i + 111)},
        )
        for i in range(n)
    ]
    return Workflow(
        name="faults",
        graph=graph,
        scorers=[builtin("exact_match", field="answer")],
        dataset=cases,
    )


class FastState(TypedDict, total=False):
    x: int
    case: str
    kills: list[str]
    marker: str
    delay_s: float
    answer: str


def _fast(name: str, add: int):
    def step(state: FastState) -> dict:
        marker = Path(f"{state['marker']}-{state['case']}")
        if name == "a" and state["case"] in state["kills"] and not marker.exists():
            marker.touch()  # decided before dying: the retry goes through
            # SIGKILL in a moment, wherever the worker's threads are: mostly not in a node
            # (these take no time) but writing checkpoints and task writes
            kill = threading.Timer(state["delay_s"], os.kill, (os.getpid(), signal.SIGKILL))
            kill.daemon = True
            kill.start()
        x = state["x"] + add
        return {"x": x, "answer": str(x)}

    step.__name__ = f"fast_{name}"
    return step


def fast_graph() -> StateGraph:
    """a(+1) → b(+10) → c(+100), instant nodes; node a of a case in `kills` has its worker
    SIGKILLed `delay_s` later, on its first attempt."""
    graph = StateGraph(FastState)
    for name, add in [("a", 1), ("b", 10), ("c", 100)]:
        graph.add_node(name, _fast(name, add))
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    graph.add_edge("c", END)
    return graph


def content(store: ResultsStore) -> dict[str, tuple[Any, ...]]:
    """What a row says about its case, by thread id (not how it got there: attempts, timing)."""
    frame = store.results_frame("faults")
    return {
        row.thread_id: (row.status, row.error, row.scores, row.final_values)
        for row in frame.itertuples()
    }


def reference(tmp_path: Path, workflow: Workflow, **kwargs: Any) -> dict[str, tuple[Any, ...]]:
    """The same cases run by the local executor, on a store and checkpointer of their own."""
    where = tmp_path / "reference"
    where.mkdir(exist_ok=True)
    store = ResultsStore(f"sqlite:///{where}/results.db")
    summary = run_batch(
        workflow,
        store,
        f"sqlite:///{where}/checkpoints.db",
        executor=LocalExecutor(max_concurrency=4),
        **kwargs,
    )
    assert set(summary.statuses) == {"succeeded"}, summary.statuses
    return content(store)


def assert_same_rows(store: ResultsStore, expected: dict[str, tuple[Any, ...]]) -> None:
    per_key = rows_per_key(store)
    assert len(per_key) == len(expected) and set(per_key.values()) == {1}, per_key
    got = content(store)
    wrong = {tid: (got.get(tid), row) for tid, row in expected.items() if got.get(tid) != row}
    assert not wrong, wrong
    for status, error, scores, values in got.values():
        assert (status, error, scores) == ("succeeded", None, {"exact_match": 1.0})
        assert values["answer"] == str(values["x"])


def dying_executor(tmp_path: Path, deaths: int, **kwargs: Any) -> RayExecutor:
    options = {"num_workers": 2, "concurrency_per_worker": 4, "start_timeout_s": 30.0}
    return RayExecutor(
        env_vars={DIE_ON_LOAD: f"{tmp_path / 'die-on-load'}:{deaths}"}, **{**options, **kwargs}
    )


def deaths_claimed(tmp_path: Path) -> int:
    return len(list(tmp_path.glob("die-on-load.*")))


@pytest.mark.parametrize("deaths", [1, 2])
def test_worker_killed_while_loading_the_plan_is_replaced(sqlite_urls, tmp_path, deaths):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    workflow = fault_workflow(tmp_path, n=12)
    executor = dying_executor(tmp_path, deaths)
    try:
        summary = run_batch(workflow, store, checkpoint_url, executor=executor)
    finally:
        executor.close()
    assert summary.statuses == {"succeeded": 12}, summary.statuses
    assert deaths_claimed(tmp_path) == deaths
    # each dead worker was replaced (its actor killed, so it held no CPU), and both ran cases
    assert executor.stats.replaced == deaths and executor.stats.workers == 2
    assert len(set(executor.stats.worker_pids)) == 2
    assert executor.stats.worker_deaths == 0 and executor.stats.submitted == 12
    assert_same_rows(store, reference(tmp_path, workflow))
    assert_cpus_released()


def test_worker_that_keeps_dying_while_loading_is_given_up_and_the_others_run(
    sqlite_urls, tmp_path
):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    workflow = fault_workflow(tmp_path, n=8)
    # max_retries=0: a worker that dies while starting is not replaced
    executor = dying_executor(tmp_path, deaths=1, max_retries=0)
    try:
        summary = run_batch(workflow, store, checkpoint_url, executor=executor)
    finally:
        executor.close()
    assert summary.statuses == {"succeeded": 8}, summary.statuses
    assert executor.stats.workers == 1 and len(executor.stats.worker_pids) == 1
    assert_same_rows(store, reference(tmp_path, workflow))
    assert_cpus_released()


def test_workers_that_always_die_while_loading_stop_the_batch_naming_why(sqlite_urls, tmp_path):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    executor = dying_executor(tmp_path, deaths=100, max_retries=1)
    started = time.monotonic()
    with pytest.raises(ExecutionError, match=r"died while starting.*2 times \(max_retries=1\)"):
        run_batch(fault_workflow(tmp_path, n=4), store, checkpoint_url, executor=executor)
    assert time.monotonic() - started < executor.start_timeout_s  # no start deadline waited on
    assert deaths_claimed(tmp_path) == 4  # 2 workers × (1 start + 1 replacement)
    assert store.count() == 0
    assert not executor._actors
    assert_cpus_released()


def test_actor_killed_before_it_started_is_replaced(sqlite_urls, tmp_path, monkeypatch):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    workflow = fault_workflow(tmp_path, n=8)
    executor = RayExecutor(num_workers=2, concurrency_per_worker=4, start_timeout_s=30.0)
    new_actor = RayExecutor._new_actor
    created: list[Any] = []

    def killed_first(self: RayExecutor, ray_module: Any) -> Any:
        handle = new_actor(self, ray_module)
        if not created:  # the first actor is killed as it starts, as a raylet would kill it
            ray_module.kill(handle, no_restart=False)
            # dead before the driver hands it the plan, so the load (not a case) finds it dead
            with pytest.raises(ray.exceptions.RayActorError):
                ray_module.get(handle.__ray_ready__.remote(), timeout=30)
        created.append(handle)
        return handle

    monkeypatch.setattr(RayExecutor, "_new_actor", killed_first)
    try:
        summary = run_batch(workflow, store, checkpoint_url, executor=executor)
    finally:
        executor.close()
    assert summary.statuses == {"succeeded": 8}, summary.statuses
    assert len(created) == 3 and executor.stats.replaced == 1
    assert_same_rows(store, reference(tmp_path, workflow))
    assert_cpus_released()


def test_worker_killed_mid_batch_every_row_matches_a_clean_run(sqlite_urls, tmp_path):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    workflow = fault_workflow(tmp_path, n=24, kill_case="k05")
    executor = RayExecutor(num_workers=2, concurrency_per_worker=4, max_retries=2)
    try:
        summary = run_batch(workflow, store, checkpoint_url, executor=executor)
    finally:
        executor.close()
    assert summary.statuses == {"succeeded": 24}, summary.statuses
    assert (tmp_path / "killed-once").exists()  # so the local reference run does not kill
    assert executor.stats.worker_deaths >= 1 and executor.stats.retried >= 1
    assert_same_rows(store, reference(tmp_path, workflow))
    assert store.get_result("faults/baseline/k05")["attempts"] == 2
    assert_cpus_released()


def test_workers_killed_at_random_moments_every_row_matches_a_clean_run(sqlite_urls, tmp_path):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    kills = ["k010", "k070", "k130"]
    cases = [
        TestCase(
            id=f"k{i:03d}",
            input={
                "x": i,
                "case": f"k{i:03d}",
                "kills": kills,
                "marker": str(tmp_path / "killed"),
                "delay_s": 0.05,
            },
            expected={"answer": str(i + 111)},
        )
        for i in range(200)
    ]
    workflow = Workflow(
        name="faults",
        graph=fast_graph,
        scorers=[builtin("exact_match", field="answer")],
        dataset=cases,
    )
    # 16 threads per worker, one case per call: each kill cuts many threads at any point of
    # a step, between a task's writes and the step's checkpoint too
    executor = RayExecutor(num_workers=2, concurrency_per_worker=16, max_retries=2, chunk_s=0)
    try:
        summary = run_batch(workflow, store, checkpoint_url, executor=executor)
    finally:
        executor.close()
    assert summary.statuses == {"succeeded": 200}, summary.statuses
    assert all(Path(f"{tmp_path / 'killed'}-{case}").exists() for case in kills)
    assert executor.stats.worker_deaths >= 1 and executor.stats.retried >= 1
    assert_same_rows(store, reference(tmp_path, workflow))  # the local run kills nothing
    assert_cpus_released()


@pytest.mark.parametrize("kill", [1, 2])
def test_kept_workers_killed_while_idle_between_batches_are_replaced(sqlite_urls, tmp_path, kill):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    workflow = fault_workflow(tmp_path, n=12)
    executor = RayExecutor(num_workers=2, concurrency_per_worker=4, keep_workers=True)
    try:
        first = run_batch(workflow, store, checkpoint_url, executor=executor, case_ids=["k00"])
        assert first.statuses == {"succeeded": 1}
        pids = list(executor.stats.worker_pids)
        assert len(pids) == 2 and len(executor._actors) == 2
        for pid in pids[:kill]:
            os.kill(pid, signal.SIGKILL)  # idle: no batch is running
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids[:kill]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = run_batch(workflow, store, checkpoint_url, executor=executor)
        assert second.statuses == {"succeeded": 11} and second.skipped == 1
        assert executor.stats.replaced == kill and executor.stats.workers == 2
        assert set(executor.stats.worker_pids) & set(pids) == set(pids[kill:])
        assert len(executor._actors) == 2  # the replacements are kept in turn
    finally:
        executor.close()
    assert not executor._actors
    assert_same_rows(store, reference(tmp_path, workflow))
    assert_cpus_released()
