"""`comparison_matrix`: all batch runs of a workflow side by side, with the regression gate."""

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs inside Dagster workers

import matplotlib.pyplot as plt
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
    asset,
)
from pydantic import Field

from assets.errors import user_errors
from assets.partitions import workflows_partitions
from resources import QualityGates, ResultsStoreResource, WorkflowRegistryResource
from wtb_dagster import settings
from wtb_dagster.comparison import Comparison, compare, markdown_table
from wtb_dagster.threads import MAIN_LINEAGE


class ComparisonConfig(Config):
    include_forks: bool = Field(
        default=False, description="Show forked threads (reruns) as rows beside their originals."
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
            description="No combo's mean falls below the baseline's by more than the tolerance.",
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
    shown = main
    if config.include_forks:
        forks = frame[frame.lineage != MAIN_LINEAGE].copy()
        forks["combo"] = forks.combo + " (fork " + forks.lineage.str[5:] + ")"
        shown = pd.concat([main, forks])
    comparison = compare(shown, primary_metric=quality.metric)
    plot_path = _plot(comparison, workflow.name)
    missing = sorted(set(matrix) - set(main.combo))
    metadata = {
        "combos": int(main.combo.nunique()),
        "threads": len(main),
        "forks": int((frame.lineage != MAIN_LINEAGE).sum()),
        "combos_without_results": MetadataValue.json(missing),
        "primary_metric": comparison.primary_metric or "",
        "best_combo": comparison.best() or "",
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


def regression_check(comparison: Comparison, quality: QualityGates) -> AssetCheckResult:
    """Fails naming every combo whose mean is below the baseline's by more than the tolerance."""
    metric = quality.metric or comparison.primary_metric
    summary = comparison.summary[comparison.summary.metric == metric].set_index("combo")
    if comparison.baseline not in summary.index:
        return AssetCheckResult(
            check_name="no_regression_vs_baseline",
            passed=False,
            description=f"no results for the baseline combo on metric {metric!r}; run it first",
        )
    floor = float(summary.loc[comparison.baseline, "mean"]) - quality.regression_tolerance
    regressed = {
        combo: round(float(mean), 4) for combo, mean in summary["mean"].items() if mean < floor
    }
    return AssetCheckResult(
        check_name="no_regression_vs_baseline",
        passed=not regressed,
        metadata={
            "metric": metric or "",
            "baseline_mean": round(floor + quality.regression_tolerance, 4),
            "tolerance": quality.regression_tolerance,
            "regressed": MetadataValue.json(regressed),
        },
        description=(
            f"{len(regressed)} combo(s) below baseline − {quality.regression_tolerance}: "
            + ", ".join(regressed)
            if regressed
            else None
        ),
    )


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
