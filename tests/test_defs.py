"""The code location loads: one Definitions with every asset, check, job, sensor and schedule."""

from __future__ import annotations

from dagster import AssetKey


def test_definitions_load_with_the_public_asset_names():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    names = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert names == {
        "test_cases",
        "workflow_definitions",
        "variant_matrix",
        "batch_runs",
        "comparison_matrix",
    }
    checks = {key.name for key in graph.asset_check_keys}
    assert checks == {"every_case_ran", "failure_rate_under_threshold", "no_regression_vs_baseline"}
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "prepare_workflow",
        "run_batches",
        "compare_workflow",
    }
    assert defs.resolve_schedule_def("nightly_regression").default_status.value == "STOPPED"
    assert defs.resolve_sensor_def("workflow_registry_sensor") is not None
    batch = graph.get(AssetKey("batch_runs"))
    assert batch.partitions_def.partition_dimension_names == ["combo", "workflow"]
