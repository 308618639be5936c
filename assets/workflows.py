"""Workflow-level assets: the dataset, the registered graph's structure, the variant matrix."""

import hashlib
import json
from collections import Counter

import pandas as pd
from dagster import (
    AssetExecutionContext,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.errors import user_errors
from assets.metadata import frame_table
from assets.partitions import combos_partitions, workflows_partitions
from resources import ResultsStoreResource, WorkflowRegistryResource
from wtb_dagster.matrix import BASELINE
from wtb_dagster.threads import MAIN_LINEAGE

CODE_VERSION = (
    "hash of the code the implementation reaches; a change marks the downstream assets stale "
    "and reruns the threads that ran it"
)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@asset(partitions_def=workflows_partitions, group_name="bench")
def test_cases(
    context: AssetExecutionContext, registry: WorkflowRegistryResource
) -> MaterializeResult:
    """The workflow's dataset of test cases, validated (ids unique, every line well-formed)."""
    with user_errors():
        workflow = registry.get(context.partition_key)
        cases = workflow.cases()
    tags = Counter(tag for case in cases for tag in case.tags)
    preview = pd.DataFrame(
        [
            {
                "id": c.id,
                "input": json.dumps(c.input)[:80],
                "expected": json.dumps(c.expected)[:60],
                "tags": ", ".join(c.tags),
            }
            for c in cases[:10]
        ]
    )
    return MaterializeResult(
        metadata={
            "cases": len(cases),
            "dataset": str(workflow.dataset)
            if not isinstance(workflow.dataset, list)
            else "inline",
            "tags": MetadataValue.json(dict(tags)),
            "preview": frame_table(
                preview,
                {
                    "input": "the input state (JSON, first 80 characters)",
                    "expected": "the expected output scorers compare with (JSON, first 60)",
                },
            ),
        },
        data_version=DataVersion(_digest([c.to_dict() for c in cases])),
    )


@asset(partitions_def=workflows_partitions, group_name="bench")
def workflow_definitions(
    context: AssetExecutionContext, registry: WorkflowRegistryResource
) -> MaterializeResult:
    """Nodes, edges and varied nodes of the workflow, with a code version per node and variant.

    Its data version is a hash of those code versions: when a node's code changes, the assets
    downstream show as stale in the UI.
    """
    with user_errors():
        workflow = registry.get(context.partition_key)
        structure = workflow.structure()
        versions = workflow.code_versions()
        # the combos that need an environment of their own (the others run in the driver's)
        envs = {c.key: env for c in workflow.matrix() if (env := workflow.combo_env(c))}
    rows = [
        {"node": node, "variant": variant, "code_version": version}
        for node, impls in versions.items()
        for variant, version in impls.items()
    ]
    return MaterializeResult(
        metadata={
            "graph": workflow.graph_path,
            "nodes": len(structure["nodes"]),
            "edges": len(structure["edges"]),
            "varied_nodes": MetadataValue.json(structure["varied_nodes"]),
            "code_versions": MetadataValue.json(versions),
            "code_version_table": frame_table(pd.DataFrame(rows), {"code_version": CODE_VERSION}),
            "diagram": MetadataValue.md(f"```mermaid\n{structure['mermaid']}\n```"),
            "environments": MetadataValue.json({k: env.describe() for k, env in envs.items()}),
        },
        # an environment is code too; without any, the version is what it always was
        data_version=DataVersion(
            _digest({"code": versions, "envs": {k: e.fingerprint() for k, e in envs.items()}})
            if envs
            else _digest(versions)
        ),
    )


@asset(
    partitions_def=workflows_partitions,
    group_name="bench",
    deps=[workflow_definitions],
)
def variant_matrix(
    context: AssetExecutionContext,
    registry: WorkflowRegistryResource,
    results: ResultsStoreResource,
) -> MaterializeResult:
    """The combos to test, added as partitions of `batch_runs`.

    A combo that left the matrix keeps its partition and its stored history; it is listed
    here as stale and left out of the comparison.
    """
    with user_errors():
        workflow = registry.get(context.partition_key)
        matrix = workflow.matrix()
    keys = [combo.key for combo in matrix]
    existing = set(context.instance.get_dynamic_partitions(combos_partitions.name))
    new = [key for key in keys if key not in existing]
    if new:
        context.instance.add_dynamic_partitions(combos_partitions.name, new)
    stored = set(results.store.combos(workflow.name, lineage=MAIN_LINEAGE))
    stale = sorted(stored - set(keys))
    varied = sorted(workflow.variant_names())
    code = workflow.code_versions()  # once: it reads every node's source
    frame = pd.DataFrame(
        [
            {
                "combo": combo.key,
                **{node: combo.variant_for(node) for node in varied},
                "code_version": workflow.combo_code_version(combo, code),
                "environment": workflow.combo_env(combo).describe(),
                "partition": "new" if combo.key in new else "existing",
            }
            for combo in matrix
        ]
    )
    context.log.info(
        f"{workflow.name}: {len(keys)} combos ({len(new)} new partitions); stale: {stale or 'none'}"
    )
    return MaterializeResult(
        metadata={
            "combos": len(keys),
            "new_partitions": len(new),
            "stale_combos": MetadataValue.json(stale),
            "baseline": BASELINE,
            "matrix": frame_table(
                frame,
                {
                    "combo": "the combo key: its batch_runs partition",
                    "code_version": "hash of the code versions of its implementations "
                    "and of its environment",
                    "environment": "the Python environment it runs in (Ray runtime_env)",
                    "partition": "new: added by this materialization",
                },
            ),
        },
        data_version=DataVersion(_digest(frame.to_dict("records"))),
    )
