"""Stored rows stay right when a run is killed, or overlapped by another run, at any moment.

Every check compares the *content* of each stored row (status, scores, final values) with a
clean reference run on a store of its own: counting rows would not see a partial state stored
as finished. SQLite files and the local PostgreSQL; real processes killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import toy_cases, toy_workflow
from wtb_dagster.batches import run_batch
from wtb_dagster.checkpoints import open_checkpointer, thread_config
from wtb_dagster.datasets import TestCase
from wtb_dagster.execution import LocalExecutor, ThreadTask, compile_for, has_ended, run_thread
from wtb_dagster.leases import ThreadLeases
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import thread_id_for

COMBOS = ["baseline", "b=double"]
CASES = 48  # 96 threads, 288 node executions: long enough to kill mid-way


class Killed(BaseException):
    """Stands for SIGKILL inside one process: nothing after the raise runs."""


def slow_cases(n: int = CASES) -> list[TestCase]:
    return [
        TestCase(id=f"c{i}", input={"x": i, "sleep": 0.02}, expected={"answer": str(i + 1011)})
        for i in range(n)
    ]


# The same workflow in the child processes: module-level so the script can build it.
SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.test_engine.test_overlap_and_kills import COMBOS, slow_cases
    from tests.conftest import toy_workflow
    from wtb_dagster.batches import run_batch
    from wtb_dagster.execution import LocalExecutor
    from wtb_dagster.store import ResultsStore

    checkpoint_url, results_url = sys.argv[1], sys.argv[2]
    summary = run_batch(
        toy_workflow(cases=slow_cases()), ResultsStore(results_url), checkpoint_url,
        combos=COMBOS, executor=LocalExecutor(max_concurrency=4),
    )
    print("executed", summary.executed, "skipped", summary.skipped)
    """
)


def _content(store: ResultsStore) -> dict[str, tuple]:
    frame = store.results_frame("toy")
    return {
        row.thread_id: (row.status, dict(row.scores or {}), dict(row.final_values or {}))
        for row in frame.itertuples()
    }


@pytest.fixture
def reference(tmp_path_factory) -> dict[str, tuple]:
    """Every row of a clean run, on a store of its own, each thread run on its own (no shared
    prefixes): the runs under test share them, and must store the same rows."""
    folder = tmp_path_factory.mktemp("reference")
    store = ResultsStore(f"sqlite:///{folder}/results.db")
    run_batch(
        toy_workflow(cases=slow_cases(), share_prefix=False),
        store,
        f"sqlite:///{folder}/checkpoints.db",
        combos=COMBOS,
        executor=LocalExecutor(max_concurrency=8),
    )
    rows = _content(store)
    store.close()
    assert len(rows) == CASES * len(COMBOS)
    assert all(status == "succeeded" for status, _, _ in rows.values())
    return rows


