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
from assets.partitions import workflows_partitions
from resources import QualityGates, ResultsStoreResource, WorkflowRegistryResource
from wtb_dagster import settings
from wtb_dagster.comparison import (
    CORRECTION_NAMES,
    FORK_MARK,
    Comparison,
    compare,
    markdown_table,
)
from wtb_dagster.threads import INTERRUPTED, MAIN_LINEAGE


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
            description="No combo is significantly worse than the baseline (paired test, "
            "p adjusted over all combos × metrics) by more than the tolerance.",
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
    """Combos × metrics (mean, 95 % CI, n, failures, latency), deltas to the baseline, a plot."""
    with user_errors():
        workflow = registry.get(context.partition_key)
        matrix = [c.key for c in workflow.matrix()]
    frame = results.store.results_frame(workflow.name, lineage=None)
    main = frame[(frame.lineage == MAIN_LINEAGE) & frame.combo.isin(matrix)]
    forks = frame[frame.lineage != MAIN_LINEAGE]
    shown = pd.concat([main, forks]) if config.include_forks else main
    comparison = compare(
        shown,
        primary_metric=quality.metric,
        include_forks=config.include_forks,
        correction=config.correction,
    )
    plot_path = _plot(comparison, workflow.name)
    missing = sorted(set(matrix) - set(main.combo))
    metadata = {
        "combos": int(main.combo.nunique()),
        "threads": len(main),
        "interrupted": int((main.status == INTERRUPTED).sum()),
        "forks": len(forks),
        "correction": comparison.correction,
        "combos_without_results": MetadataValue.json(missing),
        "primary_metric": comparison.primary_metric or "",
        "best_combo": comparison.best() or "",
        "verdicts": MetadataValue.md("\n".join(f"- {v}" for v in comparison.verdicts().values())),
        "matrix": MetadataValue.md(comparison.to_markdown()),
        "per_case": MetadataValue.md(
            markdown_table(comparison.per_case.reset_index())
            if not comparison.per_case.empty
            else ""
        ),
        "plot_file": MetadataValue.path(str(plot_path)),
        "plot": MetadataValue.md(_inline_png(plot_path)),
    }
    return MaterializeResult(
        metadata=metadata, check_results=[regression_check(comparison, quality)]
    )


REGRESSION_COLUMNS = [
    TableColumn("combo", "string"),
    TableColumn("n_pairs", "int", description="cases run by both the combo and the baseline"),
    TableColumn("delta", "float", description="mean per-case difference, combo − baseline"),
    TableColumn("ci_low", "float", description="95 % bootstrap CI of delta, low end"),
    TableColumn("ci_high", "float", description="95 % bootstrap CI of delta, high end"),
    TableColumn("test", "string"),
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
        "metric": metric or "",
        "baseline_mean": round(float(summary.loc[comparison.baseline, "mean"]), 4),
        "tolerance": quality.regression_tolerance,
        "correction": comparison.correction,
        "alpha": comparison.alpha,
        "combos_checked": len(checked),
        "regressed": MetadataValue.json({r["combo"]: r for r in records}),
        "regressed_table": MetadataValue.table(
            records=[TableRecord(r) for r in records], schema=TableSchema(REGRESSION_COLUMNS)
        ),
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
        metadata["regressed_md"] = MetadataValue.md(markdown_table(pd.DataFrame(records)))
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
    ax.set_yticks(range(len(table.index)), table.index, fontsize=8)
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
