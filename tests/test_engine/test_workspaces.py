"""Thread workspaces on real checkpointers (SQLite, PostgreSQL) and a real blob folder:
snapshots at every checkpoint, exact restores on rollback, fork, retry and shared prefixes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tests.file_graphs import (
    build_file_graph,
    build_parallel_file_graph,
    listing,
    write_c_alt,
    write_c_async,
)
from wtb_dagster.api import Bench
from wtb_dagster.blob_gc import MIN_AGE_FLOOR_S
from wtb_dagster.blobs import BlobStore, BlobStoreError
from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.cli import main
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError, WTBError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.workflows import Registry, Workflow, workflow_from_yaml
from wtb_dagster.workspaces import METADATA_KEY, workspace_dir

THREAD = "files/baseline/k0"
AFTER_A = {"data.bin", "notes/a.txt", "run.sh", "shared.txt"}
AFTER_B = AFTER_A | {"b.txt"}
AFTER_C = (AFTER_B - {"notes/a.txt"}) | {"c.txt"}


def file_workflow(n: int = 2, **kwargs) -> Workflow:
    cases = [TestCase(id=f"k{i}", input={"tag": f"k{i}"}) for i in range(n)]
    return Workflow(
        name="files",
        graph=build_file_graph,
        variants={"c": {"alt": write_c_alt, "async": write_c_async}},
        dataset=cases,
        workspace=True,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def blob_folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WTB_BLOB_URL", str(tmp_path / "blobs"))
    return tmp_path / "blobs"


def make_bench(urls: tuple[str, str], tmp_path: Path, workflow: Workflow | None = None) -> Bench:
    checkpoint_url, results_url = urls
    return Bench(
        Registry([workflow or file_workflow()]),
        checkpoint_url=checkpoint_url,
        results_url=results_url,
        executor=LocalExecutor(max_concurrency=4),
    )


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    """path → (bytes, mode) of every file under a folder."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def exported(bench: Bench, thread_id: str, checkpoint_id: str | None, folder: Path) -> dict:
    bench.export_files(thread_id, checkpoint_id, folder)
    return tree(folder)


def by_writer(bench: Bench, thread_id: str) -> dict[str, str]:
    return {c.writer: c.checkpoint_id for c in bench.history(thread_id)}


def test_every_checkpoint_links_the_exact_tree_its_step_left(store_urls, tmp_path):
    bench = make_bench(store_urls, tmp_path)
    summary = bench.run_batch("files", combos=["baseline"])
    assert summary.statuses == {"succeeded": 2}
    writers = by_writer(bench, THREAD)
    assert set(bench.files(THREAD, writers["input"])) == set()
    assert set(bench.files(THREAD, writers["a"])) == AFTER_A
    assert set(bench.files(THREAD, writers["b"])) == AFTER_B
    final = bench.files(THREAD)
    assert set(final) == AFTER_C  # the deletion of notes/a.txt is recorded
    assert final["run.sh"].mode == 0o755 and final["c.txt"].mode == 0o600
    files = exported(bench, THREAD, None, tmp_path / "out")
    assert files["data.bin"] == (b"b rewrote this for k0", 0o644)
    assert files["c.txt"] == (b"c: b rewrote this for k0", 0o600)
    assert files["run.sh"][1] == 0o755
    after_a = exported(bench, THREAD, writers["a"], tmp_path / "out-a")
    assert after_a["data.bin"] == (bytes(range(256)) * 4, 0o644)  # the overwrite undone
    # the diff of one step: b rewrote data.bin and added b.txt
    changes = {c.path: c.change for c in bench.file_changes(THREAD, writers["a"], writers["b"])}
    assert changes == {"data.bin": "modified", "b.txt": "added"}
    changes = {c.path: c.change for c in bench.file_changes(THREAD, writers["b"], writers["c"])}
    assert changes == {"notes/a.txt": "deleted", "c.txt": "added"}
    assert summary.files_written == 2 * 7  # a: 4 files, b: 2, c: 1 per thread


def test_an_async_node_s_files_are_snapshotted_through_the_async_saver_path(store_urls, tmp_path):
    bench = make_bench(store_urls, tmp_path)
    assert bench.run_batch("files", combos=["c=async"]).statuses == {"succeeded": 2}
    files = bench.files("files/c=async/k0")
    assert set(files) == (AFTER_B - {"notes/a.txt"}) | {"async.txt"}
    seen = bench.store.get_result("files/c=async/k0")["final_values"]["seen"]
    assert seen["c"]["b.txt"] == "b was here|0o644"


