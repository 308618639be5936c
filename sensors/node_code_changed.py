"""Notices a node whose code changed and asks to rerun affected threads from just before it."""

from __future__ import annotations

import json

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from assets.partitions import workflows_partitions
from resources import ResultsStoreResource, WorkflowRegistryResource
from wtb_dagster.errors import WTBError
from wtb_dagster.reruns import create_rerun_request

WORKFLOW_DEFINITIONS = AssetKey("workflow_definitions")


def changed_implementations(
    before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]
) -> list[tuple[str, str]]:
    """(node, variant) pairs whose code version differs between two `code_versions` maps."""
    return sorted(
        (node, variant)
        for node, impls in after.items()
        for variant, version in impls.items()
        if node in before and variant in before[node] and before[node][variant] != version
    )


def make_node_code_changed_sensor(minimum_interval_seconds: int = 30) -> SensorDefinition:
    """Watches `workflow_definitions` materializations; for each changed (node, variant) it
    stores a rerun request per affected combo from the checkpoint just before that node, so
    the nodes upstream are not executed again. The cursor remembers the code versions seen."""

    @sensor(
        name="node_code_changed_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Creates rerun requests (before the changed node) when a node's code changes.",
    )
    def node_code_changed_sensor(
        context: SensorEvaluationContext,
        registry: WorkflowRegistryResource,
        results: ResultsStoreResource,
    ) -> SkipReason:
        seen: dict[str, dict[str, dict[str, str]]] = json.loads(context.cursor or "{}")
        created: list[str] = []
        for name in context.instance.get_dynamic_partitions(workflows_partitions.name):
            records = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=WORKFLOW_DEFINITIONS, asset_partitions=[name]),
                limit=1,
            ).records
            if not records or records[0].asset_materialization is None:
                continue
            versions = records[0].asset_materialization.metadata["code_versions"].value
            previous = seen.get(name)
            seen[name] = versions  # type: ignore[assignment]
            if previous is None:
                continue  # first sight: nothing to compare with
            changes = changed_implementations(previous, versions)  # type: ignore[arg-type]
            if not changes:
                continue
            try:
                workflow = registry.get(name)
            except WTBError as exc:
                context.log.warning(f"{name}: {exc}")
                continue
            stored_combos = set(results.store.results_frame(name).combo)
            for node, variant in changes:
                for combo in workflow.matrix():
                    if combo.variant_for(node) != variant or combo.key not in stored_combos:
                        continue
                    try:
                        request_id = create_rerun_request(
                            results.store,
                            workflow,
                            combo=combo.key,
                            before_node=node,
                            reason=f"code of {node}={variant} changed",
                        )
                    except WTBError as exc:
                        context.log.warning(f"{name} [{combo.key}]: {exc}")
                        continue
                    created.append(f"#{request_id} {name} [{combo.key}] before {node}")
        context.update_cursor(json.dumps(seen, sort_keys=True))
        if created:
            return SkipReason(f"created rerun requests: {'; '.join(created)}")
        return SkipReason("no node's code changed")

    return node_code_changed_sensor
