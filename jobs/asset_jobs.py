"""The jobs that materialize parts of the asset graph, one workflow or one batch at a time.

Each job's partitions are those of the assets it selects (workflow, or workflow × combo); a
`run_batches` run may cover a range of combo partitions (`batch_runs`' single-run backfill
policy).
"""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

prepare_workflow_job = define_asset_job(
    "prepare_workflow",
    selection=AssetSelection.assets("test_cases", "workflow_definitions", "variant_matrix"),
    description="Validate the dataset, register the graph's code versions, build the variant "
    "matrix (adds combo partitions). The automation sensor then runs the batches and the "
    "comparison.",
)
batch_runs_job = define_asset_job(
    "run_batches",
    selection=AssetSelection.assets("batch_runs"),
    description="Run batch_runs partitions: one (workflow, combo), or a backfill over a "
    "workflow's combos, which is one run per contiguous range of them, each combo still its "
    "own partition, materialization and checks.",
)
compare_job = define_asset_job(
    "compare_workflow",
    selection=AssetSelection.assets("comparison_matrix"),
)
