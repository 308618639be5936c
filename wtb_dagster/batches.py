"""Batch runs: every chosen case under every chosen combo, skipping what is already done."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from wtb_dagster.checkpoints import check_checkpoint_url
from wtb_dagster.datasets import select_cases
from wtb_dagster.execution import BatchPlan, Executor, LocalExecutor, ThreadTask
from wtb_dagster.matrix import Combo
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import FAILED, TIMED_OUT, ThreadResult, thread_id_for
from wtb_dagster.workflows import Workflow

Progress = Callable[[int, int, ThreadResult], None]


@dataclass
class BatchSummary:
    """What a batch did: how many threads ran, were skipped, and how they ended."""

    workflow: str
    combos: list[str]
    total: int
    executed: int
    skipped: int
    statuses: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    results: list[ThreadResult] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.executed / self.wall_s if self.wall_s else 0.0


def plan_tasks(
    workflow: Workflow,
    combos: Iterable[Combo | str],
    case_ids: Iterable[str] | None,
    store: ResultsStore,
    force: bool = False,
    retry_failed: bool = False,
) -> tuple[list[ThreadTask], int]:
    """The threads to run and how many were skipped because they are already stored.

    A stored thread is skipped unless `force` (start it again from scratch), unless it ran under
    other code than the combo's now (stale: started again), or, for failed and timed-out
    threads, `retry_failed` (resume it from its last checkpoint).
    """
    checked = [workflow.check_combo(c) for c in combos]
    cases = select_cases(workflow.cases(), case_ids)
    tasks: list[ThreadTask] = []
    skipped = 0
    for combo in checked:
        version = workflow.combo_code_version(combo)
        stored = {} if force else store.statuses(workflow.name, combo.key)
        for case in cases:
            thread_id = thread_id_for(workflow.name, combo.key, case.id)
            status, stored_version = stored.get(thread_id, (None, None))
            retry = retry_failed and status in (FAILED, TIMED_OUT)
            # A thread stored under other code is stale: it runs again, from scratch.
            stale = status is not None and stored_version != version
            if status is not None and not retry and not stale:
                skipped += 1
                continue
            tasks.append(
                ThreadTask(
                    combo=combo.key,
                    case=case,
                    thread_id=thread_id,
                    fresh=force or stale,
                    code_version=version,
                )
            )
    return tasks, skipped


def execute(
    plan: BatchPlan,
    store: ResultsStore,
    executor: Executor,
    progress: Progress | None = None,
    flush_every: int = 50,
) -> list[ThreadResult]:
    """Run a plan on an executor, storing results as they come (in small transactions)."""
    results: list[ThreadResult] = []
    buffer: list[ThreadResult] = []
    last_flush = time.monotonic()

    def on_result(result: ThreadResult) -> None:
        nonlocal last_flush
        results.append(result)
        buffer.append(result)
        # Flush often enough that a crash loses little, rarely enough to keep SQLite fast.
        if len(buffer) >= flush_every or time.monotonic() - last_flush > 2.0:
            store.upsert_results(buffer)
            buffer.clear()
            last_flush = time.monotonic()
        if progress is not None:
            progress(len(results), len(plan.tasks), result)

    try:
        executor.run(plan, on_result)
    finally:
        store.upsert_results(buffer)
    return results


def run_batch(
    workflow: Workflow,
    store: ResultsStore,
    checkpoint_url: str,
    combos: Iterable[Combo | str] | None = None,
    case_ids: Iterable[str] | None = None,
    executor: Executor | None = None,
    force: bool = False,
    retry_failed: bool = False,
    timeout_s: float | None = None,
    progress: Progress | None = None,
    run_id: str | None = None,
) -> BatchSummary:
    """Run every chosen case under every chosen combo (default: the whole variant matrix).

    Everything is validated before anything runs or is written: an unknown combo or case id
    raises a `WTBError` and leaves the results store as it was.
    """
    check_checkpoint_url(checkpoint_url)
    chosen = list(combos) if combos is not None else workflow.matrix()
    store.setup()
    tasks, skipped = plan_tasks(workflow, chosen, case_ids, store, force, retry_failed)
    executor = executor or LocalExecutor()
    plan = BatchPlan(workflow, checkpoint_url, tasks, timeout_s=timeout_s, run_id=run_id)
    started = time.perf_counter()
    results = execute(plan, store, executor, progress) if tasks else []
    return BatchSummary(
        workflow=workflow.name,
        combos=[workflow.check_combo(c).key for c in chosen],
        total=len(tasks) + skipped,
        executed=len(results),
        skipped=skipped,
        statuses=dict(Counter(r.status for r in results)),
        wall_s=time.perf_counter() - started,
        results=results,
    )
