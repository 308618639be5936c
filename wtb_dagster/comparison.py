"""Comparison matrices: combos × metrics with uncertainty, combos × cases, deltas to baseline.

Failed and timed-out threads score 0 on every metric (a combo that breaks is not better for
it); interrupted threads have no final state yet and are left out. A metric whose scorer
raised is missing for that thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from wtb_dagster.matrix import BASELINE
from wtb_dagster.threads import FAILED, INTERRUPTED, TIMED_OUT

ALPHA = 0.05


@dataclass
class Comparison:
    """The three views of a workflow's results; each a DataFrame, each renderable as markdown."""

    summary: pd.DataFrame  # one row per (combo, metric): mean, ci_low, ci_high, n, ...
    per_case: pd.DataFrame  # combos × cases, values of the primary metric
    deltas: pd.DataFrame  # one row per (combo, metric): delta vs baseline, p value, significant
    metrics: list[str]
    primary_metric: str | None
    baseline: str

    def wide(self) -> pd.DataFrame:
        """Combos × (n, failures, latency, one 'mean ± CI' column per metric), best first."""
        if self.summary.empty:
            return pd.DataFrame()
        first = self.summary.drop_duplicates("combo").set_index("combo")
        table = first[["n", "failures", "p50_latency_s", "p95_latency_s"]].copy()
        for metric in self.metrics:
            rows = self.summary[self.summary.metric == metric].set_index("combo")
            table[metric] = [_mean_ci(rows.loc[c]) if c in rows.index else "" for c in table.index]
        if self.primary_metric is not None:
            order = (
                self.summary[self.summary.metric == self.primary_metric]
                .set_index("combo")["mean"]
                .reindex(table.index)
                .fillna(-math.inf)
                .sort_values(ascending=False, kind="stable")
            )
            table = table.loc[order.index]
        return table

    def delta_table(self) -> pd.DataFrame:
        """Combos × metrics of `+0.123*` cells: the delta to baseline, starred when significant."""
        if self.deltas.empty:
            return pd.DataFrame()
        cells = self.deltas.assign(
            cell=[
                f"{d:+.3f}{'*' if sig else ''}"
                for d, sig in zip(self.deltas["delta"], self.deltas["significant"], strict=True)
            ]
        )
        table = cells.pivot(index="combo", columns="metric", values="cell")
        order = [c for c in self.wide().index if c in table.index]
        return table.loc[order, [m for m in self.metrics if m in table.columns]]

    def best(self, metric: str | None = None) -> str | None:
        metric = metric or self.primary_metric
        rows = self.summary[self.summary.metric == metric]
        if rows.empty:
            return None
        return str(rows.sort_values(["mean", "combo"], ascending=[False, True]).iloc[0]["combo"])

    def to_markdown(self, max_cases: int = 0) -> str:
        parts = ["### Combos × metrics (mean ± 95 % CI; failed threads score 0)", ""]
        parts.append(markdown_table(self.wide().reset_index()))
        if not self.deltas.empty:
            parts += [
                "",
                f"### Delta against `{self.baseline}` (paired t-test over shared cases; "
                f"* = p < {ALPHA})",
                "",
            ]
            parts.append(markdown_table(self.delta_table().reset_index()))
        if max_cases and not self.per_case.empty:
            parts += [
                "",
                f"### Combos × cases ({self.primary_metric}, first {max_cases} cases)",
                "",
            ]
            parts.append(markdown_table(self.per_case.iloc[:, :max_cases].reset_index()))
        return "\n".join(parts)


