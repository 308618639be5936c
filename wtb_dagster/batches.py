"""Batch runs: every chosen case under every chosen combo, skipping what is already done."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial

from wtb_dagster.checkpoints import check_checkpoint_url
from wtb_dagster.datasets import TestCase, select_cases
from wtb_dagster.environments import refuse_local
from wtb_dagster.errors import ConfigError, ExecutionError
from wtb_dagster.execution import BatchPlan, Executor, LocalExecutor, ThreadTask
from wtb_dagster.leases import ThreadLeases
from wtb_dagster.matrix import Combo
from wtb_dagster.prefixes import Candidate, prepare_shared, waves, with_shares
from wtb_dagster.result_writer import ResultWriter
from wtb_dagster.store import ResultsStore
from wtb_dagster.telemetry import record_stored
from wtb_dagster.threads import FAILED, TIMED_OUT, ThreadResult, thread_id_for
from wtb_dagster.workflows import Workflow

log = logging.getLogger(__name__)

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

    @property
    def nodes_executed(self) -> int:
        """Node executions of the threads run (shared prefixes are not executed again)."""
        return sum(r.nodes_executed for r in self.results)

    @property
    def files_written(self) -> int:
        """Workspace file versions the threads run stored (`workspaces`)."""
        return sum(r.files_written for r in self.results)

    @property
    def bytes_written(self) -> int:
        """Their bytes, and below, the part new to the blob store (the rest deduplicated)."""
        return sum(r.bytes_written for r in self.results)

    @property
    def bytes_stored(self) -> int:
        return sum(r.bytes_stored for r in self.results)

    @property
    def shared(self) -> int:
        """Threads that started from a prefix shared with another thread."""
        return sum(r.shared_from is not None for r in self.results)


def _task_if_needed(
    thread_id: str,
    combo: str,
    case: TestCase,
    version: str | None,
    stored: tuple[str, str | None] | None,
    force: bool,
    retry_failed: bool,
    trial: int = 0,
) -> ThreadTask | None:
    """The task for one thread, or None when its stored row already answers it."""
    status, stored_version = stored or (None, None)
    retry = retry_failed and status in (FAILED, TIMED_OUT)
    # A thread stored under other code is stale: it runs again, from scratch.
    stale = status is not None and stored_version != version
    if not force and status is not None and not retry and not stale:
        return None
    return ThreadTask(
        combo=combo,
        case=case,
        thread_id=thread_id,
        fresh=force or stale,
        code_version=version,
        trial=trial,
        # a thread run anew (new, forced, stale) may start from a shared prefix; a retried
        # one resumes from its own last checkpoint
        may_share=force or stale or status is None,
    )


def plan_tasks(
    workflow: Workflow,
    combos: Iterable[Combo | str],
    case_ids: Iterable[str] | None,
    store: ResultsStore,
    force: bool = False,
    retry_failed: bool = False,
    trials: int | None = None,
) -> tuple[list[ThreadTask], int]:
    """The threads to run and how many were skipped because they are already stored.

    Every (combo, case) runs `trials` times (default: the workflow's `trials`), each trial its
    own thread. A stored thread is skipped unless `force` (start it again from scratch), unless
    it ran under other code than the combo's now (stale: started again), or, for failed and
    timed-out threads, `retry_failed` (resume it from its last checkpoint).
    """
    trials = check_trials(trials if trials is not None else workflow.trials)
    checked = [workflow.check_combo(c) for c in combos]
    cases = select_cases(workflow.cases(), case_ids)
    tasks: list[ThreadTask] = []
    skipped = 0
    code = workflow.code_versions()
    for combo in checked:
        version = workflow.combo_code_version(combo, code)
        node_versions = workflow.node_versions(combo, code)
        stored = {} if force else store.statuses(workflow.name, combo.key)
        # trial-major: the first trial of every case runs before any case's second one
        for trial in range(trials):
            for case in cases:
                thread_id = thread_id_for(workflow.name, combo.key, case.id, trial=trial)
                task = _task_if_needed(
                    thread_id, combo.key, case, version, stored.get(thread_id), force,
                    retry_failed, trial,
                )  # fmt: skip
                if task is None:
                    skipped += 1
                else:
                    tasks.append(replace(task, node_versions=node_versions))
    return tasks, skipped


def check_trials(trials: int) -> int:
    if not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= 1000:
        raise ConfigError(f"trials must be a whole number from 1 to 1000, got {trials!r}")
    return trials


def still_needed(
    tasks: list[ThreadTask], store: ResultsStore, force: bool, retry_failed: bool
) -> list[ThreadTask]:
    """`tasks` planned earlier, less those another run has stored since (read under lease)."""
    stored = {} if force else store.statuses_of([t.thread_id for t in tasks])
    kept = []
    for task in tasks:
        again = _task_if_needed(
            task.thread_id,
            task.combo,
            task.case,
            task.code_version,
            stored.get(task.thread_id),
            force,
            retry_failed,
            task.trial,
        )
        if again is not None:  # keep the task's own fields (a fork's parent, change, …)
            kept.append(
                replace(task, fresh=again.fresh, may_share=task.may_share and again.may_share)
            )
    return kept


def execute(
    plan: BatchPlan,
    store: ResultsStore,
    executor: Executor,
    progress: Progress | None = None,
    flush_every: int = 50,
    replan: Callable[[list[ThreadTask]], list[ThreadTask]] | None = None,
    poll_s: float = 1.0,
) -> list[ThreadResult]:
    """Run a plan on an executor under thread leases, storing results as they come.

    Each thread runs only while this call holds its lease. Threads another run holds are put
    aside; the rest run first, then this call waits for the other run to store or give up
    those (its lease released, expired, or its process gone) and takes over what is left.
    `replan`, called on the threads just leased, drops those another run has finished since
    the plan was made, so an overlap never runs a finished thread twice.
    """
    results: list[ThreadResult] = []
    total = len(plan.tasks)
    waited_since: float | None = None
    with ThreadLeases(store) as leases:
        todo = list(plan.tasks)
        while todo:
            held = leases.acquire(t.thread_id for t in todo)
            mine = [t for t in todo if t.thread_id in held]
            todo = [t for t in todo if t.thread_id not in held]
            if replan is not None and mine:
                kept = replan(mine)
                kept_ids = {t.thread_id for t in kept}
                leases.release(t.thread_id for t in mine if t.thread_id not in kept_ids)
                total -= len(mine) - len(kept)
                mine = kept
            if mine:
                _run_leased(
                    replace(plan, tasks=mine),
                    store,
                    executor,
                    leases,
                    results,
                    total,
                    progress,
                    flush_every,
                )
                waited_since = None
            if todo:
                waited_since = waited_since or time.monotonic()
                _wait_for_others(leases, todo, waited_since, poll_s)
    return results


def _run_leased(
    plan: BatchPlan,
    store: ResultsStore,
    executor: Executor,
    leases: ThreadLeases,
    results: list[ThreadResult],
    total: int,
    progress: Progress | None,
    flush_every: int,
) -> None:
    def store_rows(rows: list[ThreadResult]) -> None:
        store.upsert_results(rows, lease_owner=leases.owner)  # rows + node events, together
        record_stored(rows)  # Prometheus metrics of what was stored (`telemetry`)
        leases.release(r.thread_id for r in rows)  # stored: free for the next run

    # Rows are stored often enough that a crash loses little, rarely enough to keep SQLite
    # fast, and off the executor's loop, which meanwhile hands out the next cases.
    writer = ResultWriter(store_rows, flush_every=flush_every)

    def on_result(result: ThreadResult) -> None:
        results.append(result)
        writer.add(result)
        if progress is not None:
            progress(len(results), total, result)

    try:
        executor.run(plan, on_result)
    except BaseException:
        with contextlib.suppress(Exception):  # what finished is stored; the run's error wins
            writer.close()
        raise
    writer.close()


def _wait_for_others(
    leases: ThreadLeases, todo: list[ThreadTask], since: float, poll_s: float
) -> None:
    waited = time.monotonic() - since
    limit = float(os.environ.get("WTB_LEASE_WAIT_S") or 3600)
    if waited > limit:
        owners = sorted(set(leases.holders(t.thread_id for t in todo).values()))
        raise ExecutionError(
            f"{len(todo)} thread(s), e.g. {todo[0].thread_id!r}, are still being run by "
            f"another run ({', '.join(owners) or 'unknown'}) after {limit:g} s; stop that run "
            "or raise WTB_LEASE_WAIT_S"
        )
    # say so on the first poll, then every 30 s
    if waited < poll_s or int(waited) // 30 != int(waited + poll_s) // 30:
        owners = sorted(set(leases.holders(t.thread_id for t in todo).values()))
        log.info(
            "%d thread(s) are being run by another run (%s); waiting for it",
            len(todo),
            ", ".join(owners) or "just released",
        )
    time.sleep(poll_s)


def _execute_sharing(
    plan: BatchPlan,
    store: ResultsStore,
    executor: Executor,
    progress: Progress | None,
    replan: Callable[[list[ThreadTask]], list[ThreadTask]],
    since: float | None,
) -> list[ThreadResult]:
    """`execute` in waves of combos (`prefixes.waves`), each thread of a wave starting from
    the longest prefix it shares with a thread already run: stored ones, or with `since`
    (forced batches: nothing older is reused) those finished after it, including the waves
    before and any run overlapping this one."""
    workflow, total = plan.workflow, len(plan.tasks)
    versions = {t.combo: t.node_versions or {} for t in plan.tasks}
    results: list[ThreadResult] = []

    def counted(done: int, _: int, result: ThreadResult) -> None:
        if progress is not None:
            progress(len(results) + done, total, result)

    with _as_one_batch(executor):
        for wave in waves(plan.tasks):
            # read again for each wave: the waves before, and any run overlapping this one
            case_ids = sorted({t.case.id for t in wave if t.may_share})
            rows = store.share_candidates(workflow.name, case_ids, finished_after=since)
            candidates = [Candidate.of(r) for r in rows]
            wave = with_shares(wave, candidates, versions, workflow.independent)
            wave_plan = replace(plan, tasks=wave, prepare=prepare_shared)
            results.extend(execute(wave_plan, store, executor, counted, replan=replan))
    return results


@contextmanager
def _as_one_batch(executor: Executor) -> Iterator[None]:
    """The runs inside as one batch of the executor: Ray's keeps its workers warm between
    them (no start per wave) and adds up its stats."""
    session = getattr(executor, "session", None)
    if session is None:
        yield
        return
    with session():
        yield


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
    trials: int | None = None,
    forced_since: float | None = None,
) -> BatchSummary:
    """Run every chosen case under every chosen combo (default: the whole variant matrix),
    `trials` times each (default: the workflow's `trials`).

    Unless the workflow says `share_prefix: false`, a thread starts from the longest prefix
    it shares with a stored thread of its case (`prefixes`); with `force`, only threads
    finished since `forced_since` (default: now) may lend one.

    Everything is validated before anything runs or is written: an unknown combo or case id
    raises a `WTBError` and leaves the results store as it was.
    """
    check_checkpoint_url(checkpoint_url)
    chosen = list(combos) if combos is not None else workflow.matrix()
    store.setup()
    executor = executor or LocalExecutor()
    if executor.name == "local":  # before any wave runs, not when the env combo's wave comes
        refuse_local(workflow, [workflow.check_combo(c).key for c in chosen])
    tasks, skipped = plan_tasks(workflow, chosen, case_ids, store, force, retry_failed, trials)
    plan = BatchPlan(workflow, checkpoint_url, tasks, timeout_s=timeout_s, run_id=run_id)
    started = time.perf_counter()
    results: list[ThreadResult] = []
    replan = partial(still_needed, store=store, force=force, retry_failed=retry_failed)
    if tasks and workflow.share_prefix:
        since = (forced_since or time.time()) if force else None
        results = _execute_sharing(plan, store, executor, progress, replan, since)
    elif tasks:
        results = execute(plan, store, executor, progress, replan=replan)
    return BatchSummary(
        workflow=workflow.name,
        combos=[workflow.check_combo(c).key for c in chosen],
        total=len(tasks) + skipped,
        executed=len(results),
        skipped=len(tasks) + skipped - len(results),
        statuses=dict(Counter(r.status for r in results)),
        wall_s=time.perf_counter() - started,
        results=results,
    )
