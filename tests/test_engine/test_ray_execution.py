"""The Ray executor on a real local Ray: crashes, connection bounds, timeouts, clear errors.

The graph of the crash test is defined here: the workers import this module by name, which
also proves that workers find the test package (the driver's paths are theirs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import TypedDict

import psycopg
import pytest
import sqlalchemy as sa
from langgraph.graph import END, START, StateGraph

from bench.synthetic import chain_workflow
from tests import toy_graphs
from tests.conftest import toy_cases, toy_workflow
from wtb_dagster.api import Bench
from wtb_dagster.batches import run_batch
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError, ExecutionError
from wtb_dagster.execution import BatchPlan, ThreadTask
from wtb_dagster.ray_execution import RayExecutor
from wtb_dagster.scoring import builtin
from wtb_dagster.store import ResultsStore, thread_results
from wtb_dagster.workflows import Registry, Workflow

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


CPUS = 2


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def assert_cpus_released(within_s: float = 30.0) -> None:
    """Every CPU is free again: no dead, hung or replaced actor holds one."""
    deadline = time.monotonic() + within_s
    while ray.available_resources().get("CPU", 0) < CPUS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == CPUS, ray.available_resources()


class KillState(TypedDict, total=False):
    x: int
    case: str
    kill_case: str
    marker: str
    always: bool
    freeze: bool
    answer: str


def _node(name: str, add: int):
    def step(state: KillState) -> dict:
        toy_graphs._count(f"{state['case']}:{name}")
        time.sleep(0.03)  # keeps several cases in flight on each worker when one is killed
        if name == "k" and state["case"] == state.get("kill_case"):
            if state.get("freeze"):
                os.kill(os.getpid(), signal.SIGSTOP)  # a worker that hangs, holding its cases
            if state.get("always"):
                os.kill(os.getpid(), signal.SIGKILL)
            if not Path(state["marker"]).exists():
                Path(state["marker"]).touch()  # decided before dying: the retry goes through
                os.kill(os.getpid(), signal.SIGKILL)
        x = state["x"] + add
        return {"x": x, "answer": str(x)}

    step.__name__ = f"node_{name}"
    return step


def killable() -> StateGraph:
    """a → k → c; node k SIGKILLs its worker process on the chosen case's first attempt."""
    graph = StateGraph(KillState)
    graph.add_node("a", _node("a", 1))
    graph.add_node("k", _node("k", 10))
    graph.add_node("c", _node("c", 100))
    graph.add_edge(START, "a")
    graph.add_edge("a", "k")
    graph.add_edge("k", "c")
    graph.add_edge("c", END)
    return graph


def killable_workflow(
    tmp_path: Path, n: int, kill_case: str, always: bool = False, freeze: bool = False
) -> Workflow:
    marker = str(tmp_path / "killed-once")
    cases = [
        TestCase(
            id=f"k{i:02d}",
            input={
                "x": i,
                "case": f"k{i:02d}",
                "kill_case": kill_case,
                "marker": marker,
                "always": always,
                "freeze": freeze,
            },
            expected={"answer": str(i + 111)},
        )
        for i in range(n)
    ]
    return Workflow(
        name="killable",
        graph=killable,
        scorers=[builtin("exact_match", field="answer")],
        dataset=cases,
    )


def rows_per_key(store: ResultsStore) -> Counter:
    query = sa.select(
        thread_results.c.workflow,
        thread_results.c.combo,
        thread_results.c.case_id,
        thread_results.c.lineage,
        sa.func.count(),
    ).group_by(
        thread_results.c.workflow,
        thread_results.c.combo,
        thread_results.c.case_id,
        thread_results.c.lineage,
    )
    with store.engine.connect() as conn:
        return Counter({tuple(row[:4]): row[4] for row in conn.execute(query)})


def test_batch_runs_in_worker_processes_and_records_every_case(sqlite_urls):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    executor = RayExecutor(num_workers=2, concurrency_per_worker=4)
    summary = run_batch(toy_workflow(), store, checkpoint_url, executor=executor)
    assert summary.executed == 12 and summary.statuses == {"succeeded": 12}
    frame = store.results_frame("toy")
    assert set(frame.executor) == {"ray"} and set(frame.attempts) == {1}
    assert store.get_result("toy/b=double/c1")["final_values"]["trail"] == ["a", "b_double", "c"]
    assert len(executor.stats.worker_pids) == 2 and os.getpid() not in executor.stats.worker_pids
    assert executor.stats.submitted == 12 and executor.stats.worker_deaths == 0
    # run again: everything is stored, nothing is sent to Ray
    again = run_batch(toy_workflow(), store, checkpoint_url, executor=executor)
    assert again.executed == 0 and again.skipped == 12


