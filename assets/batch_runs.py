"""`batch_runs`: every test case of one combo run as checkpointed threads (workflow × combo)."""

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
from assets.metadata import frame_table
from assets.partitions import batch_partitions
from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    ResultsStoreResource,
    WorkflowRegistryResource,
)
from wtb_dagster.batch_report import CaseCoverage, batch_report, case_coverage
from wtb_dagster.batches import run_batch
from wtb_dagster.costs import batch_usage
from wtb_dagster.progress import ProgressReporter

_BY_WORKFLOW = MultiToSingleDimensionPartitionMapping(partition_dimension_name="workflow")


class BatchRunConfig(Config):
    """Launchpad settings of a batch run."""

    force: bool = Field(default=False, description="Run stored threads again from scratch.")
    retry_failed: bool = Field(
        default=False, description="Resume failed and timed-out threads from their last checkpoint."
    )
    timeout_s: float | None = Field(default=None, description="Per-case timeout in seconds.")
    cases: list[str] | None = Field(default=None, description="Only these case ids.")
    trials: int | None = Field(
        default=None,
        description="Runs of every case, each its own thread (default: the workflow's trials).",
    )
    forced_since: float | None = Field(
        default=None,
        description="With force: threads finished after this Unix time (say, by the runs of "
        "the other combos of one `wtb bench --force`) may still lend their shared prefixes; "
        "default: the start of this run.",
    )


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
            description="Failed + timed-out threads ≤ QualityGates.max_failure_rate of the "
            "finished ones (interrupted threads are not counted).",
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
    """Every test case of one combo run as checkpointed threads; one row per thread in the
    results store (status, final values, scores, latency, checkpoint ids, error).

    Metadata: **threads** under the combo's current code (**executed_now** by this run,
    **skipped_already_stored**; **shared_prefix_threads** of those run started from another
    combo's checkpoint, **node_executions** they cost), **statuses**, **failures** (failed + timed out),
    **interrupted**, wall time and **threads_per_s**, thread latency quantiles (s) overall and
    per node, **mean_<metric>** over these threads, **tokens_in** / **tokens_out** and
    **cost_usd** (total; "unknown" when a model has no price) and **cost_per_case_usd** when
    nodes called chat models, the lowest- and highest-scoring cases, and
    **executor**: where the threads ran (on Ray: the cluster, its GCS address, worker pids).
    """
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
        dataset_ids = [case.id for case in workflow.cases()]
        total_cases = len(config.cases) if config.cases is not None else len(dataset_ids)
        context.log.info(f"{workflow_name} [{combo}]: {total_cases} cases")
        engine = executor.build()
        summary = run_batch(
            workflow,
            results.store,
            checkpointer.checked_url(),
            combos=[combo],
            case_ids=config.cases,
            executor=engine,
            force=config.force,
            retry_failed=config.retry_failed,
            timeout_s=config.timeout_s,
            progress=ProgressReporter(context.log.info, interval_s=5.0),
            run_id=context.run.run_id,
            trials=config.trials,
            forced_since=config.forced_since,
        )
    frame = results.store.results_frame(workflow_name, combos=[combo])
    version = workflow.combo_code_version(combo)
    report = batch_report(frame[frame.code_version == version], primary_metric=quality.metric)
    metadata = {
        "threads": report.threads,
        "executed_now": summary.executed,
        "shared_prefix_threads": summary.shared,
        "node_executions": summary.nodes_executed,
        "skipped_already_stored": summary.skipped,
        "statuses": MetadataValue.json(report.statuses),
        "failures": report.failures,
        "interrupted": report.interrupted,
        "wall_s": round(summary.wall_s, 2),
        "threads_per_s": round(summary.throughput, 2),
        **executor.describe(engine),
        "p50_latency_s": round(report.p50_latency_s, 4),
        "p95_latency_s": round(report.p95_latency_s, 4),
        "node_latency_s": MetadataValue.json(
            {
                node: {quantile: round(seconds, 4) for quantile, seconds in quantiles.items()}
                for node, quantiles in report.node_latency_s.items()
            }
        ),
        **{f"mean_{metric}": round(value, 4) for metric, value in report.means.items()},
        # chat-model usage of these threads (`costs`): shown when some node called a model
        **batch_usage(frame[frame.code_version == version]),
    }
    if report.primary_metric:
        metadata["bottom_cases"] = frame_table(report.bottom_cases)
        metadata["top_cases"] = frame_table(report.top_cases)
    return MaterializeResult(
        metadata=metadata,
        check_results=[
            every_case_ran(
                case_coverage(dataset_ids, frame, version, config.trials or workflow.trials)
            ),
            AssetCheckResult(
                check_name="failure_rate_under_threshold",
                passed=report.failure_rate <= quality.max_failure_rate,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "failure_rate": report.failure_rate,
                    "threshold": quality.max_failure_rate,
                    "failures": report.failures,
                    "interrupted_not_counted": report.interrupted,
                },
            ),
        ],
    )


def every_case_ran(coverage: CaseCoverage, shown: int = 20) -> AssetCheckResult:
    """The `every_case_ran` check of a coverage; the metadata names the first `shown` missing
    case ids."""
    missing = coverage.missing
    listed = ", ".join(missing[:shown]) + (
        f" … (+{len(missing) - shown})" if len(missing) > shown else ""
    )
    description = None
    if missing:
        description = (
            f"{len(missing)} of {coverage.cases} cases have no thread under code "
            f"{coverage.code_version}: {listed}"
            + (f"; {len(coverage.stale)} of them only under older code" if coverage.stale else "")
        )
    return AssetCheckResult(
        check_name="every_case_ran",
        passed=coverage.complete,
        description=description,
        metadata={
            "cases": coverage.cases,
            "ran_under_current_code": coverage.cases - len(missing),
            "missing": len(missing),
            "missing_case_ids": MetadataValue.json(missing[:shown]),
            "stale_only_older_code": len(coverage.stale),
            "stored_not_in_dataset": coverage.stored_not_in_dataset,
            "code_version": coverage.code_version,
        },
    )
