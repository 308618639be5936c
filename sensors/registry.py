"""Keeps the `workflows` partitions in step with the registry (wtb.yaml)."""

from __future__ import annotations

from dagster import (
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import workflows_partitions
from resources import WorkflowRegistryResource
from wtb_dagster.errors import WTBError


def make_workflow_registry_sensor(minimum_interval_seconds: int = 60) -> SensorDefinition:
    """A sensor adding a `workflows` partition for every registered workflow.

    Partitions of workflows removed from the registry are kept with their history.
    """

    @sensor(
        name="workflow_registry_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Adds a `workflows` partition for each workflow in wtb.yaml.",
    )
    def workflow_registry_sensor(
        context: SensorEvaluationContext, registry: WorkflowRegistryResource
    ) -> SensorResult | SkipReason:
        try:
            names = registry.load().names()
        except WTBError as exc:
            return SkipReason(f"cannot load the registry: {exc}")
        known = set(context.instance.get_dynamic_partitions(workflows_partitions.name))
        new = [name for name in names if name not in known]
        if not new:
            return SkipReason(f"all {len(names)} registered workflows have partitions")
        return SensorResult(
            dynamic_partitions_requests=[workflows_partitions.build_add_request(new)]
        )

    return workflow_registry_sensor
