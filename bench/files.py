"""Workspace snapshots: what storing the files nodes write costs, and what deduplication saves.

    .venv/bin/python bench/files.py [--cases 100] [--repeats 3] [--forks 100]

A chain of 5 nodes, each writing 10 files of 10 KB (its own content per case and node) and
rewriting the previous node's files, run by `run_batch` on SQLite, 8 threads at once. Rows,
each the median of `--repeats` runs, the two settings interleaved so drift on a shared
machine hits them alike:

- no workspace: the nodes write the same files into a scratch folder of their own — the
  baseline = 1.00 (so the ratio is the cost of the snapshots, not of writing files);
- `workspace: true`: every checkpoint stores its changed files as blobs and a manifest.

Then `--forks` forks of one thread from before its last node, each with a different `seed`
that changes one of the last node's ten files: bytes the forks wrote against bytes new to
the blob store (the other nine files, and everything upstream, are stored once).
There is no target: the issue asks for the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from wtb_dagster.api import Bench
from wtb_dagster.batches import run_batch
from wtb_dagster.blobs import BlobStore
from wtb_dagster.datasets import TestCase
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.store import ResultsStore
from wtb_dagster.workflows import Registry, Workflow
from wtb_dagster.workspaces import workspace_dir

NODES = 5
FILES = 10
SIZE = 10 * 1024


class FileState(TypedDict, total=False):
    case: str
    seed: int
    done: int


def _write_files(name: str, state: FileState, config: RunnableConfig) -> dict:
    folder = workspace_dir(config, missing_ok=True)
    scratch = None
    if folder is None:  # the baseline: the same writes, into a folder nobody snapshots
        thread = config["configurable"]["thread_id"].replace("/", "_")
        scratch = Path(tempfile.gettempdir()) / f"wtb-bench-files-{os.getpid()}-{thread}"
        scratch.mkdir(exist_ok=True)
        folder = scratch
    for i in range(FILES):
        seed = state.get("seed", 0) if (name == f"n{NODES - 1}" and i == 0) else 0
        line = f"{state['case']} {name} file {i} seed {seed}\n".encode()
        (folder / f"{name}-{i}.txt").write_bytes((line * (SIZE // len(line) + 1))[:SIZE])
    if scratch is not None and name == f"n{NODES - 1}":
        shutil.rmtree(scratch, ignore_errors=True)
    return {"done": state.get("done", 0) + 1}


def _node(name: str):
    def node(state: FileState, config: RunnableConfig) -> dict:
        return _write_files(name, state, config)

    node.__name__ = f"write_{name}"
    return node


def file_chain() -> StateGraph:
    graph = StateGraph(FileState)
    names = [f"n{i}" for i in range(NODES)]
    for name in names:
        graph.add_node(name, _node(name))
    graph.add_edge(START, names[0])
    for before, after in itertools.pairwise(names):
        graph.add_edge(before, after)
    graph.add_edge(names[-1], END)
    return graph


def file_workflow(n_cases: int, workspace: bool) -> Workflow:
    cases = [TestCase(id=f"c{i:04d}", input={"case": f"c{i:04d}"}) for i in range(n_cases)]
    return Workflow(name="files", graph=file_chain, dataset=cases, workspace=workspace)


def batch_wall(n_cases: int, folder: Path, workspace: bool) -> float:
    os.environ["WTB_BLOB_URL"] = str(folder / "blobs")
    store = ResultsStore(f"sqlite:///{folder}/results.db")
    started = time.perf_counter()
    summary = run_batch(
        file_workflow(n_cases, workspace),
        store,
        f"sqlite:///{folder}/checkpoints.db",
        executor=LocalExecutor(max_concurrency=8),
    )
    wall = time.perf_counter() - started
    assert summary.statuses == {"succeeded": n_cases}, summary.statuses
    store.close()
    return wall


def fork_bytes(folder: Path, forks: int) -> tuple[int, int, int]:
    """(bytes the forks wrote, bytes new to the blob store, blob store bytes before)."""
    os.environ["WTB_BLOB_URL"] = str(folder / "blobs")
    bench = Bench(
        Registry([file_workflow(1, workspace=True)]),
        checkpoint_url=f"sqlite:///{folder}/checkpoints.db",
        results_url=f"sqlite:///{folder}/results.db",
        executor=LocalExecutor(max_concurrency=4),
    )
    bench.run_batch("files")
    blobs = BlobStore(str(folder / "blobs"))
    before = sum(size for _, _, size in blobs.blobs())
    written = stored = 0
    for seed in range(1, forks + 1):
        result = bench.fork(
            "files/baseline/c0000", before_node=f"n{NODES - 1}", state_patch={"seed": seed}
        )
        assert result.status == "succeeded", result.error
        written += result.bytes_written
        stored += result.bytes_stored
    assert sum(size for _, _, size in blobs.blobs()) - before >= stored
    bench.close()
    return written, stored, before


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forks", type=int, default=100)
    args = parser.parse_args()
    walls: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for workspace in (False, True):
                folder = Path(tmp) / f"r{repeat}-{workspace}"
                folder.mkdir()
                walls[workspace].append(batch_wall(args.cases, folder, workspace))
        forks_folder = Path(tmp) / "forks"
        forks_folder.mkdir()
        written, stored, first_run = fork_bytes(forks_folder, args.forks)
    baseline = statistics.median(walls[False])
    per_step = FILES * SIZE // 1024
    print(
        f"\nWorkspace snapshots: {NODES} nodes × {FILES} files of {SIZE // 1024} KB per step, "
        f"{args.cases} cases, SqliteSaver, 8 threads, median of {args.repeats} "
        "(wall ÷ no workspace; lower is better)\n"
    )
    print("| setting | wall s | cases/s | wall ratio |")
    print("| --- | --- | --- | --- |")
    for workspace, label in ((False, "no workspace (baseline)"), (True, "workspace: true")):
        wall = statistics.median(walls[workspace])
        print(f"| {label} | {wall:.2f} | {args.cases / wall:.1f} | {wall / baseline:.2f} |")
    print(
        f"\n{args.forks} forks of one thread from before its last node ({per_step} KB written "
        "per fork, one file changed by the fork's seed):\n"
    )
    print("| | bytes |")
    print("| --- | --- |")
    print(f"| blob store after the parent thread | {first_run:,} |")
    print(f"| written by the forks | {written:,} |")
    print(f"| new to the blob store (deduplicated) | {stored:,} |")
    print(
        f"| stored ÷ written | {stored / written:.3f} |" if written else "| stored ÷ written | – |"
    )


if __name__ == "__main__":
    main()
