"""The asset graph materialized in-process on an ephemeral instance, with real SQLite stores."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
from dagster import DagsterInstance, materialize

from assets import BENCH_ASSETS
from assets.partitions import batch_key, combos_partitions, workflows_partitions
from assets.whole_workflow import materialize_workflow
from tests import toy_graphs
from tests.dagster_fixtures import bench_resources, write_toy_registry
from wtb_dagster.store import ResultsStore


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


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


def batch_runs_key():
    from dagster import AssetKey

    return AssetKey("batch_runs")


def comparison_key():
    from dagster import AssetKey

    return AssetKey("comparison_matrix")


def _prepare(instance, tmp_path, config_path, **quality):
    instance.add_dynamic_partitions(workflows_partitions.name, ["toy"])
    resources = bench_resources(tmp_path, config_path, **quality)
    result = materialize(
        BENCH_ASSETS,
        selection=["test_cases", "workflow_definitions", "variant_matrix"],
        partition_key="toy",
        instance=instance,
        resources=resources,
    )
    assert result.success
    return resources, result


def test_variant_matrix_adds_combo_partitions_and_marks_removed_combos_stale(tmp_path, instance):
    config = write_toy_registry(tmp_path)
    resources, _ = _prepare(instance, tmp_path, config)
    assert set(instance.get_dynamic_partitions("combos")) == {"baseline", "b=double"}
    for combo in ("baseline", "b=double"):
        result = materialize(
            BENCH_ASSETS,
            selection=["batch_runs"],
            partition_key=batch_key("toy", combo),
            instance=instance,
            resources=resources,
        )
        assert result.success
    # the variant disappears from the registry: its partition and history stay, marked stale
    config.write_text(config.read_text().replace("double: tests.toy_graphs:node_b_double", "{}"))
    config.write_text(config.read_text().replace("      b:\n        {}\n", ""))
    _, result = _prepare(instance, tmp_path, config)
    metadata = result.asset_materializations_for_node("variant_matrix")[0].metadata
    assert metadata["stale_combos"].value == ["b=double"]
    assert "b=double" in instance.get_dynamic_partitions("combos")
    assert ResultsStore(f"sqlite:///{tmp_path}/results.db").count("toy") == 8
    stale = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        partition_key=batch_key("toy", "b=double"),
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not stale.success
    assert "not in the variant matrix" in stale.get_run_failure_event().message or any(
        "not in the variant matrix" in str(e.event_specific_data)
        for e in stale.all_events
        if e.is_step_failure
    )


def test_batch_runs_metadata_and_checks(tmp_path, instance):
    config = write_toy_registry(tmp_path, n_cases=5)
    resources, _ = _prepare(instance, tmp_path, config)
    result = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        partition_key=batch_key("toy", "baseline"),
        instance=instance,
        resources=resources,
    )
    metadata = result.asset_materializations_for_node("batch_runs")[0].metadata
    assert metadata["threads"].value == 5
    assert metadata["executed_now"].value == 5
    assert metadata["mean_exact_match"].value == 1.0
    assert "| c0 |" in metadata["bottom_cases"].value
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"every_case_ran": True, "failure_rate_under_threshold": True}
    # materializing again executes nothing and writes no new rows
    toy_graphs.CALLS.clear()
    again = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        partition_key=batch_key("toy", "baseline"),
        instance=instance,
        resources=resources,
    )
    metadata = again.asset_materializations_for_node("batch_runs")[0].metadata
    assert metadata["executed_now"].value == 0 and metadata["skipped_already_stored"].value == 5
    assert sum(toy_graphs.CALLS.values()) == 0


def test_failure_rate_check_fails_when_cases_fail(tmp_path, instance):
    config = write_toy_registry(tmp_path, n_cases=3)
    with (tmp_path / "cases.jsonl").open("a") as handle:
        handle.write('{"id": "boom", "input": {"x": 1, "fail_at": "c"}}\n')
    resources, _ = _prepare(instance, tmp_path, config, max_failure_rate=0.1)
    result = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        partition_key=batch_key("toy", "baseline"),
        instance=instance,
        resources=resources,
    )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["failure_rate_under_threshold"].passed is False
    assert checks["failure_rate_under_threshold"].metadata["failure_rate"].value == 0.25
    assert checks["every_case_ran"].passed is True


def _run_combos_and_compare(instance, resources, combos=("baseline", "b=double")):
    for combo in combos:
        materialize(
            BENCH_ASSETS,
            selection=["batch_runs"],
            partition_key=batch_key("toy", combo),
            instance=instance,
            resources=resources,
        )
    return materialize(
        BENCH_ASSETS,
        selection=["comparison_matrix"],
        partition_key="toy",
        instance=instance,
        resources=resources,
    )


def test_regression_check_fails_for_a_combo_made_worse_on_purpose(tmp_path, instance):
    config = write_toy_registry(tmp_path)  # b=double gives wrong answers: exact_match 0
    resources, _ = _prepare(instance, tmp_path, config, regression_tolerance=0.05)
    (check,) = _run_combos_and_compare(instance, resources).get_asset_check_evaluations()
    assert check.check_name == "no_regression_vs_baseline"
    assert check.passed is False
    assert check.metadata["regressed"].value == {"b=double": 0.0}


def test_regression_check_passes_when_no_combo_is_worse(tmp_path, instance):
    config = write_toy_registry(tmp_path)
    config.write_text(
        config.read_text().replace("tests.toy_graphs:node_b_double", "tests.toy_graphs:node_b")
    )
    resources, _ = _prepare(instance, tmp_path, config)
    (check,) = _run_combos_and_compare(instance, resources).get_asset_check_evaluations()
    assert check.passed is True


def test_changing_a_variants_code_changes_its_nodes_code_version(tmp_path, instance, monkeypatch):
    module = tmp_path / "wtb_variant_mod.py"
    module.write_text("def better_b(state):\n    return {'x': state['x'] + 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_toy_registry(
        tmp_path,
        extra_yaml="",
    )
    config.write_text(
        config.read_text().replace(
            "double: tests.toy_graphs:node_b_double", "better: wtb_variant_mod:better_b"
        )
    )

    def versions():
        sys.modules.pop("wtb_variant_mod", None)
        importlib.invalidate_caches()
        _, result = _prepare(instance, tmp_path, config)
        metadata = result.asset_materializations_for_node("workflow_definitions")[0].metadata
        data_version = result.asset_materializations_for_node("workflow_definitions")[0].tags[
            "dagster/data_version"
        ]
        return metadata["code_versions"].value, data_version

    before, version_before = versions()
    module.write_text(
        textwrap.dedent(
            """\
            def better_b(state):
                return {'x': state['x'] + 2}  # changed
            """
        )
    )
    after, version_after = versions()
    assert after["b"]["better"] != before["b"]["better"]
    assert after["b"]["baseline"] == before["b"]["baseline"]
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert version_after != version_before


def test_unknown_workflow_partition_fails_with_the_registry_message(tmp_path, instance):
    config = write_toy_registry(tmp_path)
    instance.add_dynamic_partitions(workflows_partitions.name, ["nope"])
    result = materialize(
        BENCH_ASSETS,
        selection=["test_cases"],
        partition_key="nope",
        instance=instance,
        resources=bench_resources(tmp_path, config),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "unknown workflow 'nope'; registered: toy" in str(failure.event_specific_data.error)


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


def test_comparison_shows_forks_beside_their_originals_when_asked(tmp_path, instance):
    from wtb_dagster.api import Bench
    from wtb_dagster.execution import LocalExecutor

    config = write_toy_registry(tmp_path, n_cases=2)
    resources, _ = _prepare(instance, tmp_path, config)
    _run_combos_and_compare(instance, resources, combos=("baseline",))
    bench = Bench(
        config, f"sqlite:///{tmp_path}/checkpoints.db", f"sqlite:///{tmp_path}/results.db",
        LocalExecutor(2),
    )  # fmt: skip
    fork = bench.fork("toy/baseline/c0", before_node="c", state_patch={"x": 0})
    assert fork.status == "succeeded"
    result = materialize(
        BENCH_ASSETS,
        selection=["comparison_matrix"],
        partition_key="toy",
        instance=instance,
        resources=resources,
        run_config={"ops": {"comparison_matrix": {"config": {"include_forks": True}}}},
    )
    metadata = result.asset_materializations_for_node("comparison_matrix")[0].metadata
    assert metadata["forks"].value == 1
    assert f"| baseline (fork {fork.lineage[5:]}) | 1 |" in metadata["matrix"].value
    assert "| baseline | 2 |" in metadata["matrix"].value
