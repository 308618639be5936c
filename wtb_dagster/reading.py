"""Reading bench threads by id: the workflow and graph a thread runs, its state, its case.

Everything that starts from a thread id and needs the registry lives here, below the verbs
that change threads (`forks`, `rollback`, `reruns`) and the `Bench` facade.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wtb_dagster.checkpoints import open_checkpointer, thread_config
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ThreadNotFoundError, WTBError
from wtb_dagster.execution import compile_for
from wtb_dagster.history import CheckpointInfo, list_checkpoints
from wtb_dagster.threads import ThreadKey, parse_thread_id
from wtb_dagster.workflows import Registry, Workflow


def thread_workflow(registry: Registry, thread_id: str) -> tuple[Workflow, ThreadKey]:
    """The workflow a thread id names, looked up, and the id's parts."""
    key = parse_thread_id(thread_id)
    return registry.get(key.workflow), key


def thread_graph(registry: Registry, thread_id: str, saver: Any) -> Any:
    """The thread's workflow compiled for its combo on `saver`."""
    workflow, key = thread_workflow(registry, thread_id)
    return compile_for(workflow, key.combo, saver)


def thread_state(
    registry: Registry, checkpoint_url: str, thread_id: str, checkpoint_id: str | None = None
) -> Any:
    """The thread's `StateSnapshot` at its newest checkpoint, or at `checkpoint_id`."""
    with open_checkpointer(checkpoint_url) as saver:
        graph = thread_graph(registry, thread_id, saver)
        snapshot = graph.get_state(thread_config(thread_id, checkpoint_id))
    if not snapshot.created_at:
        if checkpoint_id:
            raise ThreadNotFoundError(
                f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}; "
                f"see `wtb history {thread_id}`"
            )
        raise ThreadNotFoundError(f"thread {thread_id!r} has no checkpoints; has it run?")
    return snapshot


def thread_history(registry: Registry, checkpoint_url: str, thread_id: str) -> list[CheckpointInfo]:
    """The thread's checkpoints, oldest first, each with the node that wrote it."""
    with open_checkpointer(checkpoint_url) as saver:
        return list_checkpoints(thread_graph(registry, thread_id, saver), thread_id)


def check_node(workflow: Workflow, node: str) -> str:
    """The node, if the workflow's graph has it."""
    nodes = workflow.node_names()
    if node not in nodes:
        raise WTBError(
            f"workflow {workflow.name!r} has no node {node!r}; its nodes: {', '.join(nodes)}"
        )
    return node


def workflow_cases(workflow: Workflow) -> dict[str, TestCase]:
    """The workflow's cases by id; none when it has no dataset (see `thread_case`)."""
    return {c.id: c for c in workflow.cases()} if workflow.dataset is not None else {}


def thread_case(
    workflow: Workflow,
    cases: Mapping[str, TestCase],
    case_id: str,
    row: Mapping[str, Any] | None,
) -> TestCase:
    """The case a thread ran: from the dataset, else from its stored row (the case left the
    dataset; the thread still knows what it ran, which is all a rerun needs to score it)."""
    if case_id in cases:
        return cases[case_id]
    if row is not None:
        return TestCase(id=case_id, input=dict(row["input"] or {}), expected=row["expected"])
    raise ThreadNotFoundError(f"workflow {workflow.name!r} has no case {case_id!r}")
