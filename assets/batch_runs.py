"""`batch_runs`: every test case of a combo run as checkpointed threads (workflow × combo).

One run may materialize many partitions — a backfill or `wtb bench` over a workflow's combos
is one run (`BackfillPolicy.single_run()`): the combos of a workflow then run as one engine
batch, so they share prefixes with each other, keep one executor (one Ray, warm workers) and
pay Dagster's per-run cost once. Each partition still gets its own materialization, metadata
and check evaluations.
"""

from collections.abc import Iterator, Sequence

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    Output,
    asset,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,  # not exported; AssetCheckResult fills it so
)
from pydantic import Field

from assets.errors import user_errors
from assets.metadata import frame_table
from assets.partitions import batch_key, batch_partitions
from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    ResultsStoreResource,
    WorkflowRegistryResource,
)
from wtb_dagster.batch_report import BatchReport, CaseCoverage, batch_report, case_coverage
from wtb_dagster.batches import BatchSummary, run_batch
from wtb_dagster.costs import batch_usage
from wtb_dagster.execution import Executor
from wtb_dagster.progress import ProgressReporter
from wtb_dagster.workflows import Workflow

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
        description="With force: threads finished after this Unix time (say, by the other "
        "runs of one `wtb bench --force` whose combos took several runs) may still lend their "
        "shared prefixes; default: the start of this run.",
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
    # A backfill over combos (or `wtb bench`) is one run per contiguous range of partitions:
    # the batch of a workflow's combos then shares prefixes across them and starts the
    # executor once. Dagster splits a backfill's partitions into ranges holding one dimension
    # fixed, so a range is combos of one workflow or workflows of one combo; a combo stays
    # one partition, with its own materialization and checks.
    backfill_policy=BackfillPolicy.single_run(),
)
def batch_runs(
    context: AssetExecutionContext,
    config: BatchRunConfig,
    registry: WorkflowRegistryResource,
    checkpointer: CheckpointerResource,
    results: ResultsStoreResource,
    executor: ExecutorResource,
    quality: QualityGates,
) -> Iterator[MaterializeResult | Output | AssetCheckEvaluation]:
    """Every test case of each targeted combo run as checkpointed threads; one row per thread
    in the results store (status, final values, scores, latency, checkpoint ids, error). The
    combos of one workflow run as one batch.

    Metadata of each (workflow, combo) partition: **threads** under the combo's current code
    (**executed_now** by this run, **skipped_already_stored**; **shared_prefix_threads** of
    those run started from another combo's checkpoint, **node_executions** they cost),
    **statuses**, **failures** (failed + timed out), **interrupted**, thread latency quantiles
    (s) overall and per node, **mean_<metric>** over these threads, **tokens_in** /
    **tokens_out** and **cost_usd** (total; "unknown" when a model has no price) and
    **cost_per_case_usd** when nodes called chat models, the lowest- and highest-scoring cases.
    Of the batch the partition ran in: **batch_combos** (the combos run together), wall time
    **wall_s** and **threads_per_s**, and **executor**: where the threads ran (on Ray: the
    cluster, its GCS address, worker pids).
    """
    by_workflow: dict[str, list[str]] = {}
    for key in context.partition_keys:
        dims = batch_partitions.get_partition_key_from_str(key).keys_by_dimension
        by_workflow.setdefault(dims["workflow"], []).append(dims["combo"])
    with user_errors():
        # every name is checked before any batch runs: a stale combo fails the run up front
        workflows = {
            name: _checked(registry.get(name), combos) for name, combos in by_workflow.items()
        }
        engine = executor.build()
        batches = [
            _run_workflow(context, config, workflows[name], combos, checkpointer, results, engine)
            for name, combos in by_workflow.items()
        ]
    checks: list[tuple[str, AssetCheckResult]] = []  # (partition, its check's result)
    for workflow, combos, summary in batches:
        dataset_ids = [case.id for case in workflow.cases()]
        code = workflow.code_versions()  # reads every node's source: once, not per combo
        of_batch = {
            "batch_combos": len(combos),
            "wall_s": round(summary.wall_s, 2),
            "threads_per_s": round(summary.throughput, 2),
            **executor.describe(engine),
        }
        for combo in combos:
            key = str(batch_key(workflow.name, combo))
            version = workflow.combo_code_version(combo, code)
            # one combo's rows at a time, without the inputs and paths: a run over many combos
            # holds one combo's threads in memory, not the whole batch's
            threads = results.store.results_frame(
                workflow.name, combos=[combo], columns=REPORT_COLUMNS
            )
            current = threads[threads.code_version == version]
            report = batch_report(current, primary_metric=quality.metric)
            context.add_asset_metadata(
                {**combo_metadata(summary, combo, report, current), **of_batch}, partition_key=key
            )
            trials = config.trials or workflow.trials
            checks.append(
                (key, every_case_ran(case_coverage(dataset_ids, threads, version, trials)))
            )
            checks.append((key, failure_rate_under_threshold(report, quality)))
    yield MaterializeResult()  # one materialization per partition, with the metadata above
    # Evaluated after the materializations are stored, so each names its partition's, as an
    # AssetCheckResult would; but an AssetCheckResult cannot name a partition in a run of
    # several, so each check's output is yielded once and its evaluations one per partition.
    latest = _latest_materializations(context, [key for key, _ in checks])
    for output_name, spec in context.assets_def.check_specs_by_output_name.items():
        yield Output(None, output_name=output_name)
        for key, check in checks:
            if check.check_name == spec.name:
                yield _evaluation(context.assets_def.key, check, key, latest.get(key))