def test_concurrent_threads_of_one_batch_keep_their_files_apart(sqlite_urls, tmp_path):
    bench = make_bench(sqlite_urls, tmp_path, file_workflow(n=12))
    bench.executor = LocalExecutor(max_concurrency=12)
    assert bench.run_batch("files", combos=["baseline"]).statuses == {"succeeded": 12}
    for i in range(12):
        row = bench.store.get_result(f"files/baseline/k{i}")
        # what node c found is exactly what this thread's own a and b wrote
        assert row["final_values"]["seen"]["c"]["data.bin"] == f"b rewrote this for k{i}|0o644"
        assert row["final_values"]["seen"]["c"]["notes/a.txt"] == f"a of k{i}|0o644"
        assert row["final_values"]["seen"]["a"] == {}


def test_identical_content_is_stored_once(sqlite_urls, tmp_path):
    bench = make_bench(sqlite_urls, tmp_path, file_workflow(n=6))
    first = bench.run_batch("files", combos=["baseline"])
    blobs = BlobStore(str(tmp_path / "blobs"))
    stored = {digest: size for digest, _, size in blobs.blobs()}
    # run.sh and shared.txt are the same in six threads: one blob each
    shared = bench.files(THREAD)["shared.txt"].digest
    assert all(bench.files(f"files/baseline/k{i}")["shared.txt"].digest == shared for i in range(6))
    assert first.bytes_stored < first.bytes_written
    again = bench.run_batch("files", combos=["baseline"], force=True)
    assert again.files_written == first.files_written and again.bytes_stored == 0
    assert {digest: size for digest, _, size in blobs.blobs()} == stored  # no second copy


def test_fork_and_rollback_to_each_checkpoint_start_from_its_exact_files(store_urls, tmp_path):
    bench = make_bench(store_urls, tmp_path)
    bench.run_batch("files", combos=["baseline"])
    parent = bench.store.get_result(THREAD)["final_values"]
    parent_files = exported(bench, THREAD, None, tmp_path / "parent")
    for node in ("a", "b", "c"):
        fork = bench.fork(THREAD, before_node=node)
        assert fork.status == "succeeded", fork.error
        # the first node the fork ran found what that node found in the parent
        assert fork.final_values["seen"][node] == parent["seen"][node], node
        assert exported(bench, fork.thread_id, None, tmp_path / f"fork-{node}") == parent_files
    rolled = bench.rollback(THREAD, to_node="b")
    assert rolled.status == "succeeded", rolled.error
    assert rolled.final_values["seen"]["b"] == parent["seen"]["b"]
    assert exported(bench, THREAD, None, tmp_path / "rolled") == parent_files


def test_two_forks_of_one_parent_never_see_each_others_files(store_urls, tmp_path):
    bench = make_bench(store_urls, tmp_path)
    bench.run_batch("files", combos=["baseline"])
    alt = bench.fork(THREAD, before_node="c", variant="c=alt")
    same = bench.fork(THREAD, before_node="c")
    alt_files, same_files = set(bench.files(alt.thread_id)), set(bench.files(same.thread_id))
    assert alt_files == AFTER_B | {"alt.txt"} and same_files == AFTER_C
    assert set(bench.files(THREAD)) == AFTER_C  # the parent is untouched


def test_a_shared_prefix_starts_from_the_donors_files(sqlite_urls, tmp_path):
    bench = make_bench(sqlite_urls, tmp_path)
    summary = bench.run_batch("files")
    assert summary.shared == 4  # c=alt and c=async share a and b with the baseline
    row = bench.store.get_result("files/c=alt/k1")
    assert row["shared_from"] == "files/baseline/k1"
    assert row["final_values"]["seen"]["c"]["data.bin"] == "b rewrote this for k1|0o644"
    assert set(bench.files("files/c=alt/k1")) == AFTER_B | {"alt.txt"}


def test_a_failed_thread_retried_resumes_with_its_last_checkpoints_files(
    store_urls, tmp_path, monkeypatch
):
    bench = make_bench(store_urls, tmp_path)
    monkeypatch.setenv("WTB_TEST_FILES_FAIL_AT", "c")  # c writes junk.txt, then raises
    assert bench.run_batch("files", combos=["baseline"]).statuses == {"failed": 2}
    monkeypatch.delenv("WTB_TEST_FILES_FAIL_AT")
    retried = bench.run_batch("files", combos=["baseline"], retry_failed=True)
    assert retried.statuses == {"succeeded": 2}
    seen_by_c = bench.store.get_result(THREAD)["final_values"]["seen"]["c"]
    assert "junk.txt" not in seen_by_c and set(seen_by_c) == AFTER_B
    assert "junk.txt" not in bench.files(THREAD)


