"""The Python API: the verbs users of the original bench know, over the engine's modules.

>>> bench = Bench()                                   # wtb.yaml, SQLite under ./data
>>> summary = bench.run_batch("demo")                 # every combo × every case
>>> print(bench.compare("demo").to_markdown())
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wtb_dagster import settings
from wtb_dagster.batches import BatchSummary, Progress, run_batch
from wtb_dagster.checkpoints import (
    CheckpointInfo,
    list_checkpoints,
    open_checkpointer,
    thread_config,
)
from wtb_dagster.comparison import Comparison, compare
from wtb_dagster.datasets import TestCase, select_cases
from wtb_dagster.errors import ThreadNotFoundError
from wtb_dagster.execution import Executor, LocalExecutor, ThreadTask, compile_for, run_thread
from wtb_dagster.matrix import BASELINE, Combo
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import MAIN_LINEAGE, ThreadResult, thread_id_for
from wtb_dagster.workflows import Registry, Workflow, load_registry

_THREAD_RE = re.compile(
    r"^(?P<workflow>[^/]+)/(?P<combo>[^/]+)/(?P<case>.+?)(?:@(?P<lineage>fork-[0-9a-f]+))?$"
)


def parse_thread_id(thread_id: str) -> tuple[str, str, str, str]:
    """(workflow, combo, case id, lineage) of a bench thread id."""
    match = _THREAD_RE.match(thread_id)
    if not match:
        raise ThreadNotFoundError(
            f"{thread_id!r} is not a bench thread id (workflow/combo/case[@fork-…]); "
            "list threads with `wtb threads <workflow>`"
        )
    return match["workflow"], match["combo"], match["case"], match["lineage"] or MAIN_LINEAGE


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
    ) -> ThreadResult:
        """Run one case under one combo now, in this process, and store the result."""
        wf = self.workflow(workflow)
        combo_key = wf.check_combo(combo).key
        test_case = case if isinstance(case, TestCase) else select_cases(wf.cases(), [case])[0]
        task = ThreadTask(
            combo_key,
            test_case,
            thread_id_for(wf.name, combo_key, test_case.id),
            code_version=wf.combo_code_version(combo_key),
        )
        with open_checkpointer(self.checkpoint_url) as saver:
            result = run_thread(compile_for(wf, combo_key, saver), wf, task, timeout_s)
        self.store.upsert_results([result])
        return result

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
    ) -> BatchSummary:
        """Run the variant matrix (or the given combos) over the dataset (or the given cases)."""
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
        )

    def graph_for_thread(self, thread_id: str, saver: Any) -> Any:
        name, combo, _, _ = parse_thread_id(thread_id)
        return compile_for(self.workflow(name), combo, saver)

    def get_state(self, thread_id: str, checkpoint_id: str | None = None) -> Any:
        """The thread's `StateSnapshot` at its newest checkpoint, or at `checkpoint_id`."""
        with open_checkpointer(self.checkpoint_url) as saver:
            graph = self.graph_for_thread(thread_id, saver)
            snapshot = graph.get_state(thread_config(thread_id, checkpoint_id))
        if not snapshot.created_at:
            if checkpoint_id:
                raise ThreadNotFoundError(
                    f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}; "
                    f"see `wtb history {thread_id}`"
                )
            raise ThreadNotFoundError(f"thread {thread_id!r} has no checkpoints; has it run?")
        return snapshot

    def get_checkpoints(self, thread_id: str) -> list[CheckpointInfo]:
        """The thread's checkpoints, oldest first, each with the node that wrote it."""
        with open_checkpointer(self.checkpoint_url) as saver:
            return list_checkpoints(self.graph_for_thread(thread_id, saver), thread_id)

    def compare(self, workflow: str | Workflow, include_forks: bool = False) -> Comparison:
        wf = self.workflow(workflow)
        frame = self.store.results_frame(wf.name, lineage=None if include_forks else MAIN_LINEAGE)
        return compare(frame)

    def close(self) -> None:
        self.store.close()

    # -- time travel (wtb_dagster.timetravel, wtb_dagster.reruns) ----------------------------
    # Imported in the methods: those modules build on this one.

    def threads(
        self,
        workflow: str | Workflow,
        combo: str | Combo | None = None,
        status: str | None = None,
        include_forks: bool = True,
    ) -> Any:
        """The stored threads of a workflow as a DataFrame (forks with their parent link)."""
        from wtb_dagster import timetravel

        return timetravel.threads(self, workflow, combo, status, include_forks)

    def history(self, thread_id: str) -> list[CheckpointInfo]:
        """The thread's checkpoints, oldest first, each with the node that wrote it."""
        from wtb_dagster import timetravel

        return timetravel.history(self, thread_id)

    def rollback(
        self, thread_id: str, checkpoint_id: str | None = None, to_node: str | None = None
    ) -> ThreadResult:
        """Continue the same thread from a past checkpoint, or from just before `to_node`.

        >>> bench.rollback("toy/baseline/c0", to_node="b")
        """
        from wtb_dagster import timetravel

        return timetravel.rollback(self, thread_id, checkpoint_id, to_node)

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
        from wtb_dagster import timetravel

        return timetravel.fork(
            self, thread_id, checkpoint_id, before_node, after_node, state_patch, variant, force
        )

    def resume(self, thread_id: str, value: Any) -> ThreadResult:
        """Answer the interrupt an interrupted thread waits on (`Command(resume=value)`)."""
        from wtb_dagster import timetravel

        return timetravel.resume(self, thread_id, value)

    def request_rerun(
        self,
        workflow: str | Workflow,
        *,
        thread_ids: Iterable[str] | None = None,
        combo: str | None = None,
        status_filter: str | None = None,
        checkpoint_id: str | None = None,
        before_node: str | None = None,
        after_node: str | None = None,
        variant: str | None = None,
        state_patch: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> int:
        """Store a validated rerun request (executed by the sensor or `execute_rerun`).

        >>> bench.request_rerun("toy", combo="baseline", before_node="c", reason="new c")
        """
        from wtb_dagster import reruns

        return reruns.create_rerun_request(
            self.store,
            self.workflow(workflow),
            thread_ids=list(thread_ids) if thread_ids is not None else None,
            combo=combo,
            status_filter=status_filter,
            checkpoint_id=checkpoint_id,
            before_node=before_node,
            after_node=after_node,
            variant=variant,
            state_patch=state_patch,
            reason=reason,
            checkpoint_url=self.checkpoint_url,
        )

    def execute_rerun(self, request_id: int, run_id: str | None = None) -> list[ThreadResult]:
        """Run a stored rerun request's forks on this bench's executor."""
        from wtb_dagster import reruns

        return reruns.execute_rerun_request(self, request_id, run_id=run_id)
