"""Comparison matrices: combos × metrics with uncertainty, combos × cases, paired deltas.

The rule of what counts (`scored_threads`): failed and timed-out threads score 0 on every
metric (a combo that breaks is not better for it); interrupted threads have no final state yet,
are left out of the scores and counted apart (`interrupted`). A metric whose scorer raised is
missing for that thread.

A case's score is the mean over its trials (rows with the same combo and case and a different
`trial`; without a `trial` column every case has one). Every statistic is over cases: `n` is a
number of cases, deltas pair the per-case means of two combos over the cases both have, and
the tests, intervals, multiplicity correction and power are those of `wtb_dagster.statistics`
(read its docstring for the choices and why).

Forks (`lineage != ""`) are rows of their own, labelled with their parent's combo and the
change (`baseline ⑂ generate=template`, `baseline ⑂ patch{question}`), compared with their
parent over the parent's cases, and never pooled into the original combo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from wtb_dagster.costs import COST_COLUMNS, cost_table, pareto_front, per_case_costs
from wtb_dagster.fork_labels import FORK_MARK, fork_labels
from wtb_dagster.matrix import BASELINE
from wtb_dagster.statistics import (
    ALPHA,
    COHEN_DZ,
    N_RESAMPLES,
    POWER,
    SEED,
    check_correction,
    detection_alpha,
    minimum_detectable_effect,
    paired_comparison,
    t_intervals,
)
from wtb_dagster.statistics import adjust as adjust_p_values
from wtb_dagster.threads import FAILED, INTERRUPTED, MAIN_LINEAGE, TIMED_OUT

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"
NOT_TESTED = "not tested"
CORRECTION_NAMES = {"holm": "Holm", "fdr_bh": "Benjamini–Hochberg", "none": "no"}

SUMMARY_COLUMNS = [
    "combo", "metric", "mean", "ci_low", "ci_high", "n", "threads", "failures", "interrupted",
    "within_case_sd", "between_case_sd", "p50_latency_s", "p95_latency_s",
]  # fmt: skip
DELTA_COLUMNS = [
    "combo", "reference", "metric", "n_pairs", "delta", "sd_diff", "ci_low", "ci_high", "test",
    "p_value", "p_adjusted", "significant", "effect_size", "effect_size_kind", "mde", "verdict",
]  # fmt: skip


# -- what counts -------------------------------------------------------------------------------


def scored_threads(results: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The threads a comparison scores, with the scores they count with — the one place of the rule.

    Interrupted threads are dropped (count them apart: `status == "interrupted"`). Failed and
    timed-out threads get 0.0 on every metric any thread of `results` has (stale scores of a
    timed-out thread are ignored), or on every one of `metrics` when given (`results` is part
    of a wider set of threads). Other threads keep their scores; a metric whose scorer raised
    stays missing. Returns a copy with the same columns, `scores` rewritten.
    ``comparison_queries`` applies this rule in SQL; a test pins the two equal.
    """
    scored = results[results.status != INTERRUPTED].copy()
    if metrics is None:
        metrics = sorted({m for s in scored.scores if isinstance(s, dict) for m in s})
    broke = scored.status.isin([FAILED, TIMED_OUT])
    scored["scores"] = [
        dict.fromkeys(metrics, 0.0) if b else (dict(s) if isinstance(s, dict) else {})
        for s, b in zip(scored.scores, broke, strict=True)
    ]
    return scored


