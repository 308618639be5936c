"""`comparison_matrix`: all batch runs of a workflow side by side, with the regression gate."""

import base64
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # headless: runs inside Dagster workers

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from assets.errors import user_errors
from assets.metadata import cell, frame_table
from assets.partitions import workflows_partitions
from resources import QualityGates, ResultsStoreResource, WorkflowRegistryResource
from wtb_dagster import settings
from wtb_dagster.comparison import CORRECTION_NAMES, FORK_MARK, Comparison
from wtb_dagster.comparison_queries import compare_stored, thread_counts


class ComparisonConfig(Config):
    include_forks: bool = Field(
        default=False,
        description="Show forked threads (reruns) as rows of their own, each compared with its "
        "parent over the parent's cases (never pooled into the original combo).",
    )
    correction: Literal["holm", "fdr_bh", "none"] = Field(
        default="holm",
        description="Multiple-comparison correction over every (combo, metric) delta of the "
        "workflow: Holm (family-wise error), Benjamini–Hochberg (false-discovery rate) or none. "
        "Significance, verdicts and the regression check use the adjusted p values.",
    )


@asset(
    partitions_def=workflows_partitions,
    group_name="bench",
    deps=[
        AssetDep(
            "batch_runs",
            partition_mapping=MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="workflow"
            ),
        )
    ],
    check_specs=[
        AssetCheckSpec(
            "no_regression_vs_baseline",
            asset="comparison_matrix",
            partitions_def=workflows_partitions,
            description="Fails when a combo is significantly worse than the baseline on the "
            "gated metric (paired test, p adjusted over all combos × metrics) by more than "
            "QualityGates.regression_tolerance; its `regressed` table lists each failing combo "
            "with delta, 95 % CI and p values.",
        )
    ],
)
def comparison_matrix(
    context: AssetExecutionContext,
    config: ComparisonConfig,
    registry: WorkflowRegistryResource,
    results: ResultsStoreResource,
    quality: QualityGates,
) -> MaterializeResult:
    """Every combo of the workflow side by side, each compared with the baseline.

    **summary** — one row per combo, best first on the primary metric: the mean of each metric
    over cases (a case's score is the mean over its trials; failed and timed-out threads score
    0) with the half-width of its 95 % interval, cases, failures, latency, and the verdict
    against the baseline.
    **deltas** — one row per (combo, metric): the paired difference to the baseline over the
    cases both ran, its bootstrap CI, the test (McNemar for 0/1 metrics, Wilcoxon otherwise),
    raw and adjusted p, effect size, the minimum detectable effect and the verdict.
    **per_case** — the primary metric per case (rows) and combo (columns): where combos differ.
    **plot** — combos × metrics heatmap ("Show Markdown"; also `plot_file`). When nodes called
    chat models: **costs** (tokens, cost per case and in total, USD per point of the primary
    metric, the Pareto front) and **cost_plot**, quality against cost (also `cost_plot_file`). **matrix** — the
    whole report as `wtb compare` prints it, with the notes on power and spread.
    """
    with user_errors():
        workflow = registry.get(context.partition_key)
        matrix = [c.key for c in workflow.matrix()]
    # aggregated in the results database: memory grows with combos × cases, not with threads
    comparison = compare_stored(
        results.store,
        workflow.name,
        combos=matrix,
        include_forks=config.include_forks,
        primary_metric=quality.metric,
        correction=config.correction,
    )
    counts = thread_counts(results.store, workflow.name)
    main = counts[~counts.forked & counts.combo.isin(matrix)]
    plot_path = _plot(comparison, workflow.name)
    missing = sorted(set(matrix) - set(main.combo))
    metadata = {
        "summary": summary_table(comparison),
        "deltas": deltas_table(comparison),
        "power": MetadataValue.md("\n".join(f"- {n}" for n in comparison.power_notes()) or "–"),
        "best_combo": comparison.best() or "",
        "primary_metric": comparison.primary_metric or "",
        "combos": int(main.combo.nunique()),
        "threads": int(main.threads.sum()),
        "interrupted": int(main.interrupted.sum()),
        "forks": int(counts[counts.forked].threads.sum()),
        "correction": comparison.correction,
        "combos_without_results": MetadataValue.json(missing),
        "per_case": per_case_table(comparison),
        "plot": MetadataValue.md(_inline_png(plot_path)),
        "plot_file": MetadataValue.path(str(plot_path)),
        "matrix": MetadataValue.md(comparison.to_markdown()),
    }
    envs = {c.key: env.describe() for c in workflow.matrix() if (env := workflow.combo_env(c))}
    if envs:  # the combos that ran in a Python environment of their own (Ray runtime_env)
        metadata["environments"] = MetadataValue.json(envs)
    if not comparison.costs.empty:  # some node called a chat model: quality against cost
        cost_plot = _cost_plot(comparison, workflow.name)
        metadata["costs"] = frame_table(comparison.costs, COST_DESCRIPTIONS)
        metadata["cost_plot"] = MetadataValue.md(_inline_png(cost_plot))
        metadata["cost_plot_file"] = MetadataValue.path(str(cost_plot))
    return MaterializeResult(
        metadata=metadata, check_results=[regression_check(comparison, quality)]
    )


