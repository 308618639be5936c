"""A thread's checkpoints: the list of them with the node that wrote each, and finding one.

"Which node wrote this checkpoint" is answered here only (`writer_of`): a checkpoint the loop
wrote was produced by the tasks its parent scheduled (the parent's `next`); the others carry
their source (input, `update_state`, LangGraph's `fork` copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wtb_dagster.checkpoints import thread_config
from wtb_dagster.errors import ThreadNotFoundError, WTBError
from wtb_dagster.workspaces import METADATA_KEY

# What wrote a checkpoint that no node's task wrote. "fork" is LangGraph's copy of a past
# checkpoint when a run starts from it (rollback, fork).
SOURCE_WRITERS = {"input": "input", "update": "update_state", "fork": "fork"}
# The nodes LangGraph adds itself: never something a user reruns from.
_INTERNAL_WRITERS = {"input", "__start__", "update_state", None}


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of a thread, as `wtb history` shows it."""

    checkpoint_id: str
    step: int
    source: str
    writer: str | None
    next: tuple[str, ...]
    changed_keys: tuple[str, ...]
    created_at: str | None
    parent_checkpoint_id: str | None
    # workspace files at this checkpoint ({"manifest", "files", "bytes"}, `workspaces`); None
    # when the checkpoint records none (no workspace, or written outside a run: its parent's)
    files: dict[str, Any] | None = None


def writer_of(metadata: dict[str, Any] | None, parent_next: Sequence[str] | None) -> str | None:
    """The node(s) that wrote a checkpoint (comma-joined when parallel), or its source."""
    source = str((metadata or {}).get("source", ""))
    if source == "loop" and parent_next:
        return ",".join(parent_next)
    return SOURCE_WRITERS.get(source)


def writer_at(graph: Any, snapshot: Any) -> str | None:
    """`writer_of` a snapshot, reading its parent from the checkpointer when needed."""
    parent_next = None
    if (snapshot.metadata or {}).get("source") == "loop" and snapshot.parent_config:
        parent_next = graph.get_state(snapshot.parent_config).next
    return writer_of(snapshot.metadata, parent_next)


