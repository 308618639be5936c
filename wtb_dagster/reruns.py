"""Rerun requests: "resume these threads from this point, with this change", run as forks.

A request is a row of the results store's `wtb_rerun_requests` table. Anything may write one
(the CLI, the Python API, a Dagster launch); whoever executes it (a Dagster sensor's run, or
`execute_rerun_request` directly) forks every selected thread from the named point and runs
the forks as one plan on an executor. History is never overwritten: the originals stay, the
forks are new threads linked to them.

>>> request_id = create_rerun_request(bench.store, wf, combo="baseline", before_node="generate",
...                                   variant="generate=template", reason="try the template")
>>> results = execute_rerun_request(bench, request_id)
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Sequence
from typing import Any

from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.errors import ThreadNotFoundError, WTBError
from wtb_dagster.execution import Executor, compile_for
from wtb_dagster.forks import ForkRequest, check_state_patch, parse_variant, run_forks
from wtb_dagster.history import check_point, locate_checkpoint
from wtb_dagster.matrix import Combo
from wtb_dagster.reading import check_node
from wtb_dagster.rerun_request import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    RerunRequest,
    StoredRerunRequest,
)
from wtb_dagster.store import ResultsStore, result_from_row
from wtb_dagster.threads import MAIN_LINEAGE, STATUSES, ThreadResult, parse_thread_id
from wtb_dagster.workflows import Registry, Workflow

__all__ = ["DONE", "FAILED", "PENDING", "RUNNING"]


def select_threads(
    store: ResultsStore,
    workflow: str,
    thread_ids: Sequence[str] | None = None,
    combo: str | None = None,
    status_filter: str | None = None,
) -> list[str]:
    """The threads a request names: its explicit ids, else the stored main-lineage threads of
    the workflow (of one combo, with one status, when given)."""
    if thread_ids:
        return list(dict.fromkeys(thread_ids))
    frame = store.results_frame(
        workflow,
        combos=[combo] if combo else None,
        lineage=MAIN_LINEAGE,
        status=status_filter,
        columns=["thread_id"],
    )
    return sorted(frame.thread_id)


def _check_thread_ids(store: ResultsStore, workflow: str, thread_ids: Sequence[str]) -> None:
    for thread_id in thread_ids:
        name = parse_thread_id(thread_id).workflow
        if name != workflow:
            raise WTBError(f"thread {thread_id!r} belongs to workflow {name!r}, not {workflow!r}")
    stored = store.statuses_of(list(thread_ids))
    unknown = [t for t in thread_ids if t not in stored]
    if unknown:
        raise ThreadNotFoundError(
            f"no stored thread(s) {', '.join(unknown)} in workflow {workflow!r}; "
            f"list them with `wtb threads {workflow}`"
        )


def _check_points_exist(
    checkpoint_url: str, workflow: Workflow, thread_ids: Sequence[str], point: dict[str, Any]
) -> None:
    # Explicitly named threads must have the point: a typo fails now, not in the sensor's run.
    with open_checkpointer(checkpoint_url) as saver:
        graphs: dict[str, Any] = {}
        for thread_id in thread_ids:
            combo = parse_thread_id(thread_id).combo
            graph = graphs.setdefault(combo, compile_for(workflow, combo, saver))
            locate_checkpoint(graph, thread_id, **point, with_writer=False)


def create_rerun_request(
    store: ResultsStore,
    workflow: Workflow,
    request: RerunRequest,
    checkpoint_url: str | None = None,
) -> int:
    """Validate and store a rerun request (status `pending`); returns its id.

    Which threads: `thread_ids`, or the stored main-lineage threads of `combo` (optionally only
    those with status `status_filter`), or every stored thread of the workflow. From where:
    exactly one of `checkpoint_id` (with exactly one thread), `before_node`, `after_node`.
    Nothing is written when the request is invalid. With `checkpoint_url`, the explicitly
    named threads are also checked to hold the checkpoint (or to have reached the node).

    >>> create_rerun_request(store, wf, RerunRequest(workflow="toy", thread_ids=[tid],
    ...                      before_node="c", state_patch={"x": 5}))
    1
    """
    if request.workflow != workflow.name:
        raise WTBError(f"rerun request for {request.workflow!r} given workflow {workflow.name!r}")
    thread_ids, combo, status_filter = request.thread_ids, request.combo, request.status_filter
    check_point(request.checkpoint_id, request.before_node, request.after_node)
    if thread_ids is not None and (combo or status_filter):
        raise WTBError("name the threads either by thread_ids or by combo/status_filter, not both")
    if request.checkpoint_id and len(thread_ids or ()) != 1:
        raise WTBError(
            "a checkpoint id belongs to one thread: give exactly one thread id with it, or "
            "use before_node/after_node for many threads"
        )
    for node in (request.before_node, request.after_node):
        if node:
            check_node(workflow, node)
    combo = workflow.check_combo(combo).key if combo else None
    if status_filter is not None and status_filter not in STATUSES:
        raise WTBError(f"unknown status filter {status_filter!r}; statuses: {', '.join(STATUSES)}")
    if request.variant:
        parse_variant(workflow, request.variant)
    patch = None
    if request.state_patch is not None:
        patch = check_state_patch(workflow, request.state_patch)
    if thread_ids is not None:
        if not thread_ids:
            raise WTBError("thread_ids is empty: name at least one thread")
        _check_thread_ids(store, workflow.name, thread_ids)
    selected = select_threads(store, workflow.name, thread_ids, combo, status_filter)
    if not selected:
        raise WTBError(
            f"no stored threads of workflow {workflow.name!r} match combo={combo or 'any'}, "
            f"status={status_filter or 'any'}; run `wtb run {workflow.name}` first"
        )
    if checkpoint_url and thread_ids:
        point = dict(
            checkpoint_id=request.checkpoint_id,
            before_node=request.before_node,
            after_node=request.after_node,
        )
        _check_points_exist(checkpoint_url, workflow, selected, point)
    checked = request.model_copy(
        update={
            "thread_ids": list(thread_ids) if thread_ids else None,
            "combo": combo,
            "state_patch": patch,
        }
    )
    return store.add_rerun_request(checked)


def resolve_threads(store: ResultsStore, request: RerunRequest) -> list[str]:
    """The thread ids a request applies to, resolved now (a combo's threads may grow).

    >>> resolve_threads(store, store.get_rerun_request(request_id))
    ['toy/baseline/c0', 'toy/baseline/c1']
    """
    return select_threads(
        store, request.workflow, request.thread_ids, request.combo, request.status_filter
    )


def fork_requests(store: ResultsStore, request: RerunRequest) -> list[ForkRequest]:
    """One `ForkRequest` per thread the request applies to."""
    return [
        ForkRequest(
            thread_id,
            checkpoint_id=request.checkpoint_id,
            before_node=request.before_node,
            after_node=request.after_node,
            state_patch=request.state_patch,
            variant=request.variant,
        )
        for thread_id in resolve_threads(store, request)
    ]


def execute_rerun_request(
    registry: Registry,
    store: ResultsStore,
    checkpoint_url: str,
    executor: Executor,
    request_id: int,
    run_id: str | None = None,
) -> list[ThreadResult]:
    """Run a stored request's forks as one plan; returns their results.

    Marks the request `running` (with `run_id` as its `dagster_run_id`), then `done` with the
    fork thread ids, or `failed` with the error (and raises). A request already `done` is not
    run again: its stored forks are returned. A `running` (its run died) or `failed` one runs
    again; forks are idempotent, so what had finished is found, not repeated. Threads of a
    combo/status selection that never reached the named node are skipped; the request's
    `error` column says which.

    >>> [r.parent_thread_id for r in execute_rerun_request(registry, store, url, ex, 1)]
    ['toy/baseline/c0']
    """
    row = store.get_rerun_request(request_id)
    if row.status == DONE:
        fork_ids = row.result_thread_ids or []
        stored = store.get_results(fork_ids)
        return [result_from_row(stored[t]) for t in fork_ids if t in stored]
    store.update_rerun_request(
        request_id, status=RUNNING, dagster_run_id=run_id or row.dagster_run_id, error=None
    )
    try:
        results, skipped = run_forks(
            registry,
            store,
            checkpoint_url,
            executor,
            fork_requests(store, row),
            run_id=run_id,
            skip_unreached=not row.thread_ids,
        )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, WTBError):  # a bug, not a bad request: keep where it happened
            error += "\n" + "".join(traceback.format_exception(exc)[-3:])
        store.update_rerun_request(request_id, status=FAILED, error=error)
        raise
    note = None
    if skipped:
        note = f"skipped {len(skipped)} thread(s) that never reached the node: " + ", ".join(
            sorted(skipped)
        )
    store.update_rerun_request(
        request_id,
        status=DONE,
        result_thread_ids=[r.thread_id for r in results],
        error=note,
    )
    return results


def pending_requests(
    store: ResultsStore, after_id: int = 0, limit: int | None = None
) -> list[StoredRerunRequest]:
    """Requests waiting to be executed, oldest (lowest id) first, at most `limit` of them.

    A poller must not keep "the highest id seen" as its only memory: on PostgreSQL an id is
    handed out at insert and becomes visible at commit, so a lower id can appear later. Page
    with `after_id` within one poll, and start every poll from the beginning.
    """
    return store.rerun_requests(status=PENDING, after_id=after_id, limit=limit)


def changed_implementations(
    before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]
) -> list[tuple[str, str]]:
    """(node, variant) pairs whose code version differs between two `code_versions` maps."""
    return sorted(
        (node, variant)
        for node, impls in after.items()
        for variant, version in impls.items()
        if node in before and variant in before[node] and before[node][variant] != version
    )


def affected_combos(
    workflow: Workflow, changes: Sequence[tuple[str, str]], stored_combos: Iterable[str]
) -> list[tuple[str, str, Combo]]:
    """`(node, variant, combo)` for each changed `(node, variant)` and each combo of the matrix
    that runs that variant of the node and has stored threads (nothing else to rerun).

    >>> affected_combos(wf, [("b", "baseline")], {"baseline", "b=double"})
    [('b', 'baseline', Combo(picks=()))]
    """
    stored = set(stored_combos)
    matrix = [combo for combo in workflow.matrix() if combo.key in stored]
    return [
        (node, variant, combo)
        for node, variant in changes
        for combo in matrix
        if combo.variant_for(node) == variant
    ]


def find_rerun_request(
    store: ResultsStore,
    workflow: str,
    *,
    combo: str,
    before_node: str,
    reason: str,
    statuses: Sequence[str] = (PENDING, RUNNING, DONE),
) -> int | None:
    """The id of a stored combo-wide request with exactly these fields and one of `statuses`
    (a failed one does not count), else None: lets a poller that retries create a request once.
    """
    for row in store.rerun_requests():
        if (
            row.status in statuses
            and row.workflow == workflow
            and row.combo == combo
            and row.before_node == before_node
            and row.reason == reason
            and not (row.thread_ids or row.status_filter or row.checkpoint_id)
            and not (row.after_node or row.variant or row.state_patch)
        ):
            return row.id
    return None