def test_forks_and_interrupt_answers_run_on_kept_workers(sqlite_urls):
    review = Workflow(name="review", graph=toy_graphs.with_interrupt, dataset=toy_cases(2))
    executor = RayExecutor(num_workers=1, concurrency_per_worker=2, keep_workers=True)
    bench = Bench(Registry([toy_workflow(), review]), *sqlite_urls, executor=executor)
    try:
        bench.run_batch("toy", combos=["baseline"])
        pids = list(executor.stats.worker_pids)
        fork = bench.fork("toy/baseline/c0", before_node="c", state_patch={"x": 5})
        assert (fork.status, fork.final_values["x"], fork.nodes_executed) == ("succeeded", 1005, 1)
        assert fork.executor == "ray"
        assert bench.run_batch("review").statuses == {"interrupted": 2}
        answered = bench.resume("review/baseline/c0", "yes")
        assert answered.status == "succeeded" and answered.final_values["approved"] == "yes"
        assert executor.stats.worker_pids == pids  # the same warm process served every batch
    finally:
        executor.close()
    assert not executor._actors


def test_killed_worker_its_cases_resume_and_each_is_recorded_once(sqlite_urls, tmp_path):
    checkpoint_url, results_url = sqlite_urls
    log = tmp_path / "calls.log"
    store = ResultsStore(results_url)
    workflow = killable_workflow(tmp_path, n=24, kill_case="k05")
    executor = RayExecutor(
        num_workers=2,
        concurrency_per_worker=4,
        max_retries=2,
        env_vars={"WTB_TEST_CALL_LOG": str(log)},
    )
    summary = run_batch(workflow, store, checkpoint_url, executor=executor)

    assert summary.statuses == {"succeeded": 24}, summary.statuses
    assert (tmp_path / "killed-once").exists()
    assert executor.stats.worker_deaths >= 1 and executor.stats.retried >= 1
    per_key = rows_per_key(store)
    assert len(per_key) == 24 and set(per_key.values()) == {1}
    killed = store.get_result("killable/baseline/k05")
    assert killed["status"] == "succeeded" and killed["attempts"] == 2
    assert killed["final_values"]["x"] == 5 + 111
    assert killed["scores"] == {"exact_match": 1.0}
    calls = Counter(line for line in log.read_text().split() if line.startswith("k05:"))
    # a ran once: the retry resumed from the checkpoint after it; k ran again, c once
    assert calls == {"k05:a": 1, "k05:k": 2, "k05:c": 1}
    assert_cpus_released()


def test_case_that_always_kills_its_worker_fails_after_max_retries(sqlite_urls, tmp_path):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    executor = RayExecutor(num_workers=2, concurrency_per_worker=2, max_retries=1)
    workflow = killable_workflow(tmp_path, n=4, kill_case="k02", always=True)
    summary = run_batch(workflow, store, checkpoint_url, executor=executor)
    assert summary.statuses == {"succeeded": 3, "failed": 1}
    lost = store.get_result("killable/baseline/k02")
    # its first loss may have been shared with other cases; two losses alone fail it
    assert "alone died 2 times (max_retries=1)" in lost["error"]
    assert lost["attempts"] in (2, 3) and executor.stats.worker_deaths == lost["attempts"]
    others = store.results_frame("killable").query("case_id != 'k02'")
    assert set(others.status) == {"succeeded"}
    assert set(rows_per_key(store).values()) == {1}
    assert_cpus_released()


def test_hung_worker_is_restarted_and_only_the_case_that_hangs_it_times_out(sqlite_urls, tmp_path):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    executor = RayExecutor(num_workers=2, concurrency_per_worker=2, grace_s=1.0, poll_s=0.2)
    workflow = killable_workflow(tmp_path, n=4, kill_case="k01", freeze=True)
    started = time.monotonic()
    summary = run_batch(workflow, store, checkpoint_url, executor=executor, timeout_s=0.5)
    assert summary.statuses == {"succeeded": 3, "timed_out": 1}
    hung = store.get_result("killable/baseline/k01")
    assert hung["status"] == "timed_out" and "running alone" in hung["error"]
    # first lost beside the others (Ray may notice the frozen process before the deadline),
    # then restarted by the deadline while the case ran alone
    assert executor.stats.worker_deaths >= 2 and executor.stats.hung_workers >= 1
    assert set(rows_per_key(store).values()) == {1}
    assert time.monotonic() - started < 40
    assert_cpus_released()  # the frozen worker was killed, not left holding its CPU


