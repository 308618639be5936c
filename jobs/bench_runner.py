"""The runner behind `wtb bench`: a whole workflow as runs of the code location's own jobs.

`prepare_workflow` [workflow], then `run_batches` over the workflow's combos, then
`compare_workflow` [workflow] — the jobs of `definitions.py`, with its resources, on the
instance at DAGSTER_HOME, each run executed in this process and tagged `wtb/workflow` (and
`wtb/combo` when a run has one combo), so the UI lists them under their job names beside runs
launched there. The batches are one run over the partition range of the combos (as a backfill
with `batch_runs`' single-run policy makes it), or one per contiguous range when the chosen
combos are not adjacent among the instance's combo partitions; each (workflow, combo) still
gets its own materialization and checks. It stands in for the daemon on a machine where
nothing runs in the background: it adds the workflow partition (as `workflow_registry_sensor`
would) and launches the batches and the comparison (as `bench_automation` would).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    Field,
    InitLoggerContext,
    logger,
)
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR  # the record's Dagster metadata
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from dagster._utils.error import SerializableErrorInfo
from dagster_ray import LocalRay

from assets.partitions import batch_key, combos_partitions, workflows_partitions
from resources import ExecutorResource, RayClusterByAddress
from wtb_dagster.errors import ExecutionError
from wtb_dagster.matrix import Combo

WORKFLOW_TAG = "wtb/workflow"
COMBO_TAG = "wtb/combo"
PREPARE_JOB, BATCH_JOB, COMPARE_JOB = "prepare_workflow", "run_batches", "compare_workflow"


class RunFailed(ExecutionError):
    """A run of the bench failed; the message names it and its first error."""

    def __init__(self, run_id: str, job: str, partition: str, reason: str) -> None:
        self.run_id, self.job, self.partition, self.reason = run_id, job, partition, reason
        super().__init__(
            f"run {run_id} ({job} [{partition}]) failed: {reason} — its logs are in the UI "
            f"(`wtb ui`, then Runs → {run_id[:8]})"
        )


@dataclass
class CheckOutcome:
    """One asset check evaluation of a bench run."""

    name: str  # asset:check
    partition: str
    passed: bool
    description: str = ""
    failing: list[str] = field(default_factory=list)  # the combos a regression check names


@dataclass
class RunOutcome:
    job: str
    partition: str
    run_id: str
    checks: list[CheckOutcome] = field(default_factory=list)


@dataclass
class WholeWorkflowResult:
    """The runs of one whole workflow and what they reported."""

    workflow: str
    runs: list[RunOutcome] = field(default_factory=list)
    combos: list[str] = field(default_factory=list)
    comparison_markdown: str = ""

    @property
    def run_ids(self) -> list[str]:
        return [run.run_id for run in self.runs]

    @property
    def checks(self) -> list[CheckOutcome]:
        return [check for run in self.runs for check in run.checks]


@logger(
    {"log_level": Field(str, is_required=False, default_value="INFO")},
    description="wtb bench's terminal: the steps' own log lines, one per message. Dagster's "
    "events (failures with their stack traces) are left to the run's event log; the bench "
    "reports a failed run itself, in one line.",
)
def bench_console(context: InitLoggerContext) -> logging.Logger:
    log = logging.Logger("wtb bench", context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_step_messages_only)
    handler.setFormatter(_StepFormatter())
    log.addHandler(handler)
    return log


def _step_messages_only(record: logging.LogRecord) -> bool:
    meta = getattr(record, LOG_RECORD_METADATA_ATTR, None)
    return meta is not None and meta.get("dagster_event") is None


class _StepFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, LOG_RECORD_METADATA_ATTR)
        return f"  {meta.get('step_key') or meta.get('job_name')}: {meta['orig_message']}"


def materialize_workflow(
    workflow: str,
    defs: Definitions,
    instance: DagsterInstance,
    combos: list[str] | None = None,
    batch_config: Mapping[str, Any] | None = None,
    resources: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
    log_level: str = "INFO",
) -> WholeWorkflowResult:
    """Run `prepare_workflow`, `run_batches` over every combo (or `combos`), then
    `compare_workflow` of `defs` on `instance`; raises `RunFailed` at the first failed run.

    `resources` replace some of `defs`' resources for these runs (`wtb bench --workers`).

    >>> materialize_workflow("demo", definitions.defs, DagsterInstance.get())
    """
    # Names are checked before anything is written: an unknown workflow or combo adds no
    # partition and starts no run. The resource is resolved as a run would (EnvVar settings).
    registry = defs.resources["registry"].process_config_and_initialize()
    registered = registry.get(workflow)
    chosen = [registered.check_combo(c).key for c in combos] if combos else None
    outcome = WholeWorkflowResult(workflow)
    if not instance.has_dynamic_partition(workflows_partitions.name, workflow):
        instance.add_dynamic_partitions(workflows_partitions.name, [workflow])

    def run(
        job_name: str,
        partition_key: str | None,
        tags: Mapping[str, str],
        run_config: Mapping[str, Any] | None = None,
        shown: str | None = None,
    ) -> ExecuteInProcessResult:
        job = defs.resolve_job_def(job_name).with_logger_defs({"console": bench_console})
        result = job.execute_in_process(
            run_config={
                **(run_config or {}),
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
            instance=instance,
            partition_key=partition_key,
            tags={WORKFLOW_TAG: workflow, **tags},
            resources=resources,
            raise_on_error=False,
        )
        partition = shown or str(partition_key)
        ran = RunOutcome(job_name, partition, result.run_id)
        outcome.runs.append(ran)
        for evaluation in result.get_asset_check_evaluations():
            regressed = evaluation.metadata.get("regressed")
            ran.checks.append(
                CheckOutcome(
                    name=f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}",
                    partition=evaluation.partition or partition,
                    passed=evaluation.passed,
                    description=evaluation.description or "",
                    failing=list(regressed.value) if regressed is not None else [],  # type: ignore[arg-type]
                )
            )
        if not result.success:
            raise RunFailed(result.run_id, job_name, partition, failure_reason(result))
        return result

    log(f"[1/3] {workflow}: {PREPARE_JOB} (test_cases, workflow_definitions, variant_matrix)")
    run(PREPARE_JOB, workflow, {})
    # the baseline first, then by how many nodes a combo varies: each batch finds the
    # threads it shares prefixes with already stored (`prefixes`)
    combos_in_order = chosen or [c.key for c in registered.matrix()]
    outcome.combos = sorted(combos_in_order, key=lambda key: len(Combo.parse(key).picks))
    batch = dict(batch_config or {})
    if batch.get("force") and "forced_since" not in batch:
        batch["forced_since"] = time.time()  # forced: the other combos of this bench may lend
    config = {"ops": {"batch_runs": {"config": batch}}}
    ranges = combo_ranges(outcome.combos, instance.get_dynamic_partitions(combos_partitions.name))
    with _ray_held({**defs.resources, **(resources or {})}["executor"]):
        for index, combos in enumerate(ranges, start=1):
            counted = f" {index}/{len(ranges)}" if len(ranges) > 1 else ""
            if len(combos) == 1:
                (combo,) = combos
                log(f"[2/3] {workflow}: {BATCH_JOB}{counted} [{combo}]")
                run(BATCH_JOB, batch_key(workflow, combo), {COMBO_TAG: combo}, config)
                continue
            first, last = str(batch_key(workflow, combos[0])), str(batch_key(workflow, combos[-1]))
            log(f"[2/3] {workflow}: {BATCH_JOB}{counted} [{len(combos)} combos: {first}...{last}]")
            bounds = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
            run(BATCH_JOB, None, bounds, config, shown=f"{first}...{last}")
    log(f"[3/3] {workflow}: {COMPARE_JOB}")
    compared = run(COMPARE_JOB, workflow, {})
    event = compared.asset_materializations_for_node("comparison_matrix")[0]
    outcome.comparison_markdown = event.metadata["matrix"].value  # type: ignore[assignment]
    return outcome


def combo_ranges(combos: list[str], partitions: Sequence[str]) -> list[list[str]]:
    """`combos` split into runs of adjacent keys of the instance's combo `partitions` (in
    their order), each a partition range of one run; the ranges ordered by their fewest picks,
    so the baseline's batch runs first and the others find its threads to share."""
    position = {combo: index for index, combo in enumerate(partitions)}
    ranges: list[list[str]] = []
    for combo in sorted(combos, key=position.__getitem__):
        if ranges and position[ranges[-1][-1]] == position[combo] - 1:
            ranges[-1].append(combo)
        else:
            ranges.append([combo])
    return sorted(ranges, key=lambda run: min(len(Combo.parse(key).picks) for key in run))


