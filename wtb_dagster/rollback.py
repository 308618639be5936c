"""Continuing a thread in place: roll it back to a past checkpoint, or answer its interrupt.

LangGraph branches within the thread when it is invoked with a past `checkpoint_id`, so a
rollback loses nothing of the history; `Command(resume=…)` answers an `interrupt()`. The
thread's results row is replaced by the new outcome (compare `forks`, which make new threads).
"""

from __future__ import annotations

from typing import Any

from wtb_dagster.batches import execute
from wtb_dagster.errors import WTBError
from wtb_dagster.execution import BatchPlan, Executor, ThreadTask
from wtb_dagster.history import resolve_checkpoint
from wtb_dagster.reading import (
    check_node,
    thread_case,
    thread_history,
    thread_state,
    thread_workflow,
    workflow_cases,
)
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import ThreadResult
from wtb_dagster.workflows import Registry


def _same_thread_task(
    registry: Registry, store: ResultsStore, thread_id: str, **fields: Any
) -> ThreadTask:
    workflow, key = thread_workflow(registry, thread_id)
    row = store.get_result(thread_id)
    return ThreadTask(
        combo=key.combo,
        case=thread_case(workflow, workflow_cases(workflow), key.case_id, row),
        thread_id=thread_id,
        lineage=key.lineage,
        trial=key.trial,
        parent_thread_id=row["parent_thread_id"] if row else None,
        parent_checkpoint_id=row["parent_checkpoint_id"] if row else None,
        change=row["change"] if row else None,
        code_version=workflow.combo_code_version(key.combo),
        **fields,
    )


def _run_one(
    registry: Registry,
    store: ResultsStore,
    checkpoint_url: str,
    executor: Executor,
    task: ThreadTask,
) -> ThreadResult:
    workflow, _ = thread_workflow(registry, task.thread_id)
    return execute(BatchPlan(workflow, checkpoint_url, [task]), store, executor)[0]


def rollback(
    registry: Registry,
    store: ResultsStore,
    checkpoint_url: str,
    executor: Executor,
    thread_id: str,
    checkpoint_id: str | None = None,
    to_node: str | None = None,
) -> ThreadResult:
    """Continue the same thread from a past checkpoint (or from just before `to_node`).

    >>> rollback(registry, store, url, executor, "toy/baseline/c0", to_node="b").nodes_executed
    2
    """
    workflow, _ = thread_workflow(registry, thread_id)
    if to_node:
        check_node(workflow, to_node)
    checkpoints = thread_history(registry, checkpoint_url, thread_id)
    origin = resolve_checkpoint(checkpoints, thread_id, checkpoint_id, before_node=to_node)
    task = _same_thread_task(registry, store, thread_id, checkpoint_id=origin.checkpoint_id)
    return _run_one(registry, store, checkpoint_url, executor, task)


def resume(
    registry: Registry,
    store: ResultsStore,
    checkpoint_url: str,
    executor: Executor,
    thread_id: str,
    value: Any,
) -> ThreadResult:
    """Answer the `interrupt()` an interrupted thread waits on with `Command(resume=value)`.

    >>> resume(registry, store, url, executor, "review/baseline/c0", "approved").status
    'succeeded'
    """
    snapshot = thread_state(registry, checkpoint_url, thread_id)
    if not snapshot.interrupts:
        row = store.get_result(thread_id)
        status = row["status"] if row else "not stored"
        if snapshot.tasks:
            waiting = f"waits before {', '.join(t.name for t in snapshot.tasks)}"
        else:
            waiting = "has ended"
        raise WTBError(
            f"thread {thread_id!r} is not interrupted (status {status}; it {waiting}); only "
            "a thread stopped by interrupt() can be resumed with a value"
        )
    task = _same_thread_task(registry, store, thread_id, resume_value=value)
    return _run_one(registry, store, checkpoint_url, executor, task)