def list_checkpoints(graph: Any, thread_id: str) -> list[CheckpointInfo]:
    """The thread's checkpoints, oldest first, with the node that wrote each one."""
    history = list(graph.get_state_history(thread_config(thread_id)))
    if not history:
        raise ThreadNotFoundError(
            f"thread {thread_id!r} has no checkpoints in this checkpointer; list the threads "
            f"with `wtb threads {thread_id.split('/', 1)[0]}`"
        )
    by_id = {s.config["configurable"]["checkpoint_id"]: s for s in history}
    infos: list[CheckpointInfo] = []
    for snapshot in reversed(history):
        metadata = dict(snapshot.metadata or {})
        parent_id = (snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        parent = by_id.get(parent_id) if parent_id else None
        values = snapshot.values if isinstance(snapshot.values, dict) else {}
        before = parent.values if parent is not None and isinstance(parent.values, dict) else {}
        changed = tuple(sorted(k for k in values if k not in before or before[k] != values[k]))
        infos.append(
            CheckpointInfo(
                checkpoint_id=snapshot.config["configurable"]["checkpoint_id"],
                step=int(metadata.get("step", -1)),
                source=str(metadata.get("source", "")),
                writer=writer_of(metadata, parent.next if parent is not None else None),
                next=tuple(snapshot.next),
                changed_keys=changed,
                created_at=snapshot.created_at,
                parent_checkpoint_id=parent_id,
                files=metadata.get(METADATA_KEY),
            )
        )
    return infos


def current_branch(checkpoints: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
    """The thread's current branch, newest first: its head and the head's ancestors.

    After a rollback a thread holds several branches; `get_state` reads the newest checkpoint,
    so "before node N" means before N on the branch that led there.
    """
    by_id = {c.checkpoint_id: c for c in checkpoints}
    branch: list[CheckpointInfo] = []
    node: CheckpointInfo | None = checkpoints[-1] if checkpoints else None
    while node is not None:
        branch.append(node)
        node = by_id.get(node.parent_checkpoint_id or "")
    return branch


def nodes_ran(checkpoints: Sequence[CheckpointInfo]) -> list[str]:
    """The workflow nodes that wrote a checkpoint of the thread, in the order they first ran."""
    ran: dict[str, None] = {}
    for checkpoint in checkpoints:
        if checkpoint.source == "loop" and checkpoint.writer not in _INTERNAL_WRITERS:
            ran.update(dict.fromkeys(checkpoint.writer.split(",")))  # type: ignore[union-attr]
    return list(ran)


def check_point(checkpoint_id: str | None, before_node: str | None, after_node: str | None) -> None:
    """Exactly one "from where" must be given."""
    named = {"checkpoint_id": checkpoint_id, "before_node": before_node, "after_node": after_node}
    given = [name for name, value in named.items() if value]
    if len(given) != 1:
        raise WTBError(
            "say where to continue from with exactly one of checkpoint_id, before_node or "
            f"after_node (got {', '.join(given) or 'none'})"
        )


def resolve_checkpoint(
    checkpoints: Sequence[CheckpointInfo],
    thread_id: str,
    checkpoint_id: str | None = None,
    before_node: str | None = None,
    after_node: str | None = None,
) -> CheckpointInfo:
    """The checkpoint a request names: by id, just before a node, or just after it.

    "before N" is the newest checkpoint on the current branch whose `next` holds N (in a cycle,
    the last time N was about to run); "after N" the newest one N wrote.

    >>> resolve_checkpoint(list_checkpoints(graph, tid), tid, before_node="c").next
    ('c',)
    """
    check_point(checkpoint_id, before_node, after_node)
    fix = f"see `wtb history {thread_id}`"
    if checkpoint_id:
        for checkpoint in checkpoints:
            if checkpoint.checkpoint_id == checkpoint_id:
                return checkpoint
        newest = ", ".join(c.checkpoint_id for c in checkpoints[-3:])
        raise ThreadNotFoundError(
            f"thread {thread_id!r} has no checkpoint {checkpoint_id!r} "
            f"({len(checkpoints)} checkpoints, newest: {newest}); {fix}"
        )
    branch = current_branch(checkpoints)
    for checkpoint in branch:
        if before_node and before_node in checkpoint.next:
            return checkpoint
        writers = (checkpoint.writer or "").split(",") if checkpoint.source == "loop" else []
        if after_node and after_node in writers:
            return checkpoint
    ran = ", ".join(nodes_ran(branch[::-1])) or "none"
    where = f"before node {before_node!r}" if before_node else f"after node {after_node!r}"
    raise WTBError(
        f"thread {thread_id!r} has no checkpoint {where}: it never reached that node "
        f"(nodes it ran: {ran}); {fix}"
    )


def locate_checkpoint(
    graph: Any,
    thread_id: str,
    checkpoint_id: str | None = None,
    before_node: str | None = None,
    after_node: str | None = None,
    with_writer: bool = True,
) -> CheckpointInfo:
    """`resolve_checkpoint` on a live thread, reading back from its head only as far as needed.

    Rerunning many threads from before a late node reads two checkpoints per thread, not the
    whole history; the whole history is read only to explain a checkpoint that is not there.
    `with_writer=False` spares the read of the parent that names the checkpoint's writer.

    >>> locate_checkpoint(graph, "toy/baseline/c0", before_node="c").next
    ('c',)
    """
    check_point(checkpoint_id, before_node, after_node)
    if checkpoint_id:
        snapshot = graph.get_state(thread_config(thread_id, checkpoint_id))
        if snapshot.created_at:
            return _info(graph, snapshot, with_writer)
    else:
        child, config = None, thread_config(thread_id)
        while config is not None:
            snapshot = graph.get_state(config)
            if not snapshot.created_at:
                break
            if before_node and before_node in snapshot.next:
                return _info(graph, snapshot, with_writer)
            # the child of the checkpoint that scheduled N, if the loop wrote it, is "after N"
            written = child is not None and (child.metadata or {}).get("source") == "loop"
            if after_node and written and after_node in snapshot.next:
                return _info(graph, child, with_writer, parent_next=snapshot.next)
            child, config = snapshot, snapshot.parent_config
    return resolve_checkpoint(
        list_checkpoints(graph, thread_id), thread_id, checkpoint_id, before_node, after_node
    )


def _info(
    graph: Any, snapshot: Any, with_writer: bool, parent_next: Sequence[str] | None = None
) -> CheckpointInfo:
    metadata = snapshot.metadata or {}
    parent = snapshot.parent_config
    if parent_next is not None:
        writer = writer_of(metadata, parent_next)
    elif with_writer:
        writer = writer_at(graph, snapshot)
    else:
        writer = writer_of(metadata, None)
    return CheckpointInfo(
        checkpoint_id=snapshot.config["configurable"]["checkpoint_id"],
        step=int(metadata.get("step", -1)),
        source=str(metadata.get("source", "")),
        writer=writer,
        next=tuple(snapshot.next),
        changed_keys=(),  # not needed to rerun; `list_checkpoints` computes them
        created_at=snapshot.created_at,
        parent_checkpoint_id=(parent or {}).get("configurable", {}).get("checkpoint_id"),
        files=metadata.get(METADATA_KEY),
    )