def test_a_retried_step_runs_its_finished_siblings_again_so_their_files_are_there(
    store_urls, tmp_path, monkeypatch
):
    # p1 finishes (its state write is saved), p2 fails in the same step: the retry rebuilds
    # the folder as of the step's start, so p1 must run again to write p1.txt again
    workflow = Workflow(
        name="files",
        graph=build_parallel_file_graph,
        dataset=[TestCase(id="k0", input={"tag": "k0"})],
        workspace=True,
    )
    bench = make_bench(store_urls, tmp_path, workflow)
    monkeypatch.setenv("WTB_TEST_FILES_FAIL_AT", "p2")
    assert bench.run_batch("files").statuses == {"failed": 1}
    monkeypatch.delenv("WTB_TEST_FILES_FAIL_AT")
    retried = bench.run_batch("files", retry_failed=True)
    assert retried.statuses == {"succeeded": 1}, retried.results[0].error
    assert bench.store.get_result(THREAD)["final_values"]["answer"] == "p1 of k0 + p2 of k0"
    assert {"p1.txt", "p2.txt"} <= set(bench.files(THREAD))


def test_nodes_get_their_folder_in_the_config_and_a_node_without_one_is_told_why():
    assert workspace_dir({"configurable": {"__wtb_workspace__": "/x"}}) == Path("/x")
    with pytest.raises(WTBError, match="workspace: true"):
        workspace_dir({"configurable": {}})


