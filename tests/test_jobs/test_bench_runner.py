"""The runner behind `wtb bench`: a whole workflow materialized as Dagster runs, in order."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterInstance

from assets.partitions import batch_key, combos_partitions, workflows_partitions
from jobs.bench_runner import materialize_workflow
from tests.dagster_fixtures import bench_resources, write_toy_registry
from wtb_dagster.store import ResultsStore


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


def batch_runs_key():
    return AssetKey("batch_runs")


def comparison_key():
    return AssetKey("comparison_matrix")


def test_whole_demo_materializes_every_combo_and_the_comparison(tmp_path, instance):
    resources = bench_resources(tmp_path, "wtb.yaml")  # the repository's registry: the demo
    outcome = materialize_workflow("demo", resources, instance, log=lambda _: None)
    assert outcome.succeeded
    assert len(outcome.combos) == 12
    assert set(instance.get_dynamic_partitions(combos_partitions.name)) == set(outcome.combos)
    materialized = instance.get_materialized_partitions(batch_runs_key())
    assert materialized == {str(batch_key("demo", combo)) for combo in outcome.combos}
    # the comparison's metadata holds the matrix: every combo is a row of the markdown table
    for combo in outcome.combos:
        assert f"| {combo} | 57 |" in outcome.comparison_markdown
    event = instance.get_latest_materialization_event(comparison_key())
    metadata = event.asset_materialization.metadata
    assert metadata["combos"].value == 12
    assert metadata["best_combo"].value == "retrieve=bm25"
    assert metadata["plot"].value.startswith("![comparison](data:image/png;base64,")
    store = ResultsStore(f"sqlite:///{tmp_path}/results.db")
    assert store.count("demo") == 12 * 57
    assert all(passed for name, passed in outcome.checks.items() if "batch_runs" in name)


def test_whole_workflow_checks_names_before_writing_anything(tmp_path, instance):
    from wtb_dagster.errors import VariantError, WorkflowError

    config = write_toy_registry(tmp_path)
    resources = bench_resources(tmp_path, config)
    with pytest.raises(WorkflowError, match="unknown workflow 'nope'"):
        materialize_workflow("nope", resources, instance, log=lambda _: None)
    with pytest.raises(VariantError, match="no variant 'triple'"):
        materialize_workflow("toy", resources, instance, combos=["b=triple"], log=lambda _: None)
    assert instance.get_dynamic_partitions(workflows_partitions.name) == []
    assert instance.get_runs() == []
