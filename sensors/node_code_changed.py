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
from wtb_dagster.rerun_request import rerun_request
from wtb_dagster.reruns import (
    affected_combos,
    changed_implementations,
    create_rerun_request,
    find_rerun_request,
)

WORKFLOW_DEFINITIONS = AssetKey("workflow_definitions")


def make_node_code_changed_sensor(minimum_interval_seconds: int = 30) -> SensorDefinition:
    """Watches `workflow_definitions` materializations; for each changed (node, variant) it
    stores a rerun request per affected combo from the checkpoint just before that node, so
    the nodes upstream are not executed again.

    The cursor remembers, per workflow, the code versions whose changes are fully requested.
    It moves on only when every request of a change is stored (or there was nothing to do);
    after an error the old versions stay and the next tick tries again. Requests are named by
    the versions they are for, so a retry finds those already stored and does not repeat them.
    """

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
        retrying: list[str] = []
        for name in context.instance.get_dynamic_partitions(workflows_partitions.name):
            records = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=WORKFLOW_DEFINITIONS, asset_partitions=[name]),
                limit=1,
            ).records
            if not records or records[0].asset_materialization is None:
                continue
            metadata = records[0].asset_materialization.metadata
            versions: dict[str, dict[str, str]] = metadata["code_versions"].value  # type: ignore[assignment]
            previous = seen.get(name)  # None at first sight: nothing to compare with
            if previous is not None and (changes := changed_implementations(previous, versions)):
                stored, complete = _request_reruns(
                    context, registry, results, name, changes, previous, versions
                )
                created += stored
                if not complete:
                    retrying.append(name)
                    continue  # keep the versions seen before: the next tick tries again
            seen[name] = versions
        context.update_cursor(json.dumps(seen, sort_keys=True))
        parts = []
        if created:
            parts.append(f"created rerun requests: {'; '.join(created)}")
        if retrying:
            parts.append(f"will retry {', '.join(retrying)} (see the tick's log)")
        return SkipReason(". ".join(parts) if parts else "no node's code changed")

    return node_code_changed_sensor


def _request_reruns(
    context: SensorEvaluationContext,
    registry: WorkflowRegistryResource,
    results: ResultsStoreResource,
    name: str,
    changes: list[tuple[str, str]],
    before: dict[str, dict[str, str]],
    after: dict[str, dict[str, str]],
) -> tuple[list[str], bool]:
    """Store one request per affected combo and change: what was created, and whether every
    request of the changes is now stored (made now or by an earlier tick)."""
    created: list[str] = []
    try:
        workflow = registry.get(name)
        stored_combos = set(results.store.combos(name))
    except WTBError as exc:
        context.log.warning(f"{name}: {exc}")
        return created, False
    complete = True
    for node, variant, combo in affected_combos(workflow, changes, stored_combos):
        reason = (
            f"code of {node}={variant} changed: {before[node][variant]} → {after[node][variant]}"
        )
        fields = dict(combo=combo.key, before_node=node, reason=reason)
        try:
            if find_rerun_request(results.store, name, **fields) is not None:
                continue  # stored by an earlier tick that failed on another combo
            request_id = create_rerun_request(
                results.store, workflow, rerun_request(name, **fields)
            )
        except WTBError as exc:
            context.log.warning(f"{name} [{combo.key}]: {exc}")
            complete = False
            continue
        created.append(f"#{request_id} {name} [{combo.key}] before {node}")
    return created, complete
