"""The runner behind `wtb bench`: a whole workflow as runs of the code location's named jobs."""

from __future__ import annotations

from collections import Counter

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, Definitions
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from assets import BENCH_ASSETS
from assets.partitions import batch_key, combos_partitions, workflows_partitions
from jobs import ASSET_JOBS
from jobs.bench_runner import (
    COMBO_TAG,
    WORKFLOW_TAG,
    RunFailed,
    combo_ranges,
    materialize_workflow,
)
from tests.dagster_fixtures import bench_resources, write_toy_registry
from wtb_dagster.store import ResultsStore


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


def bench_defs(resources) -> Definitions:
    return Definitions(assets=BENCH_ASSETS, jobs=ASSET_JOBS, resources=resources)


def test_whole_demo_runs_as_the_named_jobs_one_batch_run_over_every_combo(tmp_path, instance):
    defs = bench_defs(bench_resources(tmp_path, "wtb.yaml"))  # the repository's registry
    outcome = materialize_workflow("demo", defs, instance, log=lambda _: None)
    assert len(outcome.combos) == 18  # router 2 × retrieve 3 × generate 3
    runs = instance.get_runs()
    assert {run.run_id for run in runs} == set(outcome.run_ids)
    assert all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    assert Counter(run.job_name for run in runs) == {
        "prepare_workflow": 1,
        "run_batches": 1,
        "compare_workflow": 1,
    }
    assert {run.tags[WORKFLOW_TAG] for run in runs} == {"demo"}
    (batches,) = [run for run in runs if run.job_name == "run_batches"]
    # a partition range, as a single-run backfill makes it: the demo's 18 combos in a row
    combos = instance.get_dynamic_partitions(combos_partitions.name)
    assert batches.tags[ASSET_PARTITION_RANGE_START_TAG] == str(batch_key("demo", combos[0]))
    assert batches.tags[ASSET_PARTITION_RANGE_END_TAG] == str(batch_key("demo", combos[-1]))
    assert all(COMBO_TAG not in run.tags for run in runs)  # no run has one combo

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
    # each combo's checks sit beside its own partition
    assert Counter(c.partition for c in batch_checks) == {
        str(batch_key("demo", combo)): 2 for combo in outcome.combos
    }
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


def test_chosen_combos_run_as_few_partition_ranges_as_their_order_allows_baseline_first():
    partitions = [
        "baseline",
        "a=1",
        "other=x",
        "a=2",
        "a=1+b=1",
        "b=1",
    ]  # other=x: another workflow's
    assert combo_ranges(["a=1", "baseline", "a=2", "b=1", "a=1+b=1"], partitions) == [
        ["baseline", "a=1"],
        ["a=2", "a=1+b=1", "b=1"],
    ]
    assert combo_ranges(["a=1+b=1", "a=1"], partitions) == [["a=1"], ["a=1+b=1"]]
    assert combo_ranges(["b=1", "a=2", "baseline"], partitions) == [["baseline"], ["a=2"], ["b=1"]]


def test_a_chosen_combo_runs_alone_tagged_with_its_combo(tmp_path, instance):
    defs = bench_defs(bench_resources(tmp_path, write_toy_registry(tmp_path, n_cases=2)))
    outcome = materialize_workflow("toy", defs, instance, combos=["b=double"], log=lambda _: None)
    (batch,) = [run for run in instance.get_runs() if run.job_name == "run_batches"]
    assert batch.tags[COMBO_TAG] == batch.tags["dagster/partition/combo"] == "b=double"
    assert {c.partition for c in outcome.checks if c.name.startswith("batch_runs:")} == {
        "b=double|toy"
    }
