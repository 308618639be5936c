"""Shared prefixes: a combo's thread starts where another combo's thread of the same case
stops agreeing with it.

Two combos that run the same node code up to the first node where they differ compute the
same prefix of a case's path. So a thread of a combo does not run that prefix again: it starts
from a copy of the checkpoints of a stored thread (the *donor*: same case, trial and input,
succeeded) up to the checkpoint before the first node whose code differs, and runs from there.
A combo none of whose differing nodes is on the donor's path executes nothing: it gets the
donor's whole chain and is scored on it. "Same code" is the node's code version
(`Workflow.node_versions`), so a variant changed since the donor ran is not shared, and a
node marked `independent` always runs in every thread.

For stochastic nodes the combos then see the same upstream sample: a paired design, which
makes their comparison sharper, not biased. A workflow with `share_prefix: false`, or a node
with `independent: true`, opts out where runs must be independent samples.

>>> shared_steps(path=[["c0", ["__start__"]], ["c1", ["a"]], ["c2", ["b"]], ["c3", []]],
...              donor_versions={"a": "1", "b": "2"}, versions={"a": "1", "b": "9"})
2
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from wtb_dagster.chains import copy_chain
from wtb_dagster.errors import ThreadNotFoundError
from wtb_dagster.execution import ThreadTask
from wtb_dagster.matrix import Combo

# Where a copy of a thread sharing from itself (a stale thread of the same combo) is parked.
_PARKED = "#wtb-parked"


@dataclass(frozen=True)
class Candidate:
    """A stored thread another thread of its case may share a prefix with."""

    thread_id: str
    case_id: str
    trial: int
    input: Any
    path: list[list[Any]]
    node_versions: dict[str, str]
    node_timings: dict[str, list[float]]
    node_usage: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Candidate:
        """From a row of `ResultsStore.share_candidates`."""
        return cls(
            thread_id=row["thread_id"],
            case_id=row["case_id"],
            trial=int(row["trial"] or 0),
            input=_plain(row["input"]),
            path=list(row["path"] or []),
            node_versions=dict(row["node_versions"] or {}),
            node_timings=dict(row["node_timings"] or {}),
            node_usage=dict(row["node_usage"] or {}),
        )


def _plain(value: Any) -> Any:
    # stored inputs come back from JSON; compare the case's input in the same form
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def shared_steps(
    path: Sequence[Sequence[Any]],
    donor_versions: Mapping[str, str],
    versions: Mapping[str, str],
    independent: Iterable[str] = (),
) -> int | None:
    """The index in a donor's `path` of the checkpoint to start from, or None if nothing
    worth sharing: the first checkpoint whose next nodes include one whose code differs (or
    one marked independent), the last one when the whole path agrees. At least one workflow
    node must lie before it (copying the input alone saves nothing).
    """
    independent = set(independent)
    shared_nodes = 0
    for index, (_, next_nodes) in enumerate(path):
        if not next_nodes:
            return index if shared_nodes else None  # the donor's end: all of it agrees
        nodes = [n for n in next_nodes if n in versions or n in donor_versions]
        if any(n in independent or donor_versions.get(n) != versions.get(n) for n in nodes):
            return index if shared_nodes else None
        shared_nodes += len(nodes)
    return None  # a path that does not end: not a finished donor


@dataclass(frozen=True)
class Share:
    """Where a task starts: a donor's thread, its checkpoint, and what was run before it."""

    thread_id: str
    checkpoint_id: str
    path: list[list[Any]]
    timings: dict[str, list[float]]
    usage: dict[str, list[dict[str, Any]]]


