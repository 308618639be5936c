"""Time travel over bench threads: look at history, roll back, fork, resume an interrupt.

Only LangGraph idioms: `get_state_history` to read a thread, `update_state(as_node=…)` to patch
a state, invoking with a `checkpoint_id` to continue from a past checkpoint and
`Command(resume=…)` to answer an `interrupt()`.

- **rollback** continues the *same* thread from a past checkpoint; LangGraph branches within
  the thread, so nothing of its history is lost.
- **fork** starts a *new* thread (its own lineage, linked to its parent in the results store):
  the parent's checkpoint chain up to the chosen checkpoint is copied into it, the state patch
  and variant are applied, and only the nodes downstream of that checkpoint execute. Forks are
  planned as a `BatchPlan` whose `prepare` hook does the copy in the worker, so one fork or ten
  thousand run the same way on any executor.

>>> bench.fork("demo/baseline/q-001", before_node="generate", variant="generate=template")
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from wtb_dagster.api import parse_thread_id
from wtb_dagster.batches import execute
from wtb_dagster.checkpoints import (
    SOURCE_WRITERS,
    CheckpointInfo,
    list_checkpoints,
    open_checkpointer,
    thread_config,
)
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ThreadNotFoundError, VariantError, WTBError
from wtb_dagster.execution import BatchPlan, Executor, ThreadTask, compile_for
from wtb_dagster.matrix import BASELINE, Combo
from wtb_dagster.threads import (
    FAILED,
    MAIN_LINEAGE,
    STATUSES,
    TIMED_OUT,
    ThreadResult,
    fork_lineage,
    thread_id_for,
)
from wtb_dagster.workflows import Workflow

if TYPE_CHECKING:
    from wtb_dagster.api import Bench

THREAD_COLUMNS = [
    "thread_id", "combo", "case_id", "status", "lineage", "parent_thread_id",
    "parent_checkpoint_id", "change", "scores", "latency_s", "nodes_executed", "error",
]  # fmt: skip
# The nodes LangGraph adds itself: never something a user reruns from.
_INTERNAL_WRITERS = {"input", "__start__", "update_state", None}


# -- reading threads ---------------------------------------------------------------------------


def threads(
    bench: Bench,
    workflow: str | Workflow,
    combo: str | Combo | None = None,
    status: str | None = None,
    include_forks: bool = True,
) -> pd.DataFrame:
    """The stored threads of a workflow, one row each, forks with their parent link.

    >>> threads(bench, "demo", combo="baseline", status="failed")[["thread_id", "error"]]
    """
    wf = bench.workflow(workflow)
    combos = [wf.check_combo(combo).key] if combo is not None else None
    if status is not None and status not in STATUSES:
        raise WTBError(f"unknown thread status {status!r}; statuses: {', '.join(STATUSES)}")
    frame = bench.store.results_frame(
        wf.name, combos=combos, lineage=None if include_forks else MAIN_LINEAGE, status=status
    )
    return frame[THREAD_COLUMNS].reset_index(drop=True)


def history(bench: Bench, thread_id: str) -> list[CheckpointInfo]:
    """The thread's checkpoints, oldest first, each with the node that wrote it.

    >>> [c.writer for c in history(bench, "toy/baseline/c0")]
    ['input', '__start__', 'a', 'b', 'c']
    """
    wf, combo, _, _ = _thread_parts(bench, thread_id)
    with open_checkpointer(bench.checkpoint_url) as saver:
        return graph_history(compile_for(wf, combo, saver), thread_id)


def _thread_parts(bench: Bench, thread_id: str) -> tuple[Workflow, str, str, str]:
    name, combo, case_id, lineage = parse_thread_id(thread_id)
    return bench.workflow(name), combo, case_id, lineage


def graph_history(graph: Any, thread_id: str) -> list[CheckpointInfo]:
    """`list_checkpoints` with a message that says how to find the existing threads."""
    try:
        return list_checkpoints(graph, thread_id)
    except ThreadNotFoundError:
        raise ThreadNotFoundError(
            f"thread {thread_id!r} has no checkpoints in this checkpointer; list the threads "
            f"with `wtb threads {thread_id.split('/', 1)[0]}`"
        ) from None


# -- resolving a checkpoint --------------------------------------------------------------------


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


def check_node(workflow: Workflow, node: str) -> str:
    """The node, if the workflow's graph has it."""
    nodes = workflow.node_names()
    if node not in nodes:
        raise WTBError(
            f"workflow {workflow.name!r} has no node {node!r}; its nodes: {', '.join(nodes)}"
        )
    return node


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

    >>> resolve_checkpoint(history(bench, tid), tid, before_node="c").next
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
                return _info(graph, child, with_writer, writers=snapshot.next)
            child, config = snapshot, snapshot.parent_config
    return resolve_checkpoint(
        graph_history(graph, thread_id), thread_id, checkpoint_id, before_node, after_node
    )


