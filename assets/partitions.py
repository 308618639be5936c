"""Partitions of the bench: workflows, combos, and their product for batch runs.

Both dimensions are dynamic: workflows are added from the registry (sensor or `wtb bench`),
combos when `variant_matrix` is materialized. Combos are one shared dimension, so with several
workflows some (workflow, combo) pairs are not in that workflow's matrix; `batch_runs` refuses
them with a clear message rather than guessing.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

workflows_partitions = DynamicPartitionsDefinition(name="workflows")
combos_partitions = DynamicPartitionsDefinition(name="combos")
batch_partitions = MultiPartitionsDefinition(
    {"workflow": workflows_partitions, "combo": combos_partitions}
)


def batch_key(workflow: str, combo: str) -> MultiPartitionKey:
    """The `batch_runs` partition key of (workflow, combo)."""
    return MultiPartitionKey({"workflow": workflow, "combo": combo})
