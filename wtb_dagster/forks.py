"""Forks: a new thread from a checkpoint of another, with a state patch or a variant.

A fork starts a *new* thread (its own lineage, linked to its parent in the results store): the
parent's checkpoint chain up to the chosen checkpoint is copied into it, the state patch and
variant are applied, and only the nodes downstream of that checkpoint execute. Forks are planned
as a `BatchPlan` whose `prepare` hook does the copy in the worker, so one fork or ten thousand
run the same way on any executor.

>>> fork(registry, store, url, executor, "demo/baseline/q-001", before_node="generate",
...      variant="generate=template")
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from wtb_dagster.batches import execute, still_needed
from wtb_dagster.chains import copy_chain
from wtb_dagster.checkpoints import open_checkpointer, thread_config
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import WTBError
from wtb_dagster.execution import BatchPlan, Executor, ThreadTask, compile_for
from wtb_dagster.history import CheckpointInfo, check_point, locate_checkpoint, writer_at
from wtb_dagster.matrix import Combo, check_picks
from wtb_dagster.reading import check_node, thread_case, thread_workflow, workflow_cases
from wtb_dagster.store import ResultsStore, result_from_row
from wtb_dagster.threads import (
    FAILED,
    TIMED_OUT,
    ThreadResult,
    fork_lineage,
    parse_thread_id,
    thread_id_for,
)
from wtb_dagster.workflows import Registry, Workflow


def parse_variant(workflow: Workflow, variant: str) -> list[tuple[str, str]]:
    """`node=variant[+node=variant…]` checked against the workflow; `node=baseline` allowed.

    >>> parse_variant(wf, "generate=template")
    [('generate', 'template')]
    """
    return check_picks(workflow.variant_names(), variant)


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


@dataclass(frozen=True)
class ForkRequest:
    """Fork `thread_id` from one checkpoint, optionally with a state patch and a variant."""

    thread_id: str
    checkpoint_id: str | None = None
    before_node: str | None = None
    after_node: str | None = None
    state_patch: dict[str, Any] | None = None
    variant: str | None = None


def _patch_node(graph: Any, saver: Any, config: dict[str, Any]) -> str:
    """The node a patch at this checkpoint is attributed to: the one that wrote it."""
    snapshot = graph.get_state(config)
    source = (snapshot.metadata or {}).get("source")
    writer = writer_at(graph, snapshot)
    if source == "loop" and writer and "," not in writer:
        return writer
    # update/fork checkpoints repeat their parent's position; find the node that wrote it.
    if source in ("update", "fork") and snapshot.parent_config:
        return _patch_node(graph, saver, snapshot.parent_config)
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
    fork_id, origin, parent = task.thread_id, task.parent_checkpoint_id, task.parent_thread_id
    assert parent and origin, "a fork task names its parent and checkpoint"
    head = None if task.fresh else saver.get_tuple(thread_config(fork_id))
    if head is not None and head.checkpoint["id"] != origin:
        if saver.get_tuple(thread_config(fork_id, origin)) is not None:
            # Got past it: continue from its newest checkpoint, read as any resumed thread is
            # (it may have ended, or wait on an interrupt); its path is read back after.
            return replace(task, checkpoint_id=None, fresh=False, shared_path=None)
        head = None  # a copy cut short (a saver without transactions): start it over
    if head is None:
        # One transaction replaces whatever the fork thread held. Without the parent's writes
        # at the origin, the fork runs the tasks after it anew, resuming from its head as a
        # thread stopped there would (no time-travel copy of the origin needed).
        copy_chain(saver, parent, origin, fork_id, head_writes=False, replace=True)
    patch = (task.change or {}).get("state_patch")
    if patch:
        start = thread_config(fork_id, origin)
        graph.update_state(start, patch, as_node=_patch_node(graph, saver, start))
    return replace(task, checkpoint_id=None, fresh=False, resume_head=True)


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

    def __init__(self, registry: Registry, store: ResultsStore, saver: Any) -> None:
        self.registry, self.store, self.saver = registry, store, saver
        self._graphs: dict[tuple[str, str], Any] = {}
        self._cases: dict[str, Mapping[str, TestCase]] = {}
        self._nodes: dict[str, list[str]] = {}
        self._versions: dict[tuple[str, str], str] = {}
        # the stored paths of the threads to fork (`prime`): "before N" without a read back
        self.paths: dict[str, list[list[Any]]] = {}

    def prime(self, thread_ids: list[str]) -> None:
        rows = self.store.get_results(thread_ids, columns=["path"])
        self.paths = {t: row["path"] for t, row in rows.items() if row.get("path")}

    def graph(self, wf: Workflow, combo: str) -> Any:
        if (wf.name, combo) not in self._graphs:
            self._graphs[wf.name, combo] = compile_for(wf, combo, self.saver)
        return self._graphs[wf.name, combo]

    def case(self, wf: Workflow, case_id: str, thread_id: str) -> TestCase:
        if wf.name not in self._cases:
            self._cases[wf.name] = workflow_cases(wf)
        cases = self._cases[wf.name]
        row = None if case_id in cases else self.store.get_result(thread_id)
        return thread_case(wf, cases, case_id, row)

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
        wf, key = thread_workflow(self.registry, request.thread_id)
        combo, case_id = key.combo, key.case_id
        check_point(request.checkpoint_id, request.before_node, request.after_node)
        for node in (request.before_node, request.after_node):
            if node:
                self.check_node(wf, node)
        patch = check_state_patch(wf, request.state_patch) if request.state_patch else None
        picks = parse_variant(wf, request.variant) if request.variant else []
        try:
            origin = None
            if request.before_node and not patch:
                origin = _before_on_path(self.paths.get(request.thread_id), request.before_node)
                gone = origin and not self.saver.get_tuple(
                    thread_config(request.thread_id, origin.checkpoint_id)
                )
                origin = None if gone else origin  # read the live thread: it says what is wrong
            origin = origin or locate_checkpoint(
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
            thread_id=thread_id_for(wf.name, new_combo.key, case_id, lineage, key.trial),
            lineage=lineage,
            trial=key.trial,
            checkpoint_id=origin.checkpoint_id,
            fresh=force,
            shared_path=_path_to(self.paths.get(request.thread_id), origin.checkpoint_id),
            parent_thread_id=request.thread_id,
            parent_checkpoint_id=origin.checkpoint_id,
            change=change,
            code_version=self.code_version(wf, new_combo.key),
        )


def _path_to(path: list[list[Any]] | None, checkpoint_id: str) -> list[list[Any]] | None:
    """A thread's stored path up to and including `checkpoint_id` (a fork's copied prefix)."""
    ids = [step[0] for step in path or ()]
    return (
        [list(step) for step in path[: ids.index(checkpoint_id) + 1]]
        if checkpoint_id in ids
        else None
    )  # type: ignore[index]


def _before_on_path(path: list[list[Any]] | None, node: str) -> CheckpointInfo | None:
    """ "Before `node`" from a thread's stored path (its current branch, oldest first): the
    newest checkpoint whose next nodes hold it. None when the path does not say (the live
    thread is then read: it explains a node never reached)."""
    for index in range(len(path or ()) - 1, -1, -1):
        checkpoint_id, next_nodes = path[index]  # type: ignore[index]
        if node in next_nodes:
            return CheckpointInfo(
                checkpoint_id=checkpoint_id,
                step=index - 1,
                source="",
                writer=None,
                next=tuple(next_nodes),
                changed_keys=(),
                created_at=None,
                parent_checkpoint_id=path[index - 1][0] if index else None,  # type: ignore[index]
            )
    return None


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
    registry: Registry,
    store: ResultsStore,
    checkpoint_url: str,
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
    with open_checkpointer(checkpoint_url) as saver:
        planner = _Planner(registry, store, saver)
        requests = list(requests)
        planner.prime(list(dict.fromkeys(r.thread_id for r in requests)))
        for request in requests:
            task = planner.task(request, force, skip_unreached)
            if isinstance(task, str):
                plan.skipped[request.thread_id] = task
                continue
            if task.thread_id not in seen:  # the same fork may be asked for twice
                seen.add(task.thread_id)
                plan.order.append(task.thread_id)
                tasks.append(task)
    stored_rows = {} if force else store.get_results(plan.order)
    for task in tasks:
        stored = stored_rows.get(task.thread_id)
        if stored is None:  # new: set up from scratch, whatever a crashed run left
            plan.tasks.append(replace(task, fresh=True))
            continue
        stale = stored["code_version"] != task.code_version
        if stored["status"] not in (FAILED, TIMED_OUT) and not stale:
            plan.stored.append(result_from_row(stored))
        else:
            plan.tasks.append(replace(task, fresh=stale))
    return plan


def run_forks(
    registry: Registry,
    store: ResultsStore,
    checkpoint_url: str,
    executor: Executor,
    requests: Iterable[ForkRequest],
    force: bool = False,
    run_id: str | None = None,
    skip_unreached: bool = False,
) -> tuple[list[ThreadResult], dict[str, str]]:
    """Run many forks as one plan on an executor; returns (results in request order, skipped).

    >>> results, skipped = run_forks(registry, store, url, executor,
    ...                              [ForkRequest(t, before_node="generate") for t in ids])
    """
    plan = plan_forks(registry, store, checkpoint_url, requests, force, skip_unreached)
    by_id = {r.thread_id: r for r in plan.stored}
    per_workflow: dict[str, list[ThreadTask]] = defaultdict(list)
    for task in plan.tasks:
        per_workflow[parse_thread_id(task.thread_id).workflow].append(task)
    replan = partial(still_needed, store=store, force=force, retry_failed=True)
    for name, tasks in per_workflow.items():
        batch = BatchPlan(
            registry.get(name), checkpoint_url, tasks, run_id=run_id, prepare=prepare_fork
        )
        for result in execute(batch, store, executor, replan=replan):
            by_id[result.thread_id] = result
    # forks another run stored while this one waited for their leases
    missing = [t for t in plan.order if t not in by_id]
    for thread_id, row in store.get_results(missing).items():
        by_id[thread_id] = result_from_row(row)
    return [by_id[t] for t in plan.order], plan.skipped


def fork(
    registry: Registry,
    store: ResultsStore,
    checkpoint_url: str,
    executor: Executor,
    request: ForkRequest,
    force: bool = False,
) -> ThreadResult:
    """Fork a thread from one checkpoint into a new thread and run only what lies downstream.

    The fork runs under the parent's combo with the request's variant applied, from the state
    at the checkpoint with its state patch applied. Asking for the same fork again returns the
    stored one (its thread id is derived from parent, checkpoint and change) unless `force`.

    >>> r = fork(registry, store, url, executor,
    ...          ForkRequest("toy/baseline/c0", before_node="c", state_patch={"x": 5}))
    >>> r.final_values["x"], r.nodes_executed, r.parent_thread_id
    (1005, 1, 'toy/baseline/c0')
    """
    results, _ = run_forks(registry, store, checkpoint_url, executor, [request], force=force)
    return results[0]