COST_DESCRIPTIONS = {
    "threads": "threads of the combo, whatever their status (every one was paid for)",
    "tokens_in_mean": "chat-model input tokens per case (mean over cases of the trials' mean)",
    "tokens_out_mean": "chat-model output tokens per case",
    "tokens_in_total": "input tokens of all its threads",
    "tokens_out_total": "output tokens of all its threads",
    "cost_mean_usd": "USD per case; empty: unknown (a model without a price in wtb.yaml)",
    "cost_total_usd": "USD of all its threads; empty: unknown",
    "quality": "mean of the primary metric",
    "usd_per_point": "USD per case for one point of the primary metric (cost ÷ quality)",
    "pareto": "on the Pareto front: no other combo is as good for less",
}


def _cost_plot(comparison: Comparison, workflow: str) -> Path:
    """Quality (primary metric) against cost per case, the Pareto front joined; PNG."""
    path = settings.data_dir() / "plots" / f"{workflow}_cost_quality.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    costs = comparison.costs.dropna(subset=["cost_mean_usd", "quality"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(costs.cost_mean_usd, costs.quality, color="tab:blue")
    front = costs[costs.pareto].sort_values("cost_mean_usd")
    ax.plot(front.cost_mean_usd, front.quality, color="tab:orange", label="Pareto front")
    for row in costs.itertuples():
        label = str(row.combo).replace(FORK_MARK, "fork")
        ax.annotate(label, (row.cost_mean_usd, row.quality), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")  # fmt: skip
    unknown = comparison.costs[comparison.costs.cost_mean_usd.isna()]
    if len(unknown):
        ax.set_title(f"{workflow}: {len(unknown)} combo(s) of unknown cost not shown", fontsize=9)
    else:
        ax.set_title(f"{workflow}: quality against cost per case")
    ax.set_xlabel("USD per case (mean)")
    ax.set_ylabel(comparison.primary_metric or "quality")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


COUNT_COLUMNS = [
    TableColumn("n", "int", description="cases scored (a case's score is the mean over "
                "its trials)"),
    TableColumn("failures", "int", description="failed or timed-out threads; each scores "
                "0 on every metric"),
    TableColumn("interrupted", "int", description="threads waiting at an interrupt(); "
                "not scored"),
    TableColumn("threads", "int", description="threads scored: cases × trials, "
                "interrupted ones left out"),
    TableColumn("p50_latency_s", "float", description="median wall time of a thread, s"),
    TableColumn("p95_latency_s", "float", description="95th percentile wall time of a "
                "thread, s"),
]  # fmt: skip


def summary_columns(metrics: list[str], primary: str | None) -> list[TableColumn]:
    """The columns of the `summary` table: the combo and its verdict, a mean and a CI per
    metric, then counts and latency."""
    columns = [
        TableColumn("combo", "string", description="one variant per varied node; `baseline` "
                    "runs every node's default"),
        TableColumn("vs_baseline", "string", description=f"verdict on {primary} against the "
                    "baseline: better / worse (adjusted p < α) / no detectable difference"),
    ]  # fmt: skip
    for metric in metrics:
        columns += [
            TableColumn(metric, "float", description=f"mean {metric} over cases (0…1 for the "
                        "built-in scorers; failed threads count 0)"),
            TableColumn(f"{metric}_ci95", "float", description=f"half-width of the 95 % t "
                        f"interval of the mean: {metric} ± this (empty with one case)"),
        ]  # fmt: skip
    return [*columns, *COUNT_COLUMNS]


def summary_table(comparison: Comparison) -> MetadataValue:
    """One row per combo, best first on the primary metric (the order of `Comparison.wide`)."""
    summary = comparison.summary
    primary = comparison.primary_metric
    verdicts = {}
    if not comparison.deltas.empty:
        on_primary = comparison.deltas[comparison.deltas.metric == primary]
        verdicts = dict(zip(on_primary.combo, on_primary.verdict, strict=True))
    columns = summary_columns(comparison.metrics, primary)
    records = []
    for combo in comparison.wide().index:
        rows = summary[summary.combo == combo].set_index("metric", drop=False)
        first = rows.loc[primary] if primary in rows.index else rows.iloc[0]
        record: dict[str, object] = {
            "combo": str(combo),
            "vs_baseline": "baseline" if combo == comparison.baseline else verdicts.get(combo, ""),
        }
        for metric in comparison.metrics:
            row = rows.loc[metric] if metric in rows.index else None
            record[metric] = cell(row["mean"]) if row is not None else None
            record[f"{metric}_ci95"] = (
                cell((row["ci_high"] - row["ci_low"]) / 2) if row is not None else None
            )
        for column in columns[len(record) :]:  # counts and latency: the primary metric's
            record[column.name] = cell(first[column.name])
        records.append(TableRecord(record))
    return MetadataValue.table(records=records, schema=TableSchema(columns))


DELTA_TABLE_COLUMNS = [
    TableColumn("combo", "string", description="the combo (or fork) compared"),
    TableColumn("reference", "string", description="what it is compared with: the baseline, "
                "or a fork's parent"),
    TableColumn("metric", "string"),
    TableColumn("n_pairs", "int", description="cases run by both (the pairs of the test)"),
    TableColumn("delta", "float", description="mean per-case difference, combo − reference "
                "(> 0: the combo scores higher)"),
    TableColumn("ci_low", "float", description="95 % BCa bootstrap CI of delta, low end"),
    TableColumn("ci_high", "float", description="95 % BCa bootstrap CI of delta, high end"),
    TableColumn("test", "string", description="McNemar exact (0/1 metrics) or Wilcoxon "
                "signed-rank (others), two-sided"),
    TableColumn("p_value", "float", description="raw p of the test (empty: not testable)"),
    TableColumn("p_adjusted", "float", description="p adjusted over every combo × metric "
                "(Holm by default; see `correction`)"),
    TableColumn("significant", "bool", description="p_adjusted < α (0.05) and delta ≠ 0"),
    TableColumn("effect_size", "float", description="Cohen's d_z, or for 0/1 metrics the "
                "discordant-pair odds ratio (empty: infinite or undefined)"),
    TableColumn("effect_size_kind", "string", description="which effect size"),
    TableColumn("mde", "float", description="minimum detectable effect: the |delta| found "
                "with 80 % power at this n and spread (empty: no difference can be "
                "significant with these cases, or the differences have no spread)"),
    TableColumn("verdict", "string", description="better / worse (significant) / no "
                "detectable difference / not tested"),
]  # fmt: skip


def deltas_table(comparison: Comparison) -> MetadataValue:
    """One row per (combo, metric) compared, in the summary's order (best first)."""
    deltas = comparison.deltas
    order = {combo: i for i, combo in enumerate(comparison.wide().index)}
    rows = deltas.assign(_order=deltas.combo.map(order)).sort_values(
        ["_order", "metric"], kind="stable"
    )
    names = [column.name for column in DELTA_TABLE_COLUMNS]
    records = [
        TableRecord({name: cell(getattr(row, name)) for name in names}) for row in rows.itertuples()
    ]
    return MetadataValue.table(records=records, schema=TableSchema(DELTA_TABLE_COLUMNS))


def per_case_table(comparison: Comparison) -> MetadataValue:
    """The primary metric per case (rows) and combo (columns, best first)."""
    per_case = comparison.per_case
    combos = [c for c in comparison.wide().index if c in per_case.index]
    columns = [TableColumn("case_id", "string")] + [
        TableColumn(str(combo), "float", description=f"{comparison.primary_metric} of the "
                    "case under this combo (mean over its trials)")
        for combo in combos
    ]  # fmt: skip
    records = [
        TableRecord({"case_id": str(case), **{str(c): cell(per_case.at[c, case]) for c in combos}})
        for case in per_case.columns
    ]
    return MetadataValue.table(records=records, schema=TableSchema(columns))


REGRESSION_COLUMNS = [
    TableColumn("combo", "string", description="a combo worse than the baseline"),
    TableColumn("n_pairs", "int", description="cases run by both the combo and the baseline"),
    TableColumn("delta", "float", description="mean per-case difference, combo − baseline"),
    TableColumn("ci_low", "float", description="95 % bootstrap CI of delta, low end"),
    TableColumn("ci_high", "float", description="95 % bootstrap CI of delta, high end"),
    TableColumn("test", "string", description="the paired test (McNemar or Wilcoxon)"),
    TableColumn("p_value", "float", description="raw two-sided p"),
    TableColumn("p_adjusted", "float", description="p adjusted over all combos × metrics"),
]


def regression_check(comparison: Comparison, quality: QualityGates) -> AssetCheckResult:
    """Fails naming every combo significantly worse than the baseline by more than the tolerance.

    "Significantly worse" is the comparison's adjusted paired test (`p_adjusted < alpha`,
    corrected over every combo × metric of the workflow) with a delta below −tolerance: a drop
    smaller than the tolerance is accepted even when it is real, and a large drop that the
    cases cannot tell from noise is reported (with the MDE) but does not fail the check.
    Forks are experiments, not combos of the matrix: they are not checked.
    """
    metric = quality.metric or comparison.primary_metric
    summary = comparison.summary[comparison.summary.metric == metric].set_index("combo")
    if comparison.baseline not in summary.index:
        return AssetCheckResult(
            check_name="no_regression_vs_baseline",
            passed=False,
            description=f"no results for the baseline combo on metric {metric!r}; run it first",
        )
    deltas = comparison.deltas
    checked = deltas[
        (deltas.metric == metric)
        & (deltas.reference == comparison.baseline)
        & ~deltas.combo.str.contains(FORK_MARK, regex=False)
    ]
    failing = checked[
        checked.significant.astype(bool)
        & (checked.delta.astype(float) < -quality.regression_tolerance)
    ]
    records = [
        {
            "combo": str(row.combo),
            "n_pairs": int(row.n_pairs),
            "delta": round(float(row.delta), 4),
            "ci_low": _rounded(row.ci_low),
            "ci_high": _rounded(row.ci_high),
            "test": str(row.test),
            "p_value": _rounded(row.p_value, 6),
            "p_adjusted": _rounded(row.p_adjusted, 6),
        }
        for row in failing.itertuples()
    ]
    untested = sorted(checked[checked.verdict == "not tested"].combo)
    mde = checked.mde.astype(float)
    mde = mde[np.isfinite(mde)]
    metadata = {
        "regressed_table": MetadataValue.table(
            records=[TableRecord(r) for r in records], schema=TableSchema(REGRESSION_COLUMNS)
        ),
        "metric": metric or "",
        "baseline_mean": round(float(summary.loc[comparison.baseline, "mean"]), 4),
        "tolerance": quality.regression_tolerance,
        "correction": comparison.correction,
        "alpha": comparison.alpha,
        "combos_checked": len(checked),
        "regressed": MetadataValue.json({r["combo"]: r for r in records}),
        "not_tested": MetadataValue.json(untested),
        "largest_mde": round(float(mde.max()), 4) if len(mde) else None,
    }
    if records:
        description = (
            f"{len(records)} combo(s) significantly worse than {comparison.baseline} on "
            f"{metric} by more than {quality.regression_tolerance} "
            f"({CORRECTION_NAMES[comparison.correction]}-adjusted): "
            + "; ".join(
                f"{r['combo']} Δ {r['delta']:+.3f} (95 % CI {_signed(r['ci_low'])}…"
                f"{_signed(r['ci_high'])}, p_adj {r['p_adjusted']:.3g})"
                for r in records
            )
        )
    else:
        description = (
            f"no combo significantly worse than {comparison.baseline} on {metric} by more than "
            f"{quality.regression_tolerance}"
            + (
                f"; drops below {metadata['largest_mde']} cannot be told apart with these cases"
                if metadata["largest_mde"] is not None
                else ""
            )
        )
    return AssetCheckResult(
        check_name="no_regression_vs_baseline",
        passed=not records,
        metadata={k: v for k, v in metadata.items() if v is not None},
        description=description,
    )


def _rounded(value: float, digits: int = 4) -> float | None:
    return None if pd.isna(value) else round(float(value), digits)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _plot(comparison: Comparison, workflow: str) -> Path:
    """A heatmap of combos × metrics (means), saved as PNG under the data dir."""
    path = settings.data_dir() / "plots" / f"{workflow}_comparison.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = comparison.summary.pivot_table(index="combo", columns="metric", values="mean")
    order = [c for c in comparison.wide().index if c in table.index]
    table = table.loc[order] if order else table
    height = 1.2 + 0.35 * max(len(table), 1)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * max(len(table.columns), 1), height))
    image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=20, ha="right")
    # DejaVu Sans (matplotlib's font) has no ⑂: forks are labelled "fork" in the plot
    labels = [str(combo).replace(FORK_MARK, "fork") for combo in table.index]
    ax.set_yticks(range(len(table.index)), labels, fontsize=8)
    for y, row in enumerate(table.to_numpy(dtype=float)):
        for x, value in enumerate(row):
            color = "white" if value < 0.6 else "black"
            ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title(f"{workflow}: mean score per combo (best first)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _inline_png(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"![comparison](data:image/png;base64,{encoded})"
