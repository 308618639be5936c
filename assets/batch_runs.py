"""`batch_runs`: every test case of one combo run as checkpointed threads (workflow × combo)."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    asset,
)
from pydantic import Field

from assets.errors import user_errors
from assets.partitions import batch_partitions
from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    ResultsStoreResource,
    WorkflowRegistryResource,
)
from wtb_dagster.batches import run_batch
from wtb_dagster.comparison import compare, markdown_table
from wtb_dagster.progress import ProgressReporter
from wtb_dagster.threads import FAILED, TIMED_OUT

_BY_WORKFLOW = MultiToSingleDimensionPartitionMapping(partition_dimension_name="workflow")


class BatchRunConfig(Config):
    """Launchpad settings of a batch run."""

    force: bool = Field(default=False, description="Run stored threads again from scratch.")
    retry_failed: bool = Field(
        default=False, description="Resume failed and timed-out threads from their last checkpoint."
    )
    timeout_s: float | None = Field(default=None, description="Per-case timeout in seconds.")
    cases: list[str] | None = Field(default=None, description="Only these case ids.")


@asset(
    partitions_def=batch_partitions,
    group_name="bench",
    deps=[
        AssetDep("test_cases", partition_mapping=_BY_WORKFLOW),
        AssetDep("variant_matrix", partition_mapping=_BY_WORKFLOW),
    ],
    check_specs=[
        AssetCheckSpec(
            "every_case_ran",
            asset="batch_runs",
            partitions_def=batch_partitions,
            description="Every case of the dataset has a stored thread under the combo's current code.",
        ),
        AssetCheckSpec(
            "failure_rate_under_threshold",
            asset="batch_runs",
            partitions_def=batch_partitions,
            description="Failed + timed-out threads ≤ QualityGates.max_failure_rate.",
        ),
    ],
    # One run per (workflow, combo): batches are long, fail independently and parallelise on
    # Ray inside the run; a backfill over combos becomes that many independent runs.
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def batch_runs(
    context: AssetExecutionContext,
    config: BatchRunConfig,
    registry: WorkflowRegistryResource,
    checkpointer: CheckpointerResource,
    results: ResultsStoreResource,
    executor: ExecutorResource,
    quality: QualityGates,
) -> MaterializeResult:
    """Results of running every case under one combo: one stored row per thread."""
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    workflow_name, combo = keys["workflow"], keys["combo"]
    with user_errors():
        workflow = registry.get(workflow_name)
        matrix = [c.key for c in workflow.matrix()]
        if combo not in matrix:
            raise Failure(
                description=f"combo {combo!r} is not in the variant matrix of workflow "
                f"{workflow_name!r} (it may be stale, or belong to another workflow); "
                f"its combos: {', '.join(matrix)}",
                allow_retries=False,
            )
        cases = workflow.cases() if config.cases is None else None
        total_cases = len(config.cases) if config.cases is not None else len(cases or [])
        context.log.info(f"{workflow_name} [{combo}]: {total_cases} cases")
        summary = run_batch(
            workflow,
            results.store,
            checkpointer.checked_url(),
            combos=[combo],
            case_ids=config.cases,
            executor=executor.build(),
            force=config.force,
            retry_failed=config.retry_failed,
            timeout_s=config.timeout_s,
            progress=ProgressReporter(context.log.info, interval_s=5.0),
            run_id=context.run.run_id,
        )
    frame = results.store.results_frame(workflow_name, combos=[combo])
    version = workflow.combo_code_version(combo)
    current = frame[frame.code_version == version]
    n = len(current)
    broken = int(current.status.isin([FAILED, TIMED_OUT]).sum())
    failure_rate = broken / n if n else 0.0
    comparison = compare(current)
    means = {row.metric: float(row.mean) for row in comparison.summary.itertuples() if row.metric}
    metadata = {
        "threads": n,
        "executed_now": summary.executed,
        "skipped_already_stored": summary.skipped,
        "statuses": MetadataValue.json(current.status.value_counts().to_dict()),
        "failures": broken,
        "wall_s": round(summary.wall_s, 2),
        "threads_per_s": round(summary.throughput, 2),
        "p50_latency_s": round(float(current.latency_s.median()), 4) if n else 0.0,
        "p95_latency_s": round(float(current.latency_s.quantile(0.95)), 4) if n else 0.0,
        **{f"mean_{metric}": round(value, 4) for metric, value in means.items()},
    }
    if comparison.primary_metric and n:
        metadata["bottom_cases"] = MetadataValue.md(
            _extreme_cases(current, comparison.primary_metric, worst=True)
        )
        metadata["top_cases"] = MetadataValue.md(
            _extreme_cases(current, comparison.primary_metric, worst=False)
        )
    expected = total_cases
    return MaterializeResult(
        metadata=metadata,
        check_results=[
            AssetCheckResult(
                check_name="every_case_ran",
                passed=n >= expected,
                metadata={"stored_threads": n, "cases": expected},
                description=None if n >= expected else f"{expected - n} cases have no thread",
            ),
            AssetCheckResult(
                check_name="failure_rate_under_threshold",
                passed=failure_rate <= quality.max_failure_rate,
                severity=AssetCheckSeverity.ERROR,
                metadata={"failure_rate": failure_rate, "threshold": quality.max_failure_rate},
            ),
        ],
    )


def _extreme_cases(frame: pd.DataFrame, metric: str, worst: bool, count: int = 5) -> str:
    rows = []
    for record in frame.itertuples():
        scores = record.scores if isinstance(record.scores, dict) else {}
        final = record.final_values if isinstance(record.final_values, dict) else {}
        rows.append(
            {
                "case": record.case_id,
                "status": record.status,
                metric: scores.get(metric, 0.0) if record.status == "succeeded" else 0.0,
                "answer": str(final.get("answer", record.error or ""))[:70],
            }
        )
    table = pd.DataFrame(rows).sort_values([metric, "case"], ascending=[worst, True]).head(count)
    return markdown_table(table)
