"""The report of one batch: one combo's stored threads summed up, and which cases ran.

Scores follow the comparison's rule (`comparison.long_scores`): failed and timed-out threads
score 0 on every metric; interrupted threads wait on `interrupt()`, have no final state, and
are counted apart — neither failures nor scored. A metric whose scorer raised is missing for
that thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from wtb_dagster.comparison import long_scores
from wtb_dagster.threads import FAILED, INTERRUPTED, TIMED_OUT

BROKEN = (FAILED, TIMED_OUT)


@dataclass
class BatchReport:
    """Counts, failure rate, latencies, means and extreme cases of one combo's threads."""

    threads: int
    statuses: dict[str, int]
    failures: int  # failed + timed out
    interrupted: int
    failure_rate: float  # failures / threads that finished (interrupted ones left out)
    p50_latency_s: float
    p95_latency_s: float
    node_latency_s: dict[str, dict[str, float]]  # node → {"p50": …, "p95": …} over executions
    means: dict[str, float]  # metric → mean over scored threads
    primary_metric: str | None
    # the `count` lowest / highest scoring cases on the primary metric, columns
    # case, status, <primary metric>, answer (the final answer, or the error)
    bottom_cases: pd.DataFrame = field(default_factory=pd.DataFrame)
    top_cases: pd.DataFrame = field(default_factory=pd.DataFrame)


def batch_report(
    frame: pd.DataFrame, primary_metric: str | None = None, count: int = 5
) -> BatchReport:
    """Sum up `frame`: the stored threads of one combo (a `ResultsStore.results_frame`, already
    narrowed to the combo's current code version).

    `primary_metric` ranks the top and bottom cases; when it is None or not scored, the first
    scored metric in alphabetical order is used (as in `comparison.compare`).
    """
    n = len(frame)
    statuses = frame.status.value_counts().to_dict() if n else {}
    failures = int(frame.status.isin(BROKEN).sum()) if n else 0
    interrupted = int((frame.status == INTERRUPTED).sum()) if n else 0
    finished = n - interrupted
    # the scoring rule (failed threads score 0) is the comparison's: `long_scores` applies
    # `comparison.scored_threads`
    scores = long_scores(frame).dropna(subset=["value"]) if n else pd.DataFrame()
    means = (
        {str(m): float(v) for m, v in scores.groupby("metric").value.mean().items()}
        if not scores.empty
        else {}
    )
    metric = primary_metric if primary_metric in means else (min(means) if means else None)
    bottom = top = pd.DataFrame()
    if metric is not None:
        chosen = scores[scores.metric == metric]
        by_case = frame.drop_duplicates("case_id").set_index("case_id")
        bottom = _ranked_cases(by_case, chosen, metric, ascending=True, count=count)
        top = _ranked_cases(by_case, chosen, metric, ascending=False, count=count)
    return BatchReport(
        threads=n,
        statuses={str(k): int(v) for k, v in statuses.items()},
        failures=failures,
        interrupted=interrupted,
        failure_rate=failures / finished if finished else 0.0,
        p50_latency_s=float(frame.latency_s.median()) if n else 0.0,
        p95_latency_s=float(frame.latency_s.quantile(0.95)) if n else 0.0,
        node_latency_s=node_latencies(frame.node_timings) if n else {},
        means=means,
        primary_metric=metric,
        bottom_cases=bottom.reset_index(drop=True),
        top_cases=top.reset_index(drop=True),
    )


def _ranked_cases(
    by_case: pd.DataFrame, scores: pd.DataFrame, metric: str, ascending: bool, count: int
) -> pd.DataFrame:
    """The `count` lowest (or highest) scoring cases, ties by case id, with their answers
    (`by_case`: a thread per case, indexed by case id): ranked first, so only the rows shown
    are looked up."""
    ranked = scores.sort_values(["value", "case_id"], ascending=[ascending, True]).head(count)
    rows = []
    for case_id, value in zip(ranked.case_id, ranked.value, strict=True):
        record = by_case.loc[case_id]
        final = record.final_values if isinstance(record.final_values, dict) else {}
        error = record.error if isinstance(record.error, str) else ""
        rows.append(
            {
                "case": case_id,
                "status": record.status,
                metric: float(value),
                "answer": str(final.get("answer", error))[:70],
            }
        )
    return pd.DataFrame(rows, columns=["case", "status", metric, "answer"])


def node_latencies(node_timings: Iterable[object]) -> dict[str, dict[str, float]]:
    """Per node, the p50 and p95 of its execution times (s) over every execution listed in
    `node_timings` (one `{node: [seconds, …]}` per thread; a node may run more than once)."""
    durations: dict[str, list[float]] = {}
    for timings in node_timings:
        if not isinstance(timings, dict):
            continue
        for node, seconds in timings.items():
            durations.setdefault(str(node), []).extend(float(s) for s in seconds or [])
    return {
        node: {
            "p50": float(pd.Series(values).quantile(0.5)),
            "p95": float(pd.Series(values).quantile(0.95)),
        }
        for node, values in sorted(durations.items())
        if values
    }


@dataclass
class CaseCoverage:
    """Which of a dataset's cases have a stored main-lineage thread under a code version."""

    cases: int  # distinct case ids of the dataset
    missing: list[str]  # dataset order: no thread (any status) under the current code
    stale: list[str]  # of `missing`, those with a thread only under older code
    stored_not_in_dataset: int  # cases with stored threads that left the dataset
    code_version: str

    @property
    def complete(self) -> bool:
        return not self.missing


def case_coverage(
    case_ids: Iterable[str], frame: pd.DataFrame, code_version: str, trials: int = 1
) -> CaseCoverage:
    """Compare the dataset's case ids with the threads stored in `frame` (one combo's main
    lineage). A case ran when each of its `trials` has a thread under `code_version`; threads
    of cases that left the dataset, or stored under older code, do not count."""
    fresh = frame[frame.code_version == code_version]
    trial_of = fresh.trial if "trial" in fresh else pd.Series(0, index=fresh.index)
    ran = fresh[trial_of < trials].assign(_trial=trial_of).groupby("case_id")._trial.nunique()
    current = set(ran.index[ran >= trials])
    older = set(frame.case_id[frame.code_version != code_version]) - current
    wanted = list(dict.fromkeys(case_ids))
    missing = [case_id for case_id in wanted if case_id not in current]
    return CaseCoverage(
        cases=len(wanted),
        missing=missing,
        stale=[case_id for case_id in missing if case_id in older],
        stored_not_in_dataset=len(set(frame.case_id) - set(wanted)),
        code_version=code_version,
    )