@contextmanager
def _ray_held(executor_resource: ExecutorResource) -> Iterator[None]:
    """Keep this process attached to Ray across the batch runs, when they run on a Ray that is
    there already (a local one, or a cluster by address): each run's executor then uses the
    connection instead of starting and stopping a local Ray (~5 s) per combo. A resource that
    creates its cluster (KubeRay) is left to create one per step, as in a deployment."""
    if not isinstance(executor_resource.ray, LocalRay | RayClusterByAddress):
        yield  # checked before the resource is set up: that would create the cluster
        return
    with executor_resource.process_config_and_initialize_cm() as executor:
        if executor.kind == "ray":
            executor.build().connect()  # closed, with the connection, when the block ends
        yield


def failure_reason(result: ExecuteInProcessResult) -> str:
    """The first error of a failed run, as its author wrote it: a `Failure`'s description, or
    the exception inside Dagster's wrappers, first line only."""
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                return data.user_failure_data.description
            if data.error is not None:
                return _first_line(_unwrapped(data.error))
    failure = result.get_run_failure_event()
    if failure is None:
        return "see the run's event log"
    error = getattr(failure.event_specific_data, "error", None)
    return _first_line(_unwrapped(error)) if error is not None else str(failure.message)


def _unwrapped(error: SerializableErrorInfo) -> SerializableErrorInfo:
    while error.cls_name and error.cls_name.startswith("Dagster") and error.cause is not None:
        error = error.cause
    return error


