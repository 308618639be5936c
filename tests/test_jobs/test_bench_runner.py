"""The runner behind `wtb bench`: a whole workflow as runs of the code location's named jobs."""

from __future__ import annotations

from collections import Counter

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, Definitions

from assets import BENCH_ASSETS
from assets.partitions import batch_key, combos_partitions, workflows_partitions
from jobs import ASSET_JOBS
from jobs.bench_runner import COMBO_TAG, WORKFLOW_TAG, RunFailed, materialize_workflow
from tests.dagster_fixtures import bench_resources, write_toy_registry
from wtb_dagster.store import ResultsStore


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


def bench_defs(resources) -> Definitions:
    return Definitions(assets=BENCH_ASSETS, jobs=ASSET_JOBS, resources=resources)


def test_whole_demo_runs_as_the_named_jobs_tagged_by_workflow_and_combo(tmp_path, instance):
    defs = bench_defs(bench_resources(tmp_path, "wtb.yaml"))  # the repository's registry
    outcome = materialize_workflow("demo", defs, instance, log=lambda _: None)
    assert len(outcome.combos) == 18  # router 2 × retrieve 3 × generate 3
    runs = instance.get_runs()
    assert {run.run_id for run in runs} == set(outcome.run_ids)
    assert all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    assert Counter(run.job_name for run in runs) == {
        "prepare_workflow": 1,
        "run_batches": 18,
        "compare_workflow": 1,
    }
    assert {run.tags[WORKFLOW_TAG] for run in runs} == {"demo"}
    batches = [run for run in runs if run.job_name == "run_batches"]
    assert sorted(run.tags[COMBO_TAG] for run in batches) == sorted(outcome.combos)
    for run in batches:  # the tag and Dagster's own partition tag name the same combo
        assert run.tags["dagster/partition/combo"] == run.tags[COMBO_TAG]
    assert all(COMBO_TAG not in run.tags for run in runs if run.job_name != "run_batches")

    assert set(instance.get_dynamic_partitions(combos_partitions.name)) == set(outcome.combos)
    materialized = instance.get_materialized_partitions(AssetKey("batch_runs"))
    assert materialized == {str(batch_key("demo", combo)) for combo in outcome.combos}
    for combo in outcome.combos:  # the printed report: every combo is a row
        assert f"| {combo} | 57 |" in outcome.comparison_markdown
    metadata = instance.get_latest_materialization_event(
        AssetKey("comparison_matrix")
    ).asset_materialization.metadata
    assert metadata["combos"].value == 18
    assert metadata["costs"].value.records  # the simulated_llm combos used tokens
    assert metadata["best_combo"].value == "retrieve=bm25"
    summary = metadata["summary"].value
    assert summary.records[0].data["combo"] == "retrieve=bm25"  # best first
    assert metadata["plot"].value.startswith("![comparison](data:image/png;base64,")
    assert ResultsStore(f"sqlite:///{tmp_path}/results.db").count("demo") == 18 * 57
    batch_checks = [c for c in outcome.checks if c.name.startswith("batch_runs:")]
    assert len(batch_checks) == 36 and all(c.passed for c in batch_checks)
    assert {c.partition for c in outcome.checks if "regression" in c.name} == {"demo"}


def test_whole_workflow_checks_names_before_writing_anything(tmp_path, instance):
    from wtb_dagster.errors import VariantError, WorkflowError

    defs = bench_defs(bench_resources(tmp_path, write_toy_registry(tmp_path)))
    with pytest.raises(WorkflowError, match="unknown workflow 'nope'"):
        materialize_workflow("nope", defs, instance, log=lambda _: None)
    with pytest.raises(VariantError, match="no variant 'triple'"):
        materialize_workflow("toy", defs, instance, combos=["b=triple"], log=lambda _: None)
    assert instance.get_dynamic_partitions(workflows_partitions.name) == []
    assert instance.get_runs() == []


def test_a_failed_run_stops_the_bench_naming_the_run_and_its_error(tmp_path, instance):
    config = write_toy_registry(tmp_path, n_cases=2)
    with (tmp_path / "cases.jsonl").open("a") as handle:
        handle.write('{"id": "c9", "input": \n')  # line 3: not JSON
    defs = bench_defs(bench_resources(tmp_path, config))
    with pytest.raises(RunFailed) as failed:
        materialize_workflow("toy", defs, instance, log=lambda _: None)
    (run,) = instance.get_runs()  # nothing ran after the failed prepare_workflow
    assert run.job_name == "prepare_workflow" and run.status == DagsterRunStatus.FAILURE
    assert failed.value.run_id == run.run_id
    assert failed.value.reason.startswith(f"{tmp_path}/cases.jsonl:3: not valid JSON")
    assert str(failed.value).startswith(f"run {run.run_id} (prepare_workflow [toy]) failed: ")
    assert "Traceback" not in str(failed.value) and "\n" not in str(failed.value)