# What the batch report, the coverage check and the usage figures read of a stored thread.
REPORT_COLUMNS = [
    "thread_id", "combo", "case_id", "trial", "status", "scores", "score_errors", "error",
    "final_values", "latency_s", "node_timings", "code_version", "tokens_in", "tokens_out",
    "cost_usd",
]  # fmt: skip


def combo_metadata(
    summary: BatchSummary, combo: str, report: BatchReport, threads: pd.DataFrame
) -> dict[str, object]:
    """The metadata of one combo's partition: what the batch did for it (`summary`), and its
    stored `threads` under the combo's current code summed up (`report`)."""
    ran = [r for r in summary.results if r.combo == combo]
    per_combo = summary.total // max(len(summary.combos), 1)  # every combo: the same cases
    metadata: dict[str, object] = {
        "threads": report.threads,
        "executed_now": len(ran),
        "shared_prefix_threads": sum(r.shared_from is not None for r in ran),
        "node_executions": sum(r.nodes_executed for r in ran),
        "skipped_already_stored": per_combo - len(ran),
        "statuses": MetadataValue.json(report.statuses),
        "failures": report.failures,
        "interrupted": report.interrupted,
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
        **batch_usage(threads),
    }
    if any(r.files_written for r in ran):
        # workspace files (`workspaces`) this run stored for the combo, and how much of it
        # was new to the blob store (the rest deduplicated)
        metadata["files_written"] = sum(r.files_written for r in ran)
        metadata["bytes_written"] = sum(r.bytes_written for r in ran)
        metadata["bytes_new_in_blob_store"] = sum(r.bytes_stored for r in ran)
    if report.primary_metric:
        metadata["bottom_cases"] = frame_table(report.bottom_cases)
        metadata["top_cases"] = frame_table(report.top_cases)
    return metadata


def _latest_materializations(
    context: AssetExecutionContext, keys: Sequence[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """The latest materialization of each partition in `keys` (one query for them all)."""
    wanted = list(dict.fromkeys(keys))
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=context.assets_def.key, asset_partitions=wanted),
        limit=len(wanted) * 4,  # newest first: this run's, unless it was re-run in between
    ).records
    latest: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
    for record in records:
        partition = record.partition_key
        if partition is not None and partition not in latest:
            latest[partition] = AssetCheckEvaluationTargetMaterializationData(
                run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp
            )
    return latest


def _evaluation(
    asset_key: AssetKey,
    check: AssetCheckResult,
    partition: str,
    target: AssetCheckEvaluationTargetMaterializationData | None,
) -> AssetCheckEvaluation:
    """`check` as the evaluation of `partition`, against its materialization `target`."""
    return AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=check.check_name or "",
        passed=check.passed,
        metadata=check.metadata,
        target_materialization_data=target,
        severity=check.severity,
        description=check.description,
        blocking=False,
        partition=partition,
    )


def _checked(workflow: Workflow, combos: Sequence[str]) -> Workflow:
    matrix = [c.key for c in workflow.matrix()]
    foreign = [combo for combo in combos if combo not in matrix]
    if foreign:
        named = (
            f"combo {foreign[0]!r} is"
            if len(foreign) == 1
            else (f"combos {', '.join(map(repr, foreign))} are")
        )
        raise Failure(
            description=f"{named} not in the variant matrix of workflow {workflow.name!r} (it "
            f"may be stale, or belong to another workflow); its combos: {', '.join(matrix)}",
            allow_retries=False,
        )
    return workflow


def _run_workflow(
    context: AssetExecutionContext,
    config: BatchRunConfig,
    workflow: Workflow,
    combos: list[str],
    checkpointer: CheckpointerResource,
    results: ResultsStoreResource,
    engine: Executor,
) -> tuple[Workflow, list[str], BatchSummary]:
    """One engine batch of `combos` of `workflow`."""
    total_cases = len(config.cases) if config.cases is not None else len(workflow.cases())
    named = combos[0] if len(combos) == 1 else f"{len(combos)} combos"
    context.log.info(f"{workflow.name} [{named}]: {total_cases} cases")
    summary = run_batch(
        workflow,
        results.store,
        checkpointer.checked_url(),
        combos=combos,
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
    return workflow, combos, summary


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


def failure_rate_under_threshold(report: BatchReport, quality: QualityGates) -> AssetCheckResult:
    """The `failure_rate_under_threshold` check of a combo's report."""
    return AssetCheckResult(
        check_name="failure_rate_under_threshold",
        passed=report.failure_rate <= quality.max_failure_rate,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "failure_rate": report.failure_rate,
            "threshold": quality.max_failure_rate,
            "failures": report.failures,
            "interrupted_not_counted": report.interrupted,
        },
    )
