"""Thread workspaces on a real local Ray: workers write and read the blobs themselves, and a
worker killed half-way through a node leaves nothing of that node's files in the retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.file_graphs import build_file_graph, write_c_alt
from tests.test_engine.test_ray_execution import CPUS, assert_cpus_released
from wtb_dagster.api import Bench
from wtb_dagster.batches import run_batch
from wtb_dagster.datasets import TestCase
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.ray_execution import RayExecutor
from wtb_dagster.store import ResultsStore
from wtb_dagster.workflows import Registry, Workflow

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def blob_folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WTB_BLOB_URL", str(tmp_path / "blobs"))
    return tmp_path / "blobs"


def file_workflow(n: int, kill_marker: str | None = None) -> Workflow:
    cases = [
        TestCase(
            id=f"k{i}",
            input={"tag": f"k{i}", **({"kill_marker": kill_marker} if i == 3 else {})},
        )
        for i in range(n)
    ]
    return Workflow(
        name="files",
        graph=build_file_graph,
        variants={"c": {"alt": write_c_alt}},
        dataset=cases,
        workspace=True,
    )


def files_of(urls: tuple[str, str], workflow: Workflow) -> dict[str, dict]:
    bench = Bench(Registry([workflow]), checkpoint_url=urls[0], results_url=urls[1])
    frame = bench.store.results_frame("files")
    return {
        tid: {path: (e.digest, e.mode) for path, e in bench.files(tid).items()}
        for tid in frame.thread_id
    }


def test_ray_workers_snapshot_and_restore_as_the_local_executor_does(store_urls, tmp_path):
    workflow = file_workflow(6)
    executor = RayExecutor(num_workers=2, concurrency_per_worker=3)
    try:
        summary = run_batch(workflow, ResultsStore(store_urls[1]), store_urls[0], executor=executor)
    finally:
        executor.close()
    assert summary.statuses == {"succeeded": 12} and summary.shared == 6
    local = (f"sqlite:///{tmp_path}/local-cp.db", f"sqlite:///{tmp_path}/local-res.db")
    run_batch(workflow, ResultsStore(local[1]), local[0], executor=LocalExecutor(max_concurrency=4))
    assert files_of(store_urls, workflow) == files_of(local, workflow)
    assert_cpus_released()


def test_a_killed_workers_retried_case_resumes_with_its_last_checkpoints_files(
    sqlite_urls, tmp_path
):
    marker = tmp_path / "killed-once"
    workflow = file_workflow(6, kill_marker=str(marker))
    store = ResultsStore(sqlite_urls[1])
    executor = RayExecutor(num_workers=2, concurrency_per_worker=2, max_retries=2)
    try:
        summary = run_batch(workflow, store, sqlite_urls[0], combos=["baseline"], executor=executor)
    finally:
        executor.close()
    assert marker.exists() and executor.stats.worker_deaths >= 1
    failed = {r.thread_id: r.error for r in summary.results if r.status != "succeeded"}
    assert summary.statuses == {"succeeded": 6}, failed
    row = store.get_result("files/baseline/k3")
    seen_by_c = row["final_values"]["seen"]["c"]
    # node c of the killed attempt tore b.txt and left junk.txt: the retry saw neither
    assert "junk.txt" not in seen_by_c and seen_by_c["b.txt"] == "b was here|0o644"
    assert row["final_values"]["answer"] == "b was here / c: b rewrote this for k3"
    bench = Bench(Registry([workflow]), checkpoint_url=sqlite_urls[0], results_url=sqlite_urls[1])
    assert "junk.txt" not in bench.files("files/baseline/k3")
    assert_cpus_released()