def _info(
    graph: Any, snapshot: Any, with_writer: bool, writers: Sequence[str] | None = None
) -> CheckpointInfo:
    metadata = snapshot.metadata or {}
    source = str(metadata.get("source", ""))
    parent = snapshot.parent_config
    if writers is None and with_writer and source == "loop" and parent:
        writers = graph.get_state(parent).next
    writer = SOURCE_WRITERS.get(source)
    return CheckpointInfo(
        checkpoint_id=snapshot.config["configurable"]["checkpoint_id"],
        step=int(metadata.get("step", -1)),
        source=source,
        writer=",".join(writers) if writers else writer,
        next=tuple(snapshot.next),
        changed_keys=(),  # not needed to rerun; `history` computes them
        created_at=snapshot.created_at,
        parent_checkpoint_id=(parent or {}).get("configurable", {}).get("checkpoint_id"),
    )


# -- variants and patches ----------------------------------------------------------------------


def parse_variant(workflow: Workflow, variant: str) -> list[tuple[str, str]]:
    """`node=variant[+node=variant…]` checked against the workflow; `node=baseline` allowed.

    >>> parse_variant(wf, "generate=template")
    [('generate', 'template')]
    """
    known = workflow.variant_names()
    picks: dict[str, str] = {}
    for part in variant.split("+"):
        node, sep, name = part.strip().partition("=")
        if not sep or not node or not name:
            raise VariantError(f"variant {variant!r}: {part!r} is not 'node=variant'")
        if node not in known:
            raise VariantError(
                f"variant {variant!r}: node {node!r} has no variants; "
                f"varied nodes: {', '.join(sorted(known)) or 'none'}"
            )
        if name != BASELINE and name not in known[node]:
            raise VariantError(
                f"variant {variant!r}: node {node!r} has no variant {name!r}; "
                f"declared: {', '.join([BASELINE, *known[node]])}"
            )
        picks[node] = name
    return sorted(picks.items())


def check_state_patch(workflow: Workflow, patch: Mapping[str, Any]) -> dict[str, Any]:
    """A state patch must name state keys and be JSON (it is stored with the request)."""
    if not isinstance(patch, Mapping) or not patch:
        raise WTBError(f"a state patch is a non-empty mapping of state key → value: {patch!r:.80}")
    keys = list(workflow.base_graph().channels)
    unknown = sorted(set(patch) - set(keys))
    if unknown:
        raise WTBError(
            f"state patch: workflow {workflow.name!r} has no state key(s) "
            f"{', '.join(unknown)}; its state keys: {', '.join(keys)}"
        )
    try:
        json.dumps(patch)
    except TypeError as exc:
        raise WTBError(f"state patch must be JSON-serialisable: {exc}") from None
    return dict(patch)


# -- forks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForkRequest:
    """Fork `thread_id` from one checkpoint, optionally with a state patch and a variant."""

    thread_id: str
    checkpoint_id: str | None = None
    before_node: str | None = None
    after_node: str | None = None
    state_patch: dict[str, Any] | None = None
    variant: str | None = None