def test_an_unwritable_blob_store_is_refused_before_any_thread_runs(
    sqlite_urls, tmp_path, monkeypatch
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the blob folder should be")
    monkeypatch.setenv("WTB_BLOB_URL", str(blocker / "blobs"))
    bench = make_bench(sqlite_urls, tmp_path)
    with pytest.raises(BlobStoreError, match="WTB_BLOB_URL"):
        bench.run_batch("files", combos=["baseline"])
    assert bench.store.count("files") == 0
    with open_checkpointer(sqlite_urls[0]) as saver:
        assert saver.get_tuple({"configurable": {"thread_id": THREAD, "checkpoint_ns": ""}}) is None


def test_an_unknown_blob_store_scheme_is_a_clear_error():
    with pytest.raises(BlobStoreError, match="WTB_BLOB_URL"):
        BlobStore("nosuchfs://bucket/prefix")


def test_gc_deletes_only_unreferenced_blobs_older_than_its_minimum_age(store_urls, tmp_path):
    bench = make_bench(store_urls, tmp_path)
    bench.run_batch("files", combos=["baseline"])
    blobs = BlobStore(os.environ["WTB_BLOB_URL"])
    old_orphan, _ = blobs.put_bytes(b"nobody references this")
    young_orphan, _ = blobs.put_bytes(b"just written by a batch still running")
    an_hour_ago = time.time() - 2 * 3600
    for digest, _, _ in list(blobs.blobs()):
        if digest != young_orphan:  # every other blob is old, referenced ones included
            os.utime(blobs.path(digest), (an_hour_ago, an_hour_ago))
    dry = bench.collect_garbage()
    assert (dry.deletable, dry.young, dry.deleted) == (1, 1, False)
    assert blobs.age_s(old_orphan) is not None  # a dry run deletes nothing
    done = bench.collect_garbage(apply=True)
    assert done.deletable == 1 and blobs.age_s(old_orphan) is None
    assert blobs.age_s(young_orphan) is not None
    # every referenced file is still there: the exports still work
    assert exported(bench, THREAD, None, tmp_path / "after-gc")["c.txt"][0].startswith(b"c: ")
    with pytest.raises(ConfigError, match="too short"):
        bench.collect_garbage(min_age_s=MIN_AGE_FLOOR_S - 1)


def test_a_reused_old_blob_is_refreshed_so_gc_keeps_it(sqlite_urls, tmp_path):
    blobs = BlobStore(str(tmp_path / "blobs"))
    digest, new = blobs.put_bytes(b"content")
    assert new
    long_ago = time.time() - 5 * 3600
    os.utime(blobs.path(digest), (long_ago, long_ago))
    assert blobs.put_bytes(b"content") == (digest, False)
    assert blobs.age_s(digest) < 60


def test_the_checkpoint_metadata_names_the_manifest(sqlite_urls, tmp_path):
    bench = make_bench(sqlite_urls, tmp_path)
    bench.run_batch("files", combos=["baseline"])
    with open_checkpointer(sqlite_urls[0]) as saver:
        head = saver.get_tuple({"configurable": {"thread_id": THREAD, "checkpoint_ns": ""}})
    reference = head.metadata[METADATA_KEY]
    assert reference["files"] == len(AFTER_C) and len(reference["manifest"]) == 64


def test_a_template_seeds_every_new_thread_and_is_part_of_the_code_version(sqlite_urls, tmp_path):
    template = tmp_path / "template"
    template.mkdir()
    (template / "README.txt").write_text("start here")
    workflow = file_workflow(workspace_template=template)
    bench = make_bench(sqlite_urls, tmp_path, workflow)
    bench.run_batch("files", combos=["baseline"])
    row = bench.store.get_result(THREAD)
    assert row["final_values"]["seen"]["a"] == {"README.txt": "start here|0o644"}
    assert "README.txt" in bench.files(THREAD)
    before = workflow.combo_code_version("baseline")
    (template / "README.txt").write_text("start elsewhere")
    assert file_workflow(workspace_template=template).combo_code_version("baseline") != before
    with pytest.raises(ConfigError, match="not a folder"):
        file_workflow(workspace_template=tmp_path / "missing")


def test_wtb_yaml_declares_workspaces_per_workflow_or_per_node(tmp_path):
    entry = {"graph": "tests.file_graphs:build_file_graph", "nodes": {"a": {"workspace": True}}}
    assert workflow_from_yaml("files", entry, tmp_path).workspace
    (tmp_path / "seed").mkdir()
    entry = {"graph": "tests.file_graphs:build_file_graph", "workspace": {"template": "seed"}}
    workflow = workflow_from_yaml("files", entry, tmp_path)
    assert workflow.workspace and workflow.workspace_template == tmp_path / "seed"
    plain = {"graph": "tests.file_graphs:build_file_graph", "workspace": False}
    assert not workflow_from_yaml("files", plain, tmp_path).workspace
    with pytest.raises(ConfigError, match="template"):
        workflow_from_yaml("files", {**plain, "workspace": {"templat": "seed"}}, tmp_path)


def test_wtb_files_and_gc_commands(sqlite_urls, tmp_path, monkeypatch, capsys):
    checkpoint_url, results_url = sqlite_urls
    config = tmp_path / "wtb.yaml"
    config.write_text(
        "workflows:\n  files:\n    graph: tests.file_graphs:build_file_graph\n"
        "    dataset: cases.jsonl\n    workspace: true\n"
    )
    (tmp_path / "cases.jsonl").write_text('{"id": "k0", "input": {"tag": "k0"}}\n')
    stores = ["--checkpointer", checkpoint_url, "--results", results_url]
    assert main(["--config", str(config), "run", "files", *stores]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "files", THREAD, *stores]) == 0
    out = capsys.readouterr().out
    assert "c.txt" in out and "0o600" in out and "5 files" in out
    bench = Bench(str(config), checkpoint_url, results_url)
    writers = by_writer(bench, THREAD)
    argv = ["--config", str(config), "files", THREAD, "--diff", writers["b"], writers["c"]]
    assert main([*argv, *stores]) == 0
    out = capsys.readouterr().out
    assert "deleted" in out and "notes/a.txt" in out and "added" in out
    target = tmp_path / "restored"
    argv = [
        "--config",
        str(config),
        "files",
        THREAD,
        "--restore",
        writers["a"],
        "--to",
        str(target),
    ]
    assert main([*argv, *stores]) == 0
    assert (target / "notes" / "a.txt").read_text() == "a of k0"
    assert listing(target)["run.sh"].endswith("|0o755")
    assert main([*argv, *stores]) == 2  # not into a folder that is not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["--config", str(config), "history", THREAD, *stores]) == 0
    out = capsys.readouterr().out
    assert "| files" in out and "5 (97 B)" in out  # the files column of a workspace thread
    assert main(["--config", str(config), "gc", *stores]) == 0
    assert "would delete (dry run" in capsys.readouterr().out
    assert main(["--config", str(config), "files", "files/baseline/nope", *stores]) == 2
    assert "no checkpoints" in capsys.readouterr().err


def test_the_demo_sql_branch_logs_its_query_in_the_workspace(sqlite_urls, tmp_path):
    checkpoint_url, results_url = sqlite_urls
    bench = Bench("wtb.yaml", checkpoint_url=checkpoint_url, results_url=results_url)
    summary = bench.run_batch("demo", combos=["baseline"], cases=["sql-001", "docs-001"])
    assert summary.statuses == {"succeeded": 2}
    log = bench.files("demo/baseline/sql-001")["query_log.sql"]
    assert log.size > 0
    assert bench.files("demo/baseline/docs-001") == {}  # the docs branch writes no file
    text = exported(bench, "demo/baseline/sql-001", None, tmp_path / "log")["query_log.sql"][0]
    assert b"Aurora Lamp" in text and b"SELECT" in text.upper()