def test_postgres_connections_stay_within_workers_times_pool_size(pg_url, tmp_path):
    workers, pool_size = 2, 2
    database = pg_url.rsplit("/", 1)[1]

    def connections(conn: psycopg.Connection) -> int:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()[0]

    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while not done.is_set():
                peak = max(peak, connections(conn))
                done.wait(0.01)

    # Results in SQLite: every PostgreSQL connection during the batch is a checkpointer's.
    store = ResultsStore(f"sqlite:///{tmp_path}/results.db")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        executor = RayExecutor(num_workers=workers, concurrency_per_worker=8, pool_size=pool_size)
        summary = run_batch(
            chain_workflow(n_cases=80, sleep_s=0.0), store, pg_url, executor=executor
        )
    finally:
        done.set()
        sampler.join(10)
    assert summary.statuses == {"succeeded": 80}
    # 16 threads ran at once on at most 4 connections (the driver's setup ones closed first),
    # and a worker did use more than one of its pool (its threads write on several at once)
    assert workers < peak <= workers * pool_size, peak
    with psycopg.connect(pg_url, autocommit=True) as conn:
        deadline = time.monotonic() + 15
        while connections(conn) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert connections(conn) == 0  # the workers' connections ended with the batch


def test_per_case_timeout_is_honoured_on_ray(sqlite_urls):
    checkpoint_url, results_url = sqlite_urls
    cases = [TestCase(id="slow", input={"x": 1, "sleep": 0.4}), TestCase(id="ok", input={"x": 1})]
    store = ResultsStore(results_url)
    summary = run_batch(
        toy_workflow(cases=cases),
        store,
        checkpoint_url,
        combos=["baseline"],
        executor=RayExecutor(num_workers=1, concurrency_per_worker=2),
        timeout_s=0.6,
    )
    assert summary.statuses == {"timed_out": 1, "succeeded": 1}
    slow = store.get_result("toy/baseline/slow")
    assert slow["status"] == "timed_out" and "0.6" in slow["error"]
    assert slow["executor"] == "ray"
    # cut off before its third node (the slow case's nodes each sleep 0.4 s)
    assert "c" not in (slow["node_timings"] or {})


def test_workflow_module_on_the_drivers_path_is_importable_by_workers(sqlite_urls, tmp_path):
    package = tmp_path / "team_code"
    package.mkdir()
    (package / "team_graphs.py").write_text(
        textwrap.dedent(
            """
            from tests.toy_graphs import linear

            def graph():
                return linear()
            """
        )
    )
    sys.path.insert(0, str(package))
    try:
        workflow = Workflow(name="team", graph="team_graphs:graph", dataset=toy_cases(2))
        checkpoint_url, results_url = sqlite_urls
        summary = run_batch(
            workflow,
            ResultsStore(results_url),
            checkpoint_url,
            executor=RayExecutor(num_workers=1, concurrency_per_worker=2),
        )
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("team_graphs", None)
    assert summary.statuses == {"succeeded": 2}


def test_workers_that_cannot_import_the_workflow_stop_the_batch_before_any_run(sqlite_urls):
    ghost = types.ModuleType("ghost_graphs")  # importable here only: it has no file
    ghost.linear = toy_graphs.linear
    exec("def graph():\n    return linear()\n", ghost.__dict__)
    sys.modules["ghost_graphs"] = ghost
    try:
        workflow = Workflow(name="ghost", graph="ghost_graphs:graph", dataset=toy_cases(2))
        checkpoint_url, results_url = sqlite_urls
        store = ResultsStore(results_url)
        with pytest.raises(ExecutionError, match=r"ghost_graphs.*import wtb_dagster and the"):
            run_batch(workflow, store, checkpoint_url, executor=RayExecutor(num_workers=1))
    finally:
        sys.modules.pop("ghost_graphs", None)
    assert store.count() == 0


def test_memory_checkpointer_is_rejected_for_ray():
    workflow = toy_workflow()
    task = ThreadTask("baseline", workflow.cases()[0], "toy/baseline/c0")
    with pytest.raises(ConfigError, match="Ray workers cannot share it"):
        RayExecutor().run(BatchPlan(workflow, "memory://x", [task]), lambda result: None)


def _free_closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


@pytest.mark.parametrize(
    ("setting", "address"),
    [
        ("address", "127.0.0.1:{port}"),
        ("address", "ray://127.0.0.1:{port}"),
        ("RAY_ADDRESS", "127.0.0.1:{port}"),
    ],
)
def test_unreachable_address_fails_fast_naming_the_address_and_setting(setting, address):
    # In a fresh process: this one already has a Ray initialised, which the executor would use.
    address = address.format(port=_free_closed_port())
    script = textwrap.dedent(
        f"""
        import time
        from wtb_dagster.errors import ExecutionError
        from wtb_dagster.ray_execution import RayExecutor
        started = time.monotonic()
        executor = RayExecutor(address={address if setting == "address" else None!r},
                               connect_timeout_s=2)
        try:
            executor.connect()
        except ExecutionError as exc:
            print(f"{{time.monotonic() - started:.1f}}|{{exc}}")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if setting == "RAY_ADDRESS":
        env["RAY_ADDRESS"] = address
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    elapsed, _, message = done.stdout.strip().partition("|")
    assert message, done.stderr[-2000:]
    assert float(elapsed) < 5
    assert address in message and f"set by {setting}" in message