def best_share(
    task: ThreadTask,
    candidates: Iterable[Candidate],
    versions: Mapping[str, str],
    independent: Iterable[str] = (),
) -> Share | None:
    """The longest prefix `task` can take from one of `candidates`, threads of its case and
    trial (the whole path first)."""
    best: tuple[tuple[bool, int, str], Candidate] | None = None
    wanted = _plain(task.case.input)
    for candidate in candidates:
        if candidate.input != wanted or not candidate.path:
            continue
        index = shared_steps(candidate.path, candidate.node_versions, versions, independent)
        if index is None:
            continue
        whole = not candidate.path[index][1]
        # longest first; a thread's own earlier run last (sharing with itself copies twice)
        rank = (whole, index, "" if candidate.thread_id == task.thread_id else candidate.thread_id)
        if best is None or rank > best[0]:
            best = (rank, candidate)
    if best is None:
        return None
    (_, index, _), donor = best
    return Share(
        thread_id=donor.thread_id,
        checkpoint_id=donor.path[index][0],
        path=[list(step) for step in donor.path[: index + 1]],
        timings=_runs_before(donor, index, donor.node_timings),
        usage=_runs_before(donor, index, donor.node_usage),
    )


def _runs_before(donor: Candidate, index: int, per_node: Mapping[str, list[Any]]) -> dict:
    """Of a donor's per-node records (timings, usage: one per execution, in order), those of
    the executions before `path[index]`."""
    counts: dict[str, int] = defaultdict(int)
    for _, next_nodes in donor.path[:index]:
        for node in next_nodes:
            if node in per_node:
                counts[node] += 1
    return {node: list(per_node[node][:n]) for node, n in counts.items()}


def with_shares(
    tasks: Iterable[ThreadTask],
    candidates: Iterable[Candidate],
    versions_by_combo: Mapping[str, Mapping[str, str]],
    independent: Iterable[str] = (),
) -> list[ThreadTask]:
    """`tasks`, each that may share (`ThreadTask.may_share`) pointed at its best donor."""
    by_case: dict[tuple[str, int], list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_case[candidate.case_id, candidate.trial].append(candidate)
    out = []
    for task in tasks:
        share = None
        if task.may_share:
            share = best_share(
                task,
                by_case.get((task.case.id, task.trial), ()),
                versions_by_combo[task.combo],
                independent,
            )
        if share is not None:
            task = replace(
                task,
                shared_from=share.thread_id,
                shared_checkpoint_id=share.checkpoint_id,
                shared_path=share.path,
                shared_timings=share.timings,
                shared_usage=share.usage,
            )
        out.append(task)
    return out


def waves(tasks: Iterable[ThreadTask]) -> list[list[ThreadTask]]:
    """Tasks grouped by how many variants their combo picks, fewest first: the baseline runs
    before the combos that vary one node, which run before those that vary two, so a combo
    finds its nearest neighbours already run."""
    grouped: dict[int, list[ThreadTask]] = defaultdict(list)
    for task in tasks:
        grouped[len(Combo.parse(task.combo).picks)].append(task)
    return [grouped[k] for k in sorted(grouped)]


def prepare_shared(graph: Any, saver: Any, task: ThreadTask) -> ThreadTask:
    """Set up a sharing thread in the worker (the `BatchPlan.prepare` hook of a batch).

    Replaces whatever the thread held with the donor's chain up to the shared checkpoint,
    without that checkpoint's pending writes, so the thread resumes there and runs the nodes
    after it with its own code. A donor that has been run again from scratch since it was
    chosen no longer has that checkpoint: the thread then runs from its input.
    """
    if task.shared_from is None or task.shared_checkpoint_id is None:
        return task
    target, donor, start = task.thread_id, task.shared_from, task.shared_checkpoint_id
    try:
        if donor == target:  # a stale thread of this combo: park its prefix, then put it back
            parked = target + _PARKED
            copy_chain(saver, target, start, parked, head_writes=False, replace=True)
            copy_chain(saver, parked, start, target, replace=True)
            saver.delete_thread(parked)
        else:
            copy_chain(saver, donor, start, target, head_writes=False, replace=True)
    except ThreadNotFoundError:
        saver.delete_thread(target)
        return replace(
            task,
            fresh=False,
            shared_from=None,
            shared_checkpoint_id=None,
            shared_path=None,
            shared_timings=None,
            shared_usage=None,
        )
    # a donor's whole path copied: nothing to run, the thread is read back and scored
    whole = bool(task.shared_path) and not task.shared_path[-1][1]
    return replace(task, fresh=False, resume_head=not whole)