def long_scores(results: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (thread, metric) that counts: combo, case_id, trial, metric, value, latency.

    `metrics` as for `scored_threads`.
    """
    scored = scored_threads(results, metrics)
    trials = scored["trial"] if "trial" in scored else pd.Series(0, index=scored.index)
    latency = scored["latency_s"] if "latency_s" in scored else pd.Series(math.nan, scored.index)
    rows = [
        (combo, case_id, trial, metric, float(value), lat)
        for combo, case_id, trial, lat, scores in zip(
            scored.combo, scored.case_id, trials, latency, scored.scores, strict=True
        )
        for metric, value in scores.items()
        if value is not None and not (isinstance(value, float) and math.isnan(value))
    ]
    columns = ["combo", "case_id", "trial", "metric", "value", "latency_s"]
    return pd.DataFrame(rows, columns=columns).astype({"value": float, "latency_s": float})


# -- the comparison ------------------------------------------------------------------------------


@dataclass
class Comparison:
    """The views of a workflow's results; each a DataFrame, each renderable as markdown."""

    summary: pd.DataFrame  # one row per (combo, metric): mean, ci_low, ci_high, n, spreads, ...
    per_case: pd.DataFrame  # combos × cases, per-case means of the primary metric
    deltas: pd.DataFrame  # one row per (combo, metric): paired delta, CI, tests, MDE, verdict
    metrics: list[str]
    primary_metric: str | None
    baseline: str
    correction: str = "holm"
    alpha: float = ALPHA
    detection_alpha: float = ALPHA  # the level one real difference must clear in this family
    # one row per combo: tokens, cost, USD per point of the primary metric, Pareto front
    # (`costs.combo_costs`); empty when no thread used a chat model
    costs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def wide(self) -> pd.DataFrame:
        """Combos × (n, failures, interrupted, latency, one 'mean ± CI' per metric), best first.

        n and latency are those of the primary metric (the same threads).
        """
        if self.summary.empty:
            return pd.DataFrame()
        rank = (self.summary.metric != self.primary_metric).astype(int)
        first = (
            self.summary.assign(_rank=rank)
            .sort_values("_rank", kind="stable")
            .drop_duplicates("combo")
            .set_index("combo")
        )
        first = first.loc[list(dict.fromkeys(self.summary.combo))]
        table = first[["n", "failures", "interrupted", "p50_latency_s", "p95_latency_s"]].copy()
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
        """Combos × metrics of `+0.123*` cells: the delta, starred when significant (adjusted)."""
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

    def test_table(self) -> pd.DataFrame:
        """The paired tests as printable strings: Δ, CI, test, raw and adjusted p, effect, MDE."""
        if self.deltas.empty:
            return pd.DataFrame()
        order = {c: i for i, c in enumerate(self.wide().index)}
        rows = self.deltas.assign(_o=self.deltas.combo.map(order)).sort_values(
            ["_o", "metric"], kind="stable"
        )
        return pd.DataFrame(
            {
                "combo": rows.combo,
                "vs": rows.reference,
                "metric": rows.metric,
                "n": rows.n_pairs,
                "Δ": [f"{d:+.3f}" for d in rows.delta],
                "95 % CI": [
                    _interval(lo, hi) for lo, hi in zip(rows.ci_low, rows.ci_high, strict=True)
                ],
                "test": rows.test,
                "p": [_p(p) for p in rows.p_value],
                "p_adj": [_p(p) for p in rows.p_adjusted],
                "effect": [
                    _effect(e, k)
                    for e, k in zip(rows.effect_size, rows.effect_size_kind, strict=True)
                ],
                "MDE": [_mde(m) for m in rows.mde],
                "verdict": rows.verdict,
            }
        )

    def verdicts(self) -> dict[str, str]:
        """One line per compared combo: better / worse / no detectable difference, per metric."""
        lines: dict[str, str] = {}
        if self.deltas.empty:
            return lines
        rank = {BETTER: 0, WORSE: 1, NO_DIFFERENCE: 2, NOT_TESTED: 3}
        order = [c for c in self.wide().index if c in set(self.deltas.combo)]
        for combo in order:
            rows = self.deltas[self.deltas.combo == combo]
            rows = rows.assign(_r=rows.verdict.map(rank)).sort_values(["_r", "metric"])
            reference = rows.reference.iloc[0]
            head = combo if reference == self.baseline else f"{combo} (vs {reference})"
            lines[combo] = f"{head}: " + "; ".join(_verdict_part(r) for r in rows.itertuples())
        return lines

    def power_notes(self) -> list[str]:
        """Per metric: how small a difference this many cases can tell apart (combos vs baseline)."""
        if self.deltas.empty:
            return []
        notes = []
        level = f"80 % power, two-sided α = {self.detection_alpha:.3g}" + (
            f" ({CORRECTION_NAMES[self.correction]})" if self.correction != "none" else ""
        )
        mains = self.deltas[
            (self.deltas.reference == self.baseline) & ~self.deltas.combo.str.contains(FORK_MARK)
        ]
        for metric in self.metrics:
            rows = mains[(mains.metric == metric) & (mains.n_pairs >= 1)]
            if rows.empty:
                continue
            cases = _span(rows.n_pairs.min(), rows.n_pairs.max(), "{:d}")
            finite = rows.mde[np.isfinite(rows.mde)]
            if len(finite):
                below = _span(finite.min(), finite.max(), "{:.3f}")
                varies = " (depending on the combo)" if "–" in below else ""
                notes.append(
                    f"with {cases} cases, differences below {below}{varies} in `{metric}` "
                    f"cannot be told apart ({level})"
                )
            elif np.isinf(rows.mde).any():
                notes.append(
                    f"with {cases} cases, no difference in `{metric}` can be told apart "
                    f"({level}: even every case moving the same way is not significant)"
                )
            else:
                notes.append(
                    f"with {cases} cases, the paired differences in `{metric}` have no spread: "
                    "no minimum detectable effect"
                )
        return notes

    def spread_notes(self) -> list[str]:
        """Where cases have several trials: is the uncertainty in the cases or in the trials?"""
        rows = self.summary.dropna(subset=["within_case_sd"])
        notes = []
        for metric, group in rows.groupby("metric", sort=True):
            within = float(group.within_case_sd.mean())
            between = float(group.between_case_sd.mean())
            trials = float((group.threads / group.n.clip(lower=1)).mean())
            share = (within**2 / trials) / between**2 if between > 0 else math.inf
            advice = (
                "more cases narrow the CI; more trials would hardly"
                if share < 0.25
                else "more trials per case would narrow the CI too"
            )
            notes.append(
                f"`{metric}`: trial-to-trial SD {within:.3f} (≈{trials:.1f} trials per case), "
                f"case-to-case SD {between:.3f}: {advice}"
            )
        return notes

    def best(self, metric: str | None = None) -> str | None:
        metric = metric or self.primary_metric
        rows = self.summary[self.summary.metric == metric]
        if rows.empty:
            return None
        return str(rows.sort_values(["mean", "combo"], ascending=[False, True]).iloc[0]["combo"])

    def to_markdown(self, max_cases: int = 0) -> str:
        parts = [
            "### Combos × metrics (mean over cases ± 95 % CI; failed threads score 0)",
            "",
            markdown_table(self.wide().reset_index()),
        ]
        if notes := self.spread_notes():
            parts += ["", "Spread: " + "; ".join(notes) + "."]
        if not self.deltas.empty:
            correction = (
                f"{CORRECTION_NAMES[self.correction]}-adjusted p < {self.alpha}"
                if self.correction != "none"
                else f"p < {self.alpha}, not adjusted for multiple comparisons"
            )
            parts += [
                "",
                f"### Delta against `{self.baseline}` (paired by case; * = {correction})",
                "",
                markdown_table(self.delta_table().reset_index()),
                "",
                "### Paired tests (raw and adjusted p; McNemar exact for 0/1 metrics, "
                "Wilcoxon signed-rank otherwise; bootstrap CI)",
                "",
                markdown_table(self.test_table()),
                "",
                "### Verdicts",
                "",
                *[f"- {line}" for line in self.verdicts().values()],
            ]
            if notes := self.power_notes():
                parts += ["", "### Power", "", *[f"- {note}" for note in notes]]
        if not self.costs.empty:
            parts += [
                "",
                "### Tokens and cost (per case: mean over cases; every thread counts; "
                "unknown = a model without a price)",
                "",
                markdown_table(cost_table(self.costs, self.primary_metric)),
            ]
        if max_cases and not self.per_case.empty:
            parts += [
                "",
                f"### Combos × cases ({self.primary_metric}, first {max_cases} cases)",
                "",
                markdown_table(self.per_case.iloc[:, :max_cases].reset_index()),
            ]
        return "\n".join(parts)


def compare(
    results: pd.DataFrame,
    baseline: str = BASELINE,
    primary_metric: str | None = None,
    include_forks: bool = True,
    correction: str = "holm",
    alpha: float = ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    """Build the comparison of threads held in memory (a `ResultsStore.results_frame`).

    A workflow's stored threads are compared without loading them by
    `comparison_queries.compare_stored`, which gives the same numbers. Forks in `results`
    become rows of their own (`include_forks=False` leaves them out); they are never pooled into
    their original combo. For the other arguments see `comparison_from`.
    """
    check_correction(correction)
    return comparison_from(
        aggregate(results, include_forks), baseline, primary_metric, correction, alpha,
        n_resamples, seed,
    )  # fmt: skip


def comparison_from(
    aggregates: Aggregates,
    baseline: str = BASELINE,
    primary_metric: str | None = None,
    correction: str = "holm",
    alpha: float = ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    """The comparison of a workflow's `Aggregates`: summary, per-case table, deltas and costs.

    `correction` ("holm", "fdr_bh" or "none") adjusts the p values of every (combo, metric)
    delta together; `significant` and the verdict use the adjusted p at `alpha`.
    `n_resamples` and `seed` drive the bootstrap intervals.
    """
    check_correction(correction)
    if aggregates.counts.empty:
        empty = pd.DataFrame(columns=SUMMARY_COLUMNS)
        return Comparison(
            empty, pd.DataFrame(), pd.DataFrame(columns=DELTA_COLUMNS), [], None, baseline,
            correction, alpha, alpha,
        )  # fmt: skip
    metrics = aggregates.metrics
    primary = primary_metric if primary_metric in metrics else (metrics[0] if metrics else None)
    per_case_stats = aggregates.case_stats
    failures = aggregates.counts.failures.astype(int)
    interrupted = aggregates.counts.interrupted.astype(int)
    summary = _summary(per_case_stats, aggregates.latency.p50, aggregates.latency.p95)
    summary["failures"] = summary.combo.map(failures).astype(int)
    summary["interrupted"] = summary.combo.map(interrupted).astype(int)
    unscored = sorted(set(aggregates.counts.index) - set(summary.combo))
    if unscored:  # nothing scored (e.g. every thread interrupted): still report the counts
        empty = pd.DataFrame(
            {"combo": unscored, "metric": None, "n": 0, "threads": 0,
             "failures": failures[unscored].to_numpy(),
             "interrupted": interrupted[unscored].to_numpy()}
        )  # fmt: skip
        summary = pd.concat([summary, empty], ignore_index=True) if len(summary) else empty
    summary = summary.reindex(columns=SUMMARY_COLUMNS)
    case_means = per_case_stats["mean"]
    per_case = pd.DataFrame()
    if primary is not None:
        per_case = case_means.xs(primary, level="metric").unstack("case_id").sort_index()
        per_case.columns.name = "case_id"
    deltas, level = _deltas(
        case_means, baseline, aggregates.parents, metrics, correction, alpha, n_resamples, seed
    )
    quality = summary[summary.metric == primary].set_index("combo")["mean"]
    costs = usage_costs(aggregates.case_usage, quality)
    return Comparison(
        summary, per_case, deltas, metrics, primary, baseline, correction, alpha, level, costs
    )


# -- what the statistics need, per row label ---------------------------------------------------


@dataclass
class Aggregates:
    """What a comparison's statistics read: per row label (combo or fork), never per thread.

    Built in memory from a results frame (`aggregate`) or in the results database
    (`comparison_queries.stored_aggregates`); either way its size grows with labels × cases.
    """

    metrics: list[str]  # the metrics some thread has a value of, sorted
    # index (combo, metric, case_id): mean, var (ddof 1, NaN with one value), count of values
    case_stats: pd.DataFrame
    latency: pd.DataFrame  # index (combo, metric): p50, p95 over the threads with that value
    counts: pd.DataFrame  # index combo: threads (all), failures, interrupted
    # per (combo, case_id): threads, tokens_in, tokens_out, cost_usd (means over trials, cost
    # NaN when one trial's is unknown), tokens_in_total, tokens_out_total, cost_total_usd
    case_usage: pd.DataFrame
    parents: dict[str, str] = field(default_factory=dict)  # fork label -> its parent's label

    @classmethod
    def empty(cls) -> Aggregates:
        case_index = pd.MultiIndex.from_arrays([[], [], []], names=["combo", "metric", "case_id"])
        stats = pd.DataFrame({"mean": [], "var": [], "count": []}, index=case_index)
        return cls(
            metrics=[],
            case_stats=stats.astype({"mean": float, "var": float, "count": "int64"}),
            latency=pd.DataFrame(
                columns=["p50", "p95"],
                index=pd.MultiIndex.from_arrays([[], []], names=["combo", "metric"]),
            ),
            counts=pd.DataFrame(
                columns=["threads", "failures", "interrupted"], index=pd.Index([], name="combo")
            ),
            case_usage=pd.DataFrame(columns=CASE_USAGE_COLUMNS),
        )

    def combined(self, other: Aggregates) -> Aggregates:
        """Both sets of labels in one (their labels must not overlap: main rows and forks)."""
        parts = [a for a in (self, other) if len(a.counts)]
        if len(parts) < 2:
            return parts[0] if parts else self
        return Aggregates(
            metrics=sorted(set(self.metrics) | set(other.metrics)),
            case_stats=pd.concat([self.case_stats, other.case_stats]).sort_index(),
            latency=pd.concat([self.latency, other.latency]).sort_index(),
            counts=pd.concat([self.counts, other.counts]).sort_index(),
            case_usage=pd.concat([self.case_usage, other.case_usage], ignore_index=True),
            parents={**self.parents, **other.parents},
        )


CASE_USAGE_COLUMNS = [
    "combo", "case_id", "threads", "tokens_in", "tokens_out", "cost_usd", "tokens_in_total",
    "tokens_out_total", "cost_total_usd",
]  # fmt: skip


def aggregate(
    results: pd.DataFrame, include_forks: bool = True, metrics: Sequence[str] | None = None
) -> Aggregates:
    """The `Aggregates` of a results frame (a `ResultsStore.results_frame`), in memory.

    Forks become labels of their own (`include_forks=False` leaves them out). `metrics`: the
    metric set failed threads score 0 on, when it is wider than this frame's (a part of the
    workflow's rows); by default the metrics of `results`.
    """
    if results.empty:
        return Aggregates.empty()
    frame, parents = _labelled(results, include_forks)
    return _aggregate_labelled(frame, parents, metrics)


def aggregate_forks(rows: pd.DataFrame, metrics: Sequence[str]) -> Aggregates:
    """The `Aggregates` of the forks among `rows`, labelled as `compare` labels them.

    `rows`: fork threads plus the main-lineage threads they fork from (whose labels start the
    forks' labels); those main threads are not aggregated. `metrics` as for `scored_threads`.
    """
    frame = rows.copy()
    frame["lineage"] = frame.lineage.fillna(MAIN_LINEAGE)
    forks = frame.lineage != MAIN_LINEAGE
    if not forks.any():
        return Aggregates.empty()
    labels, parents = fork_labels(frame)
    frame["combo"] = labels
    return _aggregate_labelled(frame[forks], parents, metrics)


def _aggregate_labelled(
    frame: pd.DataFrame, parents: dict[str, str], metrics: Sequence[str] | None
) -> Aggregates:
    """`aggregate` of a frame whose `combo` is already each thread's row label."""
    if frame.empty:
        return Aggregates.empty()
    by_combo = frame.groupby("combo", sort=True)
    counts = pd.DataFrame(
        {
            "threads": by_combo.size(),
            "failures": by_combo.status.apply(lambda s: int(s.isin([FAILED, TIMED_OUT]).sum())),
            "interrupted": by_combo.status.apply(lambda s: int((s == INTERRUPTED).sum())),
        }
    )
    scores = long_scores(frame, metrics)
    case_stats = scores.groupby(["combo", "metric", "case_id"], sort=True).value.agg(
        ["mean", "var", "count"]
    )
    latency = scores.groupby(["combo", "metric"]).latency_s
    quantiles = pd.DataFrame({"p50": latency.quantile(0.5), "p95": latency.quantile(0.95)})
    return Aggregates(
        metrics=sorted(scores.metric.unique()),
        case_stats=case_stats,
        latency=quantiles,
        counts=counts,
        case_usage=_case_usage(frame),
        parents=parents,
    )


def _case_usage(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (combo, case): the trials' mean tokens and cost (`costs.per_case_costs`) and sums."""
    if not {"tokens_in", "tokens_out", "cost_usd"} <= set(frame.columns):
        return pd.DataFrame(columns=CASE_USAGE_COLUMNS)
    cases = per_case_costs(frame)
    grouped = frame.assign(
        tokens_in=frame.tokens_in.fillna(0).astype(int),
        tokens_out=frame.tokens_out.fillna(0).astype(int),
        cost_usd=pd.to_numeric(frame.cost_usd, errors="coerce").astype(float),
    ).groupby(["combo", "case_id"], sort=True)
    totals = pd.DataFrame(
        {
            "threads": grouped.size(),
            "tokens_in_total": grouped.tokens_in.sum(),
            "tokens_out_total": grouped.tokens_out.sum(),
            # NaN as soon as one thread's cost is unknown (pandas would skip it)
            "cost_total_usd": grouped.cost_usd.apply(
                lambda s: float(s.sum()) if s.notna().all() else math.nan
            ),
        }
    ).reset_index()
    return cases.merge(totals, on=["combo", "case_id"])[CASE_USAGE_COLUMNS]


def usage_costs(case_usage: pd.DataFrame, quality: pd.Series) -> pd.DataFrame:
    """`costs.combo_costs` from per-(combo, case) usage: the same table, no thread rows needed.

    Every thread counts; a combo's means are over its cases, its totals over its threads, and
    an unknown cost anywhere makes its cost unknown (see `costs`).
    """
    tokens = case_usage.tokens_in_total + case_usage.tokens_out_total
    if case_usage.empty or not bool((tokens > 0).any()):  # no thread used a chat model
        return pd.DataFrame(columns=COST_COLUMNS)
    by_combo = case_usage.groupby("combo", sort=True)

    def known_mean(s: pd.Series) -> float:
        return s.mean() if s.notna().all() else math.nan

    def known_sum(s: pd.Series) -> float:
        return float(s.sum()) if s.notna().all() else math.nan

    table = pd.DataFrame(
        {
            "threads": by_combo.threads.sum().astype(int),
            "tokens_in_mean": by_combo.tokens_in.mean(),
            "tokens_out_mean": by_combo.tokens_out.mean(),
            "tokens_in_total": by_combo.tokens_in_total.sum().astype(int),
            "tokens_out_total": by_combo.tokens_out_total.sum().astype(int),
            "cost_mean_usd": by_combo.cost_usd.apply(known_mean),
            "cost_total_usd": by_combo.cost_total_usd.apply(known_sum),
        }
    )
    table["quality"] = quality.reindex(table.index).astype(float)
    # USD per point: what one unit of the primary metric costs, per case, for this combo
    positive = table.quality.where(table.quality > 0)
    table["usd_per_point"] = table.cost_mean_usd / positive
    table["pareto"] = pareto_front(table.cost_mean_usd, table.quality)
    return table.reset_index().rename(columns={"index": "combo"})[COST_COLUMNS]


def _summary(per_case_stats: pd.DataFrame, p50: pd.Series, p95: pd.Series) -> pd.DataFrame:
    """Per (combo, metric): mean of per-case means, its t interval, n, spreads, latency.

    Within-case SD is pooled over the cases with two or more trials,
    sqrt(Σ(kᵢ−1)·sᵢ² / Σ(kᵢ−1)) (NaN with one trial per case); between-case SD is the SD of
    the per-case means.
    """
    groups = per_case_stats.groupby(level=["combo", "metric"], sort=True)
    n = groups["mean"].count()
    between = groups["mean"].std(ddof=1)
    dof = (per_case_stats["count"] - 1).clip(lower=0)
    spread = (dof * per_case_stats["var"].fillna(0.0)).groupby(level=["combo", "metric"]).sum()
    dof_sum = dof.groupby(level=["combo", "metric"]).sum()
    mean = groups["mean"].mean()
    low, high = t_intervals(mean.to_numpy(), between.to_numpy(), n.to_numpy())
    summary = pd.DataFrame(
        {
            "mean": mean,
            "ci_low": low,
            "ci_high": high,
            "n": n,
            "threads": groups["count"].sum(),
            "within_case_sd": np.sqrt(spread / dof_sum.where(dof_sum > 0)),
            "between_case_sd": between,
            "p50_latency_s": p50,
            "p95_latency_s": p95,
        }
    )
    return summary.reset_index()


def _labelled(results: pd.DataFrame, include_forks: bool) -> tuple[pd.DataFrame, dict[str, str]]:
    """`results` with `combo` set to each thread's row label; forks' parent labels."""
    frame = results.copy()
    if "lineage" not in frame:
        frame["lineage"] = MAIN_LINEAGE
    frame["lineage"] = frame.lineage.fillna(MAIN_LINEAGE)
    forks = frame.lineage != MAIN_LINEAGE
    if not include_forks:
        return frame[~forks], {}
    if not forks.any():
        return frame, {}
    labels, parents = fork_labels(frame)
    frame["combo"] = labels
    return frame, parents


def _deltas(
    case_means: pd.Series,
    baseline: str,
    parents: dict[str, str],
    metrics: list[str],
    correction: str,
    alpha: float,
    n_resamples: int,
    seed: int,
) -> tuple[pd.DataFrame, float]:
    """Paired comparisons of every combo (vs the baseline) and fork (vs its parent), adjusted."""
    rows = []
    for metric in metrics:
        table = case_means.xs(metric, level="metric").unstack("combo")
        for combo in table.columns:
            if combo == baseline:
                continue
            reference = parents.get(combo, baseline)
            if reference not in table.columns:
                reference = baseline  # a fork whose parent has no results here
            if reference not in table.columns:
                continue  # no reference has this metric (e.g. its scorer always raised)
            shared = table[[reference, combo]].dropna()
            if shared.empty:
                continue
            result = paired_comparison(
                shared[reference].to_numpy(), shared[combo].to_numpy(),
                n_resamples=n_resamples, seed=seed,
            )  # fmt: skip
            rows.append({"combo": combo, "reference": reference, "metric": metric, **vars(result)})
    if not rows:
        return pd.DataFrame(columns=DELTA_COLUMNS), alpha
    deltas = pd.DataFrame(rows)
    deltas["p_adjusted"] = adjust_p_values(deltas.p_value.to_numpy(), correction)
    deltas["significant"] = (deltas.p_adjusted < alpha) & (deltas.delta != 0)
    level = detection_alpha(correction, alpha, int(deltas.p_value.notna().sum()))
    deltas["mde"] = [
        minimum_detectable_effect(sd, n, level, POWER)
        for sd, n in zip(deltas.sd_diff, deltas.n_pairs, strict=True)
    ]
    deltas["verdict"] = [
        NOT_TESTED if math.isnan(p) else (BETTER if d > 0 else WORSE) if sig else NO_DIFFERENCE
        for p, d, sig in zip(deltas.p_value, deltas.delta, deltas.significant, strict=True)
    ]
    return deltas[DELTA_COLUMNS], level


# -- formatting ----------------------------------------------------------------------------------


def _mean_ci(row: pd.Series) -> str:
    if pd.isna(row["mean"]):
        return "–"
    if pd.isna(row["ci_low"]):
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} ± {(row['ci_high'] - row['ci_low']) / 2:.3f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _interval(low: float, high: float) -> str:
    return "–" if math.isnan(low) else f"{low:+.3f}…{high:+.3f}"


def _mde(mde: float) -> str:
    return "–" if math.isnan(mde) else ("∞" if math.isinf(mde) else f"{mde:.3f}")


def _effect(value: float, kind: str) -> str:
    name = "d_z" if kind == COHEN_DZ else "OR"
    if math.isnan(value):
        return f"{name} –"
    return f"{name} ∞" if math.isinf(value) else f"{name} {value:.2f}"


def _span(low: float, high: float, fmt: str) -> str:
    a, b = fmt.format(low), fmt.format(high)
    return a if a == b else f"{a}–{b}"


def _verdict_part(row: Any) -> str:
    metric = row.metric
    if row.verdict == NOT_TESTED:
        return f"not tested on {metric} ({row.n_pairs} shared case)"
    if row.verdict in (BETTER, WORSE):
        return (
            f"{row.verdict} on {metric} ({row.delta:+.3f}, 95 % CI "
            f"{_interval(row.ci_low, row.ci_high)}, p_adj {_p(row.p_adjusted)})"
        )
    if math.isinf(row.mde):
        why = f"Δ {row.delta:+.3f}; {row.n_pairs} cases cannot show any difference"
    elif math.isnan(row.mde):
        why = f"Δ {row.delta:+.3f}; the paired cases have no spread"
    elif abs(row.delta) < row.mde:
        why = f"|Δ| {abs(row.delta):.3f} < MDE {row.mde:.3f}"
    else:
        why = f"Δ {row.delta:+.3f}, p_adj {_p(row.p_adjusted)}, MDE {row.mde:.3f}: inconclusive"
    return f"{NO_DIFFERENCE} on {metric} ({why})"


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
