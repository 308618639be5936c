"""Row labels of forks in a comparison: their parent's label, `⑂` and the change.

>>> describe_change({"variant": "generate=template"})
'generate=template'
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from wtb_dagster.errors import ThreadNotFoundError
from wtb_dagster.threads import MAIN_LINEAGE, parse_thread_id

FORK_MARK = "⑂"


def describe_change(change: Any) -> str:
    """A short name of a fork's change: `generate=template`, `patch{question}`, `rerun before c`."""
    if isinstance(change, str):
        try:
            change = json.loads(change)
        except ValueError:
            return change
    if not isinstance(change, dict):
        return "fork"
    parts = []
    if change.get("variant"):
        parts.append(str(change["variant"]))
    if change.get("state_patch"):
        parts.append("patch{" + ",".join(sorted(change["state_patch"])) + "}")
    if not parts:
        point = change.get("from")
        parts.append(f"rerun {point}" if point and point != "checkpoint" else "rerun")
    return " ".join(parts)


def _combo_of_thread(thread_id: Any) -> str | None:
    """The combo part of a thread id, when it is one."""
    if not isinstance(thread_id, str):
        return None
    try:
        return parse_thread_id(thread_id).combo
    except ThreadNotFoundError:
        return None


def fork_labels(frame: pd.DataFrame) -> tuple[pd.Series, dict[str, str]]:
    """The row label of every thread and, for each fork label, the label of its parent.

    A main-lineage thread's label is its combo. A fork's is its parent's label, `⑂` and the
    change; forks of the same parent combo with the same change are one row (one thread per
    case). When that would put two forks of one case (and trial) in one row, the label names
    the fork point, and failing that the fork's lineage, so nothing is averaged that is not a
    trial.
    """
    rows = frame.to_dict("index")
    by_thread = {r.get("thread_id"): i for i, r in rows.items() if r.get("thread_id")}
    labels: dict[Any, str] = {}
    parents: dict[Any, str] = {}

    def label(index: Any, seen: frozenset) -> str:
        if index in labels:
            return labels[index]
        row = rows[index]
        if (row.get("lineage") or MAIN_LINEAGE) == MAIN_LINEAGE:
            labels[index] = str(row["combo"])
            return labels[index]
        parent_index = by_thread.get(row.get("parent_thread_id"))
        if parent_index is not None and parent_index not in seen:
            parent = label(parent_index, seen | {index})
        else:
            parent = _combo_of_thread(row.get("parent_thread_id")) or row["combo"]
        parents[index] = parent
        labels[index] = f"{parent} {FORK_MARK} {describe_change(row.get('change'))}"
        return labels[index]

    for index in rows:
        label(index, frozenset())
    result = pd.Series(labels).reindex(frame.index)
    forks = frame.lineage.fillna(MAIN_LINEAGE) != MAIN_LINEAGE
    trial = frame["trial"] if "trial" in frame else pd.Series(0, index=frame.index)

    def point(index: Any) -> str:
        change = rows[index].get("change")
        change = json.loads(change) if isinstance(change, str) else change
        return str(change.get("from") or "") if isinstance(change, dict) else ""

    refinements = (
        lambda i: f" ({point(i)})" if point(i) else "",
        lambda i: f" [{str(rows[i].get('lineage', ''))[5:]}]",
    )
    for suffix in refinements:
        keys = pd.DataFrame({"label": result, "case": frame.case_id, "trial": trial})[forks]
        clashing = set(keys[keys.duplicated(keep=False)].label)
        if not clashing:
            break
        for index in keys.index[keys.label.isin(clashing)]:
            result[index] = result[index] + suffix(index)
    fork_parents = {result[i]: p for i, p in parents.items()}
    return result, fork_parents
