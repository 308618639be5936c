"""The Python API: the verbs users of the original bench know, over the engine's modules.

>>> bench = Bench()                                   # wtb.yaml, SQLite under ./data
>>> summary = bench.run_batch("demo")                 # every combo × every case
>>> print(bench.compare("demo").to_markdown())
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from wtb_dagster import settings
from wtb_dagster.batches import BatchSummary, Progress, execute, run_batch
from wtb_dagster.blob_gc import DEFAULT_MIN_AGE_S, GcReport, collect_garbage
from wtb_dagster.blobs import BlobStore
from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.comparison import Comparison
from wtb_dagster.comparison_queries import compare_stored
from wtb_dagster.datasets import TestCase, select_cases
from wtb_dagster.errors import WTBError
from wtb_dagster.execution import BatchPlan, Executor, LocalExecutor, ThreadTask
from wtb_dagster.file_snapshots import FileChange, diff, export, files_at
from wtb_dagster.forks import ForkRequest, fork
from wtb_dagster.history import CheckpointInfo
from wtb_dagster.matrix import BASELINE, Combo
from wtb_dagster.reading import thread_history, thread_state
from wtb_dagster.rerun_request import RerunRequest, rerun_request
from wtb_dagster.reruns import create_rerun_request, execute_rerun_request
from wtb_dagster.rollback import resume, rollback
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import MAIN_LINEAGE, STATUSES, ThreadResult, thread_id_for
from wtb_dagster.workflows import Registry, Workflow, load_registry
from wtb_dagster.workspaces import Manifest

THREAD_COLUMNS = [
    "thread_id", "combo", "case_id", "status", "lineage", "parent_thread_id",
    "parent_checkpoint_id", "change", "scores", "latency_s", "nodes_executed", "error",
]  # fmt: skip


class Bench:
    """A registry of workflows bound to a checkpointer, a results store and an executor."""

    def __init__(
        self,
        registry: Registry | str | Path | None = None,
        checkpoint_url: str | None = None,
        results_url: str | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.registry = registry if isinstance(registry, Registry) else load_registry(registry)
        self.checkpoint_url = checkpoint_url or settings.checkpoint_url()
        self.store = ResultsStore(results_url or settings.results_url())
        self.executor = executor or LocalExecutor()

    def workflow(self, name: str | Workflow) -> Workflow:
        return name if isinstance(name, Workflow) else self.registry.get(name)

    def run(
        self,
        workflow: str | Workflow,
        case: str | TestCase,
        combo: str | Combo = BASELINE,
        timeout_s: float | None = None,
        trial: int = 0,
    ) -> ThreadResult:
        """Run one case (one trial of it) under one combo now, in this process, and store it."""
        wf = self.workflow(workflow)
        combo_key = wf.check_combo(combo).key
        test_case = case if isinstance(case, TestCase) else select_cases(wf.cases(), [case])[0]
        task = ThreadTask(
            combo_key,
            test_case,
            thread_id_for(wf.name, combo_key, test_case.id, trial=trial),
            code_version=wf.combo_code_version(combo_key),
            trial=trial,
        )
        plan = BatchPlan(wf, self.checkpoint_url, [task], timeout_s=timeout_s)
        # through the leases like a batch: an overlapping run never shares this thread
        return execute(plan, self.store, LocalExecutor(max_concurrency=1))[0]

    def run_batch(
        self,
        workflow: str | Workflow,
        combos: Iterable[str | Combo] | None = None,
        cases: Iterable[str] | None = None,
        force: bool = False,
        retry_failed: bool = False,
        timeout_s: float | None = None,
        progress: Progress | None = None,
        run_id: str | None = None,
        trials: int | None = None,
    ) -> BatchSummary:
        """Run the variant matrix (or the given combos) over the dataset (or the given cases),
        `trials` times each (default: the workflow's `trials`)."""
        return run_batch(
            self.workflow(workflow),
            self.store,
            self.checkpoint_url,
            combos=combos,
            case_ids=cases,
            executor=self.executor,
            force=force,
            retry_failed=retry_failed,
            timeout_s=timeout_s,
            progress=progress,
            run_id=run_id,
            trials=trials,
        )

    def get_state(self, thread_id: str, checkpoint_id: str | None = None) -> Any:
        """The thread's `StateSnapshot` at its newest checkpoint, or at `checkpoint_id`."""
        return thread_state(self.registry, self.checkpoint_url, thread_id, checkpoint_id)

    def get_checkpoints(self, thread_id: str) -> list[CheckpointInfo]:
        """The thread's checkpoints, oldest first, each with the node that wrote it."""
        return thread_history(self.registry, self.checkpoint_url, thread_id)

    history = get_checkpoints

    def compare(self, workflow: str | Workflow, include_forks: bool = False) -> Comparison:
        """The comparison of a workflow's stored threads, aggregated in the results database."""
        return compare_stored(self.store, self.workflow(workflow).name, include_forks=include_forks)

    def close(self) -> None:
        self.store.close()

    # -- time travel ---------------------------------------------------------------------------

    def threads(
        self,
        workflow: str | Workflow,
        combo: str | Combo | None = None,
        status: str | None = None,
        include_forks: bool = True,
    ) -> pd.DataFrame:
        """The stored threads of a workflow, one row each, forks with their parent link.

        >>> bench.threads("demo", combo="baseline", status="failed")[["thread_id", "error"]]
        """
        wf = self.workflow(workflow)
        combos = [wf.check_combo(combo).key] if combo is not None else None
        if status is not None and status not in STATUSES:
            raise WTBError(f"unknown thread status {status!r}; statuses: {', '.join(STATUSES)}")
        frame = self.store.results_frame(
            wf.name, combos=combos, lineage=None if include_forks else MAIN_LINEAGE, status=status
        )
        return frame[THREAD_COLUMNS].reset_index(drop=True)

    def rollback(
        self, thread_id: str, checkpoint_id: str | None = None, to_node: str | None = None
    ) -> ThreadResult:
        """Continue the same thread from a past checkpoint, or from just before `to_node`.

        >>> bench.rollback("toy/baseline/c0", to_node="b")
        """
        return rollback(
            self.registry, self.store, self.checkpoint_url, self.executor, thread_id,
            checkpoint_id, to_node,
        )  # fmt: skip

    def fork(
        self,
        thread_id: str,
        checkpoint_id: str | None = None,
        before_node: str | None = None,
        after_node: str | None = None,
        state_patch: dict[str, Any] | None = None,
        variant: str | None = None,
        force: bool = False,
    ) -> ThreadResult:
        """Fork a thread into a new one from a checkpoint and run only the nodes downstream.

        >>> bench.fork("toy/baseline/c0", before_node="b", variant="b=double")
        """
        request = ForkRequest(
            thread_id, checkpoint_id, before_node, after_node, state_patch, variant
        )
        return fork(
            self.registry, self.store, self.checkpoint_url, self.executor, request, force=force
        )

    def resume(self, thread_id: str, value: Any) -> ThreadResult:
        """Answer the interrupt an interrupted thread waits on (`Command(resume=value)`)."""
        return resume(
            self.registry, self.store, self.checkpoint_url, self.executor, thread_id, value
        )

    def request_rerun(self, request: RerunRequest | str, **fields: Any) -> int:
        """Store a validated rerun request (executed by the sensor or `execute_rerun`): a
        `RerunRequest`, or a workflow name and the request's fields.

        >>> bench.request_rerun("toy", combo="baseline", before_node="c", reason="new c")
        """
        if isinstance(request, str):
            request = rerun_request(request, **fields)
        return create_rerun_request(
            self.store, self.workflow(request.workflow), request, self.checkpoint_url
        )

    def execute_rerun(self, request_id: int, run_id: str | None = None) -> list[ThreadResult]:
        """Run a stored rerun request's forks on this bench's executor."""
        return execute_rerun_request(
            self.registry, self.store, self.checkpoint_url, self.executor, request_id, run_id
        )

    # -- workspace files (in the blob store `WTB_BLOB_URL` names, as the runs do) ---------------

    def files(self, thread_id: str, checkpoint_id: str | None = None) -> Manifest:
        """The workspace files of a thread at a checkpoint (its newest by default).

        >>> sorted(bench.files("docs/baseline/c0"))
        ['answer.md']
        """
        with open_checkpointer(self.checkpoint_url) as saver:
            return files_at(saver, BlobStore(settings.blob_url()), thread_id, checkpoint_id)

    def file_changes(self, thread_id: str, before: str, after: str) -> list[FileChange]:
        """What the steps from checkpoint `before` to `after` did to the workspace."""
        with open_checkpointer(self.checkpoint_url) as saver:
            blobs = BlobStore(settings.blob_url())
            return diff(
                files_at(saver, blobs, thread_id, before), files_at(saver, blobs, thread_id, after)
            )

    def export_files(self, thread_id: str, checkpoint_id: str | None, folder: str | Path) -> int:
        """Write a thread's workspace at a checkpoint into an empty folder; returns its bytes."""
        blobs = BlobStore(settings.blob_url())
        with open_checkpointer(self.checkpoint_url) as saver:
            manifest = files_at(saver, blobs, thread_id, checkpoint_id)
        return export(blobs, manifest, Path(folder))

    def collect_garbage(
        self, min_age_s: float = DEFAULT_MIN_AGE_S, apply: bool = False
    ) -> GcReport:
        """Delete (with `apply`; a dry run otherwise) blobs no checkpoint references."""
        with open_checkpointer(self.checkpoint_url) as saver:
            return collect_garbage(saver, BlobStore(settings.blob_url()), min_age_s, apply)