def _mean_ci(row: pd.Series) -> str:
    if pd.isna(row["mean"]):
        return "–"
    if pd.isna(row["ci_low"]):
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} ± {(row['ci_high'] - row['ci_low']) / 2:.3f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    if frame.empty:
        return "_no rows_"

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.3f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _ci(values: np.ndarray) -> tuple[float, float]:
    if len(values) < 2:
        return math.nan, math.nan
    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    if sem == 0:
        mean = float(np.mean(values))
        return mean, mean
    half = float(stats.t.ppf(1 - ALPHA / 2, len(values) - 1)) * sem
    mean = float(np.mean(values))
    return mean - half, mean + half


def long_scores(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (combo, case, metric) with the value each thread scored."""
    scored = results[results.status != INTERRUPTED]
    metrics = sorted({m for s in scored.scores if isinstance(s, dict) for m in s})
    rows = []
    for record in scored.itertuples(index=False):
        broke = record.status in (FAILED, TIMED_OUT)
        scores = record.scores if isinstance(record.scores, dict) else {}
        for metric in metrics:
            value = 0.0 if broke else scores.get(metric)
            rows.append(
                {"combo": record.combo, "case_id": record.case_id, "metric": metric, "value": value}
            )
    return pd.DataFrame(rows, columns=["combo", "case_id", "metric", "value"])


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = b - a
    mean = float(np.mean(diff))
    if len(diff) < 2:
        # One shared case is no evidence either way: no test, never "significant".
        return mean, (1.0 if mean == 0 else math.nan)
    if float(np.std(diff, ddof=1)) == 0:
        # No spread: either every case moved by the same amount (certain) or none moved.
        return mean, (1.0 if mean == 0 else 0.0)
    return mean, float(stats.ttest_rel(b, a).pvalue)


def compare(
    results: pd.DataFrame, baseline: str = BASELINE, primary_metric: str | None = None
) -> Comparison:
    """Build the comparison of one workflow's stored threads (a `ResultsStore.results_frame`)."""
    columns = ["combo", "metric", "mean", "ci_low", "ci_high", "n", "failures"]
    if results.empty:
        empty = pd.DataFrame(columns=columns)
        return Comparison(empty, pd.DataFrame(), pd.DataFrame(), [], None, baseline)
    scores = long_scores(results).dropna(subset=["value"])
    metrics = sorted(scores.metric.unique())
    primary = primary_metric if primary_metric in metrics else (metrics[0] if metrics else None)
    by_combo = results.groupby("combo")
    failures = by_combo.status.apply(lambda s: int(s.isin([FAILED, TIMED_OUT]).sum()))
    p50 = by_combo.latency_s.quantile(0.5)
    p95 = by_combo.latency_s.quantile(0.95)
    rows = []
    for (combo, metric), group in scores.groupby(["combo", "metric"]):
        values = group.value.to_numpy(dtype=float)
        low, high = _ci(values)
        rows.append(
            {
                "combo": combo,
                "metric": metric,
                "mean": float(np.mean(values)),
                "ci_low": low,
                "ci_high": high,
                "n": len(values),
                "failures": int(failures[combo]),
                "p50_latency_s": float(p50[combo]),
                "p95_latency_s": float(p95[combo]),
            }
        )
    if not rows:  # nothing scored (e.g. every thread interrupted): still report counts
        for combo in by_combo.groups:
            rows.append(
                {"combo": combo, "metric": None, "mean": math.nan, "ci_low": math.nan,
                 "ci_high": math.nan, "n": 0, "failures": int(failures[combo]),
                 "p50_latency_s": float(p50[combo]), "p95_latency_s": float(p95[combo])}
            )  # fmt: skip
    summary = pd.DataFrame(rows)
    per_case = pd.DataFrame()
    if primary is not None:
        per_case = (
            scores[scores.metric == primary]
            .pivot_table(index="combo", columns="case_id", values="value", aggfunc="mean")
            .sort_index()
        )
    deltas = _deltas(scores, baseline, metrics)
    return Comparison(summary, per_case, deltas, metrics, primary, baseline)


def _deltas(scores: pd.DataFrame, baseline: str, metrics: list[str]) -> pd.DataFrame:
    rows = []
    if baseline not in set(scores.combo):
        return pd.DataFrame()
    for metric in metrics:
        table = scores[scores.metric == metric].pivot_table(
            index="case_id", columns="combo", values="value", aggfunc="mean"
        )
        if baseline not in table.columns:
            continue  # the baseline has no value of this metric (e.g. its scorer always raised)
        for combo in table.columns:
            if combo == baseline:
                continue
            shared = table[[baseline, combo]].dropna()
            if shared.empty:
                continue
            delta, p_value = _paired(shared[baseline].to_numpy(), shared[combo].to_numpy())
            rows.append(
                {
                    "combo": combo,
                    "metric": metric,
                    "delta": delta,
                    "n_shared": len(shared),
                    "p_value": p_value,
                    "significant": bool(p_value < ALPHA and delta != 0),
                }
            )
    return pd.DataFrame(rows)
