"""The code location loads: one Definitions with every asset, check, job, sensor and schedule."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from dagster import AssetCheckKey, AssetKey

REPO = Path(__file__).resolve().parents[1]


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


def test_the_regression_check_is_partitioned_by_workflow():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    check = graph.get(AssetCheckKey(AssetKey("comparison_matrix"), "no_regression_vs_baseline"))
    assert check.partitions_def == graph.get(AssetKey("comparison_matrix")).partitions_def


def test_ray_address_picks_the_cluster_by_address_else_a_local_ray(monkeypatch):
    from dagster_ray import LocalRay

    import definitions
    from resources import RayClusterByAddress

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert isinstance(definitions.ray_cluster(), LocalRay)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    cluster = definitions.ray_cluster()
    assert isinstance(cluster, RayClusterByAddress)
    assert definitions.executor_resource(num_workers=3).num_workers == 3


# What loading the code location may warn about: the Dagster beta/preview APIs the project
# uses on purpose, each listed in the README ("Dagster warnings"). Nothing else, no deprecation.
ACCEPTED = {
    ("BetaWarning", "Class `MultiToSingleDimensionPartitionMapping`"),
    ("BetaWarning", "Parameter `backfill_policy` of function `asset`"),
    ("PreviewWarning", "Specifying a partitions_def on an AssetCheckSpec"),
    ("BetaWarning", "Parameter `owners` of initializer `SensorDefinition.__init__`"),
}
README_NAMES = [
    "MultiToSingleDimensionPartitionMapping", "backfill_policy",
    "AssetCheckSpec(partitions_def=…)", "SensorDefinition.__init__",
]  # fmt: skip


def test_loading_the_code_location_warns_only_about_the_accepted_beta_and_preview_apis():
    code = (
        "import definitions; definitions.defs.resolve_all_job_defs(); "
        "definitions.defs.resolve_sensor_def('bench_automation')"
    )
    completed = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], cwd=REPO, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    found = set(re.findall(r": (\w+Warning): (.+?) is currently in", completed.stderr))
    assert found <= ACCEPTED, found - ACCEPTED
    assert "DeprecationWarning" not in completed.stderr
    section = (REPO / "README.md").read_text().split("### Dagster warnings", 1)[-1]
    assert all(name in section for name in README_NAMES)