def copy_chain(saver: Any, source_thread: str, checkpoint_id: str, target_thread: str) -> int:
    """Copy checkpoint `checkpoint_id` of `source_thread` and all its ancestors into
    `target_thread`, with the same ids and pending writes; returns how many were copied.

    LangGraph's savers do not implement `copy_thread`, and a fork needs only one branch.
    """
    # One `list` reads the thread in a query or two; walking `get_tuple` would be one per step.
    by_id = {t.checkpoint["id"]: t for t in saver.list(thread_config(source_thread))}
    if checkpoint_id not in by_id:
        raise ThreadNotFoundError(f"thread {source_thread!r} has no checkpoint {checkpoint_id!r}")
    chain = []
    node = by_id.get(checkpoint_id)
    while node is not None:
        chain.append(node)
        parent = (node.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        node = by_id.get(parent) if parent else None
    parent_id: str | None = None
    for node in reversed(chain):
        target = thread_config(target_thread, node.checkpoint["id"])
        writes: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        for task_id, channel, value in node.pending_writes or ():
            writes[task_id].append((channel, value))
        # Writes first: once a checkpoint is in the target, it is complete (see prepare_fork).
        for task_id, task_writes in writes.items():
            saver.put_writes(target, task_writes, task_id)
        # All channel versions as new: the savers that keep blobs per version store them all.
        saver.put(
            thread_config(target_thread, parent_id),
            node.checkpoint,
            node.metadata,
            dict(node.checkpoint["channel_versions"]),
        )
        parent_id = node.checkpoint["id"]
    return len(chain)


def _patch_node(graph: Any, saver: Any, config: dict[str, Any]) -> str:
    """The node a patch at this checkpoint is attributed to: the one that wrote it."""
    node = saver.get_tuple(config)
    source = (node.metadata or {}).get("source")
    if source == "loop" and node.parent_config:
        writers = graph.get_state(node.parent_config).next
        if len(writers) == 1:
            return writers[0]
    # update/fork checkpoints repeat their parent's position; find the node that wrote it.
    if source in ("update", "fork") and node.parent_config:
        return _patch_node(graph, saver, node.parent_config)
    raise WTBError(
        f"checkpoint {config['configurable']['checkpoint_id']} was not written by one node "
        f"(source {source!r}); patch the state at a checkpoint one node wrote"
    )


def prepare_fork(graph: Any, saver: Any, task: ThreadTask) -> ThreadTask:
    """Set up a fork thread in the worker; returns the task to run (the `BatchPlan.prepare` hook).

    Copies the parent's chain up to `task.parent_checkpoint_id` into `task.thread_id`, applies
    `task.change["state_patch"]` with `update_state(as_node=<writer>)` and points the task at
    the checkpoint to continue from. A fork thread that already got past that point (a crash
    during its run, a failed node retried) continues from its newest checkpoint instead.
    """
    fork_id, origin = task.thread_id, task.parent_checkpoint_id
    assert task.parent_thread_id and origin, "a fork task names its parent and checkpoint"
    if task.fresh:
        saver.delete_thread(fork_id)
    head = None if task.fresh else saver.get_tuple(thread_config(fork_id))
    if head is not None and head.checkpoint["id"] != origin:
        if saver.get_tuple(thread_config(fork_id, origin)) is not None:
            return replace(task, checkpoint_id=None, fresh=False)  # got past it: continue
        saver.delete_thread(fork_id)  # a copy cut short: start it over
        head = None
    if head is None:
        copy_chain(saver, task.parent_thread_id, origin, fork_id)
    start = thread_config(fork_id, origin)
    patch = (task.change or {}).get("state_patch")
    if patch:
        start = graph.update_state(start, patch, as_node=_patch_node(graph, saver, start))
    # An explicit checkpoint id makes LangGraph re-execute the tasks after it (time travel)
    # rather than reuse the parent's writes copied with the chain.
    return replace(task, checkpoint_id=start["configurable"]["checkpoint_id"], fresh=False)


def _case(
    workflow: Workflow, cases: dict[str, TestCase], case_id: str, row: Mapping[str, Any] | None
) -> TestCase:
    if case_id in cases:
        return cases[case_id]
    if row is not None:  # the case left the dataset; the thread still knows what it ran
        return TestCase(id=case_id, input=dict(row["input"] or {}), expected=row["expected"])
    raise ThreadNotFoundError(f"workflow {workflow.name!r} has no case {case_id!r}")


def _cases_or_empty(workflow: Workflow) -> list[TestCase]:
    # A thread needs its case only to be scored; the stored row is the fallback (see `_case`).
    return workflow.cases() if workflow.dataset is not None else []


def _fork_change(
    origin: CheckpointInfo,
    request: ForkRequest,
    picks: list[tuple[str, str]],
    patch: dict[str, Any] | None,
) -> dict[str, Any]:
    point = "checkpoint"
    if request.before_node:
        point = f"before {request.before_node}"
    elif request.after_node:
        point = f"after {request.after_node}"
    return {
        "from": point,
        "checkpoint_id": origin.checkpoint_id,
        "variant": "+".join(f"{n}={v}" for n, v in picks) or None,
        "state_patch": patch,
    }


@dataclass
class ForkPlan:
    """Forks to run, stored forks not to run again, and requests that did not apply."""

    tasks: list[ThreadTask] = field(default_factory=list)
    stored: list[ThreadResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # parent thread id → why no fork
    order: list[str] = field(default_factory=list)  # fork thread ids, in request order


class _Planner:
    """Resolves fork requests against one open checkpointer, caching per workflow and combo."""

    def __init__(self, bench: Bench, saver: Any) -> None:
        self.bench, self.saver = bench, saver
        self._graphs: dict[tuple[str, str], Any] = {}
        self._cases: dict[str, dict[str, TestCase]] = {}
        self._nodes: dict[str, list[str]] = {}
        self._versions: dict[tuple[str, str], str] = {}

    def graph(self, wf: Workflow, combo: str) -> Any:
        if (wf.name, combo) not in self._graphs:
            self._graphs[wf.name, combo] = compile_for(wf, combo, self.saver)
        return self._graphs[wf.name, combo]

    def case(self, wf: Workflow, case_id: str, thread_id: str) -> TestCase:
        if wf.name not in self._cases:
            self._cases[wf.name] = {c.id: c for c in _cases_or_empty(wf)}
        cases = self._cases[wf.name]
        row = None if case_id in cases else self.bench.store.get_result(thread_id)
        return _case(wf, cases, case_id, row)

    def check_node(self, wf: Workflow, node: str) -> None:
        if wf.name not in self._nodes:
            self._nodes[wf.name] = wf.node_names()
        if node not in self._nodes[wf.name]:
            check_node(wf, node)  # raises, naming the workflow's nodes

    def code_version(self, wf: Workflow, combo: str) -> str:
        if (wf.name, combo) not in self._versions:
            self._versions[wf.name, combo] = wf.combo_code_version(combo)
        return self._versions[wf.name, combo]

    def task(self, request: ForkRequest, force: bool, skip_unreached: bool) -> ThreadTask | str:
        """The fork task of a request, or why the request does not apply to its thread."""
        wf, combo, case_id, _ = _thread_parts(self.bench, request.thread_id)
        check_point(request.checkpoint_id, request.before_node, request.after_node)
        for node in (request.before_node, request.after_node):
            if node:
                self.check_node(wf, node)
        patch = check_state_patch(wf, request.state_patch) if request.state_patch else None
        picks = parse_variant(wf, request.variant) if request.variant else []
        try:
            origin = locate_checkpoint(
                self.graph(wf, combo), request.thread_id, request.checkpoint_id,
                request.before_node, request.after_node, with_writer=bool(patch),
            )  # fmt: skip
        except WTBError as exc:
            if skip_unreached and not request.checkpoint_id:
                return str(exc)
            raise
        if patch:
            _check_patchable(origin, request.thread_id)
        parent = Combo.parse(combo)
        # Only picks that change the parent's combo are a change (and part of the lineage).
        picks = [(node, variant) for node, variant in picks if parent.variant_for(node) != variant]
        new_combo = parent
        for node, variant in picks:
            new_combo = new_combo.with_pick(node, variant)
        new_combo = wf.check_combo(new_combo)  # the matrix's filters do not bind forks
        change = _fork_change(origin, request, picks, patch)
        lineage = fork_lineage(
            request.thread_id,
            origin.checkpoint_id,
            json.dumps({"variant": change["variant"], "state_patch": patch}, sort_keys=True),
        )
        return ThreadTask(
            combo=new_combo.key,
            case=self.case(wf, case_id, request.thread_id),
            thread_id=thread_id_for(wf.name, new_combo.key, case_id, lineage),
            lineage=lineage,
            checkpoint_id=origin.checkpoint_id,
            fresh=force,
            parent_thread_id=request.thread_id,
            parent_checkpoint_id=origin.checkpoint_id,
            change=change,
            code_version=self.code_version(wf, new_combo.key),
        )


def _check_patchable(origin: CheckpointInfo, thread_id: str) -> None:
    # update_state attributes a patch to the node that wrote the checkpoint; the input
    # checkpoint has none (patching it as __start__ would drop the rest of the input).
    if origin.source == "input":
        raise WTBError(
            f"checkpoint {origin.checkpoint_id} of {thread_id!r} is the input checkpoint; "
            "patch the state before the first node instead (before_node=<first node>)"
        )
    if "," in (origin.writer or ""):
        raise WTBError(
            f"checkpoint {origin.checkpoint_id} of {thread_id!r} was written by parallel "
            f"nodes {origin.writer}; a state patch needs a checkpoint one node wrote"
        )


def plan_forks(
    bench: Bench,
    requests: Iterable[ForkRequest],
    force: bool = False,
    skip_unreached: bool = False,
) -> ForkPlan:
    """Resolve each request to a fork task; everything is checked before anything runs.

    A stored fork that finished under the same code is not run again unless `force`; a failed
    one continues from its newest checkpoint; one stored under other code is set up afresh.
    With `skip_unreached`, a thread that never reached the requested node is skipped (listed
    in `skipped`) instead of raising.
    """
    plan, seen, tasks = ForkPlan(), set(), []
    with open_checkpointer(bench.checkpoint_url) as saver:
        planner = _Planner(bench, saver)
        for request in requests:
            task = planner.task(request, force, skip_unreached)
            if isinstance(task, str):
                plan.skipped[request.thread_id] = task
                continue
            if task.thread_id not in seen:  # the same fork may be asked for twice
                seen.add(task.thread_id)
                plan.order.append(task.thread_id)
                tasks.append(task)
    stored_rows = {} if force else bench.store.get_results(plan.order)
    for task in tasks:
        stored = stored_rows.get(task.thread_id)
        if stored is None:
            plan.tasks.append(task)
            continue
        stale = stored["code_version"] != task.code_version
        if stored["status"] not in (FAILED, TIMED_OUT) and not stale:
            plan.stored.append(result_from_row(stored))
        else:
            plan.tasks.append(replace(task, fresh=stale))
    return plan


def run_forks(
    bench: Bench,
    requests: Iterable[ForkRequest],
    executor: Executor | None = None,
    force: bool = False,
    run_id: str | None = None,
    skip_unreached: bool = False,
) -> tuple[list[ThreadResult], dict[str, str]]:
    """Run many forks as one plan on an executor; returns (results in request order, skipped).

    >>> results, skipped = run_forks(bench, [ForkRequest(t, before_node="generate") for t in ids])
    """
    plan = plan_forks(bench, requests, force=force, skip_unreached=skip_unreached)
    by_id = {r.thread_id: r for r in plan.stored}
    per_workflow: dict[str, list[ThreadTask]] = defaultdict(list)
    for task in plan.tasks:
        per_workflow[parse_thread_id(task.thread_id)[0]].append(task)
    for name, tasks in per_workflow.items():
        batch = BatchPlan(
            bench.workflow(name), bench.checkpoint_url, tasks, run_id=run_id, prepare=prepare_fork
        )
        for result in execute(batch, bench.store, executor or bench.executor):
            by_id[result.thread_id] = result
    return [by_id[t] for t in plan.order], plan.skipped


def fork(
    bench: Bench,
    thread_id: str,
    checkpoint_id: str | None = None,
    before_node: str | None = None,
    after_node: str | None = None,
    state_patch: dict[str, Any] | None = None,
    variant: str | None = None,
    force: bool = False,
    executor: Executor | None = None,
) -> ThreadResult:
    """Fork a thread from one checkpoint into a new thread and run only what lies downstream.

    The fork runs under the parent's combo with `variant` applied, from the state at the
    checkpoint with `state_patch` applied. Asking for the same fork again returns the stored
    one (its thread id is derived from parent, checkpoint and change) unless `force`.

    >>> r = fork(bench, "toy/baseline/c0", before_node="c", state_patch={"x": 5})
    >>> r.final_values["x"], r.nodes_executed, r.parent_thread_id
    (1005, 1, 'toy/baseline/c0')
    """
    request = ForkRequest(thread_id, checkpoint_id, before_node, after_node, state_patch, variant)
    results, _ = run_forks(bench, [request], executor=executor, force=force)
    return results[0]


# -- rollback and resume -----------------------------------------------------------------------


def _same_thread_task(bench: Bench, thread_id: str, **fields: Any) -> ThreadTask:
    wf, combo, case_id, lineage = _thread_parts(bench, thread_id)
    row = bench.store.get_result(thread_id)
    cases = {c.id: c for c in _cases_or_empty(wf)}
    return ThreadTask(
        combo=combo,
        case=_case(wf, cases, case_id, row),
        thread_id=thread_id,
        lineage=lineage,
        parent_thread_id=row["parent_thread_id"] if row else None,
        parent_checkpoint_id=row["parent_checkpoint_id"] if row else None,
        change=row["change"] if row else None,
        code_version=wf.combo_code_version(combo),
        **fields,
    )


def _run_one(bench: Bench, task: ThreadTask, executor: Executor | None) -> ThreadResult:
    workflow = bench.workflow(parse_thread_id(task.thread_id)[0])
    plan = BatchPlan(workflow, bench.checkpoint_url, [task])
    return execute(plan, bench.store, executor or bench.executor)[0]


def rollback(
    bench: Bench,
    thread_id: str,
    checkpoint_id: str | None = None,
    to_node: str | None = None,
    executor: Executor | None = None,
) -> ThreadResult:
    """Continue the same thread from a past checkpoint (or from just before `to_node`).

    LangGraph branches within the thread: the old checkpoints stay in its history. The
    thread's results row is replaced by the new outcome.

    >>> rollback(bench, "toy/baseline/c0", to_node="b").nodes_executed
    2
    """
    wf, _, _, _ = _thread_parts(bench, thread_id)
    if to_node:
        check_node(wf, to_node)
    checkpoints = history(bench, thread_id)
    origin = resolve_checkpoint(checkpoints, thread_id, checkpoint_id, before_node=to_node)
    task = _same_thread_task(bench, thread_id, checkpoint_id=origin.checkpoint_id)
    return _run_one(bench, task, executor)


def resume(
    bench: Bench, thread_id: str, value: Any, executor: Executor | None = None
) -> ThreadResult:
    """Answer the `interrupt()` an interrupted thread waits on with `Command(resume=value)`.

    >>> resume(bench, "review/baseline/c0", "approved").status
    'succeeded'
    """
    snapshot = bench.get_state(thread_id)
    if not snapshot.interrupts:
        row = bench.store.get_result(thread_id)
        status = row["status"] if row else "not stored"
        waiting = f"waits before {', '.join(snapshot.next)}" if snapshot.next else "has ended"
        raise WTBError(
            f"thread {thread_id!r} is not interrupted (status {status}; it {waiting}); only "
            "a thread stopped by interrupt() can be resumed with a value"
        )
    task = _same_thread_task(bench, thread_id, resume_value=value)
    return _run_one(bench, task, executor)


# -- stored rows -------------------------------------------------------------------------------


def result_from_row(row: Mapping[str, Any]) -> ThreadResult:
    """A `ThreadResult` from a stored results row (the inverse of `ResultsStore.upsert_results`)."""
    fields = {k: v for k, v in row.items() if k in ThreadResult.__dataclass_fields__}
    for key in ("started_at", "finished_at"):
        value = fields.get(key)
        fields[key] = value.timestamp() if isinstance(value, datetime) else float(value or 0.0)
    for key in ("input", "scores", "score_errors", "node_timings"):
        fields[key] = fields.get(key) or {}
    return ThreadResult(**fields)
