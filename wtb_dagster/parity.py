"""Executor parity: the same batch on several executors gives the same threads.

Each executor runs the batch into its own throwaway checkpointer and results store (SQLite
files in a temporary folder unless told otherwise), so neither sees the other's threads and
nothing is skipped as already done. The stored rows are then compared thread by thread:
status, final values and scores. A workflow whose nodes are deterministic must show no
mismatch; one that is not (a sampled LLM, a clock in the state) shows where it is not.

>>> report = check_parity(registry.get("demo"), case_ids=["q-001", "q-002"])
>>> print(report.to_markdown())
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wtb_dagster.batches import BatchSummary, run_batch
from wtb_dagster.errors import ConfigError
from wtb_dagster.execution import Executor, LocalExecutor
from wtb_dagster.matrix import Combo
from wtb_dagster.store import ResultsStore
from wtb_dagster.workflows import Workflow

COMPARED = ("status", "final_values", "scores")


@dataclass(frozen=True)
class Mismatch:
    """One field of one thread that differs between the reference executor and another."""

    thread_id: str
    field: str
    values: dict[str, Any]  # executor name -> value (None: the thread is missing there)


@dataclass
class ParityReport:
    """Which threads the executors agree on, and where they do not."""

    workflow: str
    executors: list[str]
    combos: list[str]
    threads: int
    mismatches: list[Mismatch] = field(default_factory=list)
    summaries: dict[str, BatchSummary] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.threads > 0

    def to_markdown(self, limit: int = 50) -> str:
        names = self.executors
        lines = [
            f"## Executor parity: {self.workflow} ({' vs '.join(names)})",
            "",
            f"{self.threads} threads over {len(self.combos)} combos compared on "
            f"{', '.join(COMPARED)}: "
            + ("**no mismatch**." if self.ok else f"**{len(self.mismatches)} mismatches**."),
            "",
            "| executor | executed | wall s | statuses |",
            "| --- | --- | --- | --- |",
        ]
        for name in names:
            summary = self.summaries.get(name)
            if summary is not None:
                statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items()))
                lines.append(f"| {name} | {summary.executed} | {summary.wall_s:.2f} | {statuses} |")
        if self.mismatches:
            lines += ["", "| thread | field | " + " | ".join(names) + " |"]
            lines.append("| --- | --- | " + " | ".join("---" for _ in names) + " |")
            for mismatch in self.mismatches[:limit]:
                cells = [_cell(mismatch.values.get(name)) for name in names]
                lines.append(
                    f"| {mismatch.thread_id} | {mismatch.field} | " + " | ".join(cells) + " |"
                )
            if len(self.mismatches) > limit:
                lines.append(f"\n… and {len(self.mismatches) - limit} more.")
        return "\n".join(lines) + "\n"


def _cell(value: Any, width: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=repr)
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|")


def _same(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=tolerance)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    return a == b


def _default_executors() -> dict[str, Executor]:
    from wtb_dagster.ray_execution import RayExecutor

    return {"local": LocalExecutor(max_concurrency=8), "ray": RayExecutor()}


def check_parity(
    workflow: Workflow,
    combos: Iterable[Combo | str] | None = None,
    case_ids: Iterable[str] | None = None,
    executors: Mapping[str, Executor] | None = None,
    base_dir: str | Path | None = None,
    store_urls: Mapping[str, tuple[str, str]] | None = None,
    timeout_s: float | None = None,
    ignore_metrics: Iterable[str] = (),
    tolerance: float = 1e-9,
) -> ParityReport:
    """Run the batch on every executor into separate stores and compare thread by thread.

    `executors` maps a name to an executor (default: `local` then `ray`); the first is the
    reference the others are compared with. Stores: `store_urls[name]` = (checkpoint URL,
    results URL) when given, else SQLite files under `base_dir/<name>/` (kept), else under a
    temporary folder removed afterwards. `ignore_metrics` leaves out scores that measure the
    run rather than the answer (latency). Executors this function creates are closed here.
    """
    owned = executors is None
    chosen = dict(executors) if executors is not None else _default_executors()
    if len(chosen) < 2:
        raise ConfigError("check_parity needs at least two executors to compare")
    selected_combos = list(combos) if combos is not None else workflow.matrix()
    selected_cases = list(case_ids) if case_ids is not None else None
    ignored = set(ignore_metrics)
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    summaries: dict[str, BatchSummary] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="wtb-parity-") as scratch:
            root = Path(base_dir) if base_dir is not None else Path(scratch)
            for name, executor in chosen.items():
                if store_urls is not None and name in store_urls:
                    checkpoint_url, results_url = store_urls[name]
                else:
                    folder = root / name
                    folder.mkdir(parents=True, exist_ok=True)
                    checkpoint_url = f"sqlite:///{folder.resolve()}/checkpoints.db"
                    results_url = f"sqlite:///{folder.resolve()}/results.db"
                store = ResultsStore(results_url)
                try:
                    summaries[name] = run_batch(
                        workflow,
                        store,
                        checkpoint_url,
                        combos=selected_combos,
                        case_ids=selected_cases,
                        executor=executor,
                        timeout_s=timeout_s,
                    )
                    frame = store.results_frame(workflow.name, combos=summaries[name].combos)
                    rows[name] = {r["thread_id"]: r for r in frame.to_dict("records")}
                finally:
                    store.close()
    finally:
        if owned:
            for executor in chosen.values():
                close = getattr(executor, "close", None)
                if close is not None:
                    close()
    names = list(chosen)
    reference = names[0]
    thread_ids = sorted(set().union(*(rows[name] for name in names)))
    mismatches: list[Mismatch] = []
    for thread_id in thread_ids:
        for column in COMPARED:
            values = {}
            for name in names:
                row = rows[name].get(thread_id)
                value = None if row is None else row[column]
                if column == "scores" and isinstance(value, Mapping):
                    value = {k: v for k, v in value.items() if k not in ignored}
                values[name] = value
            missing = any(thread_id not in rows[name] for name in names)
            if missing or not all(
                _same(values[reference], values[name], tolerance) for name in names[1:]
            ):
                mismatches.append(Mismatch(thread_id, "present" if missing else column, values))
                if missing:
                    break
    return ParityReport(
        workflow=workflow.name,
        executors=names,
        combos=summaries[reference].combos,
        threads=len(thread_ids),
        mismatches=mismatches,
        summaries=summaries,
    )