def _start(urls: tuple[str, str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "WTB_TEST_CALL_LOG": str(log)}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *urls],
        env=env,
        cwd=os.getcwd(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_calls(log: Path, calls: int, process: subprocess.Popen) -> None:
    """Until the run has executed `calls` nodes (rows are stored in batches; nodes one by one)."""
    deadline = time.monotonic() + 120
    while not log.exists() or len(log.read_text().split()) < calls:
        assert process.poll() is None, f"the run ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "the run executed no node"
        time.sleep(0.005)


# -- one thread killed between its task writes and its step checkpoint -------------------------


def test_thread_killed_after_its_task_writes_is_resumed_not_stored_as_finished(store_urls):
    checkpoint_url, results_url = store_urls
    workflow = toy_workflow()
    case = toy_cases()[1]
    thread_id = thread_id_for("toy", "baseline", case.id)
    with open_checkpointer(checkpoint_url) as saver:
        put = saver.put

        def put_then_die(config, checkpoint, metadata, new_versions):
            if metadata.get("step") == 2:  # b's writes are saved; its checkpoint is not
                raise Killed
            return put(config, checkpoint, metadata, new_versions)

        saver.put = put_then_die
        graph = compile_for(workflow, "baseline", saver)
        with pytest.raises(Killed):
            run_thread(graph, workflow, ThreadTask("baseline", case, thread_id))
        saver.put = put
        snapshot = graph.get_state(thread_config(thread_id))
        # what fooled the bench before: no `next`, though b's step never got its checkpoint
        assert snapshot.next == ()
        assert not has_ended(snapshot)

    store = ResultsStore(results_url)
    summary = run_batch(workflow, store, checkpoint_url, combos=["baseline"], case_ids=[case.id])
    row = store.get_result(thread_id)
    store.close()
    assert summary.executed == 1
    assert row["status"] == "succeeded"
    assert row["final_values"]["x"] == 1012
    assert row["final_values"]["trail"] == ["a", "b", "c"]
    assert row["scores"] == {"exact_match": 1.0}


# -- a whole run killed at several points, then run to the end ----------------------------------


@pytest.mark.parametrize("kill_at_calls", [10, 70, 130])
def test_run_killed_then_rerun_stores_every_row_as_a_clean_run(
    store_urls, reference, tmp_path, kill_at_calls
):
    store = ResultsStore(store_urls[1])
    store.setup()
    child = _start(store_urls, tmp_path / "calls.log")
    _wait_for_calls(tmp_path / "calls.log", kill_at_calls, child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert store.count("toy") < CASES * len(COMBOS)  # killed before the end

    rerun = _start(store_urls, tmp_path / "calls.log")
    _, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err
    assert _content(store) == reference
    store.close()


# -- two runs at once on one store ---------------------------------------------------------------


def test_two_runs_at_once_never_share_a_thread_and_store_a_clean_runs_rows(
    store_urls, reference, tmp_path
):
    log = tmp_path / "calls.log"
    first, second = _start(store_urls, log), _start(store_urls, log)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    store = ResultsStore(store_urls[1])
    assert _content(store) == reference
    store.close()
    # each node of each thread ran once in all: no thread was executed by both runs; and the
    # b=double threads of both runs started from the baseline's checkpoint after a
    calls = Counter(log.read_text().split())
    assert calls == {"a": CASES, "b": CASES, "b_double": CASES, "c": 2 * CASES}
    executed = sum(int(out.split()[1]) for out, _ in outputs)
    assert executed == CASES * len(COMBOS)


# -- the leases themselves -----------------------------------------------------------------------


def test_a_live_lease_is_not_taken_an_expired_or_orphaned_one_is(store_urls):
    store = ResultsStore(store_urls[1])
    with ThreadLeases(store, ttl_s=60) as first, ThreadLeases(store, ttl_s=60) as second:
        assert first.acquire(["t1", "t2"]) == {"t1", "t2"}
        assert second.acquire(["t1", "t2", "t3"]) == {"t3"}
        assert second.holders(["t1", "t2", "t3"]) == {"t1": first.owner, "t2": first.owner}
        first.release(["t1"])
        assert second.acquire(["t1", "t2"]) == {"t1"}

        # t2's owner stops renewing: after its expiry the lease is free
        first.ttl_s = 0.05
        first.renew()
        time.sleep(0.1)
        assert second.acquire(["t2"]) == {"t2"}

        # a lease left by a process of this host that is gone is free at once
        third = ThreadLeases(store, ttl_s=3600)
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        third.pid = int(dead.stdout)
        third.owner = f"{third.host}:{third.pid}:gone"
        assert third.acquire(["t4"]) == {"t4"}
        assert second.acquire(["t4"]) == {"t4"}
    store.close()


def test_a_run_that_lost_its_lease_cannot_overwrite_the_row_of_the_run_that_took_over(
    store_urls,
):
    from wtb_dagster.threads import ThreadResult

    store = ResultsStore(store_urls[1])
    row = dict(workflow="w", combo="baseline", case_id="c0", thread_id="w/baseline/c0")
    with ThreadLeases(store) as stale, ThreadLeases(store) as current:
        assert stale.acquire(["w/baseline/c0"])
        stale.ttl_s = 0.01
        stale.renew()
        time.sleep(0.05)
        assert current.acquire(["w/baseline/c0"])
        store.upsert_results(
            [ThreadResult(status="succeeded", scores={"m": 1.0}, **row)], current.owner
        )
        store.upsert_results([ThreadResult(status="failed", error="late", **row)], stale.owner)
        assert store.get_result("w/baseline/c0")["status"] == "succeeded"
        store.upsert_results([ThreadResult(status="failed", error="mine", **row)], current.owner)
        assert store.get_result("w/baseline/c0")["error"] == "mine"
    store.close()