def _first_line(error: SerializableErrorInfo) -> str:
    lines = error.message.strip().splitlines()
    return lines[0] if lines else (error.cls_name or "error")


def run_whole_workflow(
    workflow: str,
    defs: Definitions,
    instance: DagsterInstance,
    combos: list[str] | None = None,
    batch_config: Mapping[str, Any] | None = None,
    resources: Mapping[str, Any] | None = None,
    ui_hint: str = "wtb ui",
) -> int:
    """`wtb bench`: the whole workflow, then the comparison and the checks on the terminal."""
    outcome = materialize_workflow(
        workflow, defs, instance, combos=combos, batch_config=batch_config, resources=resources
    )
    print()
    print(outcome.comparison_markdown)
    print()
    failed = [check for check in outcome.checks if not check.passed]
    batches = sum(run.job == BATCH_JOB for run in outcome.runs)
    print(
        f"{len(outcome.runs)} Dagster runs on {instance.root_directory} ({PREPARE_JOB}, "
        f"{BATCH_JOB} ×{batches}, {COMPARE_JOB}); checks: "
        f"{len(outcome.checks) - len(failed)} passed, {len(failed)} failed"
    )
    for check in failed:
        named = f" — failing combos: {', '.join(check.failing)}" if check.failing else ""
        print(f"  FAILED {check.name} [{check.partition}]{named}")
        if check.description:
            print(f"    {check.description}")
    print(f"Open the UI: {ui_hint}")
    return 0
