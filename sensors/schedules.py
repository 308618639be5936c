"""The nightly regression schedule (stopped by default)."""

from __future__ import annotations

from typing import Any

from dagster import (
    DefaultScheduleStatus,
    JobDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from assets.partitions import workflows_partitions


def make_nightly_regression_schedule(
    job: JobDefinition | Any, cron: str = "0 2 * * *"
) -> ScheduleDefinition:
    """Every night, refresh each workflow's definitions and matrix; the automation sensor then
    reruns the batch runs (stale threads only — stored threads under unchanged code are
    skipped) and the comparison with its regression check."""

    @schedule(
        name="nightly_regression",
        cron_schedule=cron,
        job=job,
        default_status=DefaultScheduleStatus.STOPPED,
        execution_timezone="UTC",
    )
    def nightly_regression(context: ScheduleEvaluationContext):  # type: ignore[no-untyped-def]
        workflows = context.instance.get_dynamic_partitions(workflows_partitions.name)
        if not workflows:
            return SkipReason("no workflow partitions yet (see workflow_registry_sensor)")
        date = context.scheduled_execution_time.strftime("%Y-%m-%d")
        return [
            RunRequest(run_key=f"nightly-{name}-{date}", partition_key=name) for name in workflows
        ]

    return nightly_regression
