"""The asset graph materialized in-process on an ephemeral instance, with real SQLite stores."""

from __future__ import annotations

import importlib
import sys
import textwrap
import time

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, materialize

from assets import BENCH_ASSETS
from assets.partitions import batch_key, workflows_partitions
from tests import toy_graphs
from tests.dagster_fixtures import bench_resources, write_toy_registry
from wtb_dagster.store import ResultsStore


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


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
    assert "c0" in [r.data["case"] for r in metadata["bottom_cases"].value.records]
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


def _batch(instance, resources, combo="baseline", cases=None):
    run_config = {"ops": {"batch_runs": {"config": {"cases": cases}}}} if cases else None
    result = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        partition_key=batch_key("toy", combo),
        instance=instance,
        resources=resources,
        run_config=run_config,
    )
    assert result.success
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _write_cases(tmp_path, ids):
    with (tmp_path / "cases.jsonl").open("w") as handle:
        for case_id in ids:
            handle.write(f'{{"id": "{case_id}", "input": {{"x": 1}}}}\n')


def test_every_case_ran_compares_case_ids_not_counts(tmp_path, instance):
    config = write_toy_registry(tmp_path, n_cases=4)  # c0 … c3
    resources, _ = _prepare(instance, tmp_path, config)
    assert _batch(instance, resources)["every_case_ran"].passed is True
    # c0 and c1 leave the dataset, c4 and c5 join: as many cases as stored threads (4), and
    # after running only c4 there are even more (5), yet c5 has never run
    _write_cases(tmp_path, ["c2", "c3", "c4", "c5"])
    check = _batch(instance, resources, cases=["c4"])["every_case_ran"]
    assert check.passed is False
    assert check.metadata["missing_case_ids"].value == ["c5"]
    assert check.metadata["missing"].value == 1
    assert check.metadata["stored_not_in_dataset"].value == 2
    assert check.metadata["stale_only_older_code"].value == 0
    assert check.description.startswith("1 of 4 cases have no thread under code ")
    assert check.description.endswith(": c5")
    # running the rest makes it pass; the threads of c0 and c1 are still stored
    check = _batch(instance, resources)["every_case_ran"]
    assert check.passed is True and check.metadata["stored_not_in_dataset"].value == 2
    assert ResultsStore(f"sqlite:///{tmp_path}/results.db").count("toy") == 6


def test_every_case_ran_does_not_count_threads_stored_under_older_code(
    tmp_path, instance, monkeypatch
):
    module = tmp_path / "wtb_stale_mod.py"
    module.write_text("def better_b(state):\n    return {'x': state['x'] + 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_toy_registry(tmp_path, n_cases=3)
    config.write_text(
        config.read_text().replace(
            "double: tests.toy_graphs:node_b_double", "better: wtb_stale_mod:better_b"
        )
    )
    resources, _ = _prepare(instance, tmp_path, config)
    assert _batch(instance, resources, combo="b=better")["every_case_ran"].passed is True
    module.write_text("def better_b(state):\n    return {'x': state['x'] + 2}  # changed\n")
    sys.modules.pop("wtb_stale_mod", None)
    importlib.invalidate_caches()
    check = _batch(instance, resources, combo="b=better", cases=["c0"])["every_case_ran"]
    assert check.passed is False  # three stored threads, but c1 and c2 ran the old code
    assert check.metadata["missing_case_ids"].value == ["c1", "c2"]
    assert check.metadata["stale_only_older_code"].value == 2
    assert check.description.endswith(": c1, c2; 2 of them only under older code")
    # the baseline combo does not run better_b: its threads are not stale
    assert _batch(instance, resources)["every_case_ran"].passed is True


def test_every_case_ran_lists_at_most_twenty_missing_ids(tmp_path, instance):
    config = write_toy_registry(tmp_path, n_cases=1)
    resources, _ = _prepare(instance, tmp_path, config)
    _write_cases(tmp_path, [f"k{i:02d}" for i in range(25)])
    check = _batch(instance, resources, cases=["k00"])["every_case_ran"]
    assert check.passed is False
    assert check.metadata["missing"].value == 24
    assert check.metadata["missing_case_ids"].value == [f"k{i:02d}" for i in range(1, 21)]
    assert check.description.endswith("k20 … (+4)")


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
    # b=double gives wrong answers: exact_match 0 on every case; with 6 cases McNemar's exact
    # test can tell that apart from chance (p = 2/2**6), with 4 it could not (p = 0.125)
    config = write_toy_registry(tmp_path, n_cases=6)
    resources, _ = _prepare(instance, tmp_path, config, regression_tolerance=0.05)
    (check,) = _run_combos_and_compare(instance, resources).get_asset_check_evaluations()
    assert check.check_name == "no_regression_vs_baseline"
    assert check.passed is False
    assert check.partition == "toy"  # beside the workflow's comparison, not "—"
    regressed = check.metadata["regressed"].value
    assert list(regressed) == ["b=double"]
    assert regressed["b=double"]["delta"] == -1.0
    assert regressed["b=double"]["p_adjusted"] == round(2 / 2**6, 6)
    table = check.metadata["regressed_table"].value
    assert [c.name for c in table.schema.columns] == [
        "combo", "n_pairs", "delta", "ci_low", "ci_high", "test", "p_value", "p_adjusted"
    ]  # fmt: skip
    assert [r.data["combo"] for r in table.records] == ["b=double"]
    assert table.records[0].data["n_pairs"] == 6 and table.records[0].data["ci_high"] == -1.0
    assert check.description.startswith("1 combo(s) significantly worse than baseline")
    assert "b=double Δ -1.000" in check.description
    # the instance keeps the evaluation under the workflow's partition
    (record,) = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey("comparison_matrix"), "no_regression_vs_baseline"), limit=5
    )
    assert record.event.dagster_event.event_specific_data.partition == "toy"


def test_comparison_metadata_is_tables_with_one_row_per_combo_and_described_columns(
    tmp_path, instance
):
    config = write_toy_registry(tmp_path, n_cases=6)
    resources, _ = _prepare(instance, tmp_path, config)
    result = _run_combos_and_compare(instance, resources)
    metadata = result.asset_materializations_for_node("comparison_matrix")[0].metadata
    summary = metadata["summary"].value
    assert [c.name for c in summary.schema.columns] == [
        "combo", "vs_baseline", "exact_match", "exact_match_ci95", "n", "failures",
        "interrupted", "threads", "p50_latency_s", "p95_latency_s",
    ]  # fmt: skip
    assert all(c.description for c in summary.schema.columns)
    rows = {r.data["combo"]: r.data for r in summary.records}
    assert list(rows) == ["baseline", "b=double"]  # one row per combo, best first
    assert rows["baseline"]["vs_baseline"] == "baseline"
    assert rows["b=double"]["vs_baseline"] == "worse"
    assert rows["b=double"]["exact_match"] == 0.0 and rows["baseline"]["exact_match"] == 1.0
    assert rows["baseline"]["n"] == 6 and rows["baseline"]["failures"] == 0
    deltas = metadata["deltas"].value
    assert [c.name for c in deltas.schema.columns] == [
        "combo", "reference", "metric", "n_pairs", "delta", "ci_low", "ci_high", "test",
        "p_value", "p_adjusted", "significant", "effect_size", "effect_size_kind", "mde",
        "verdict",
    ]  # fmt: skip
    (delta,) = (r.data for r in deltas.records)
    assert delta["combo"] == "b=double" and delta["verdict"] == "worse"
    assert delta["significant"] is True and delta["test"] == "mcnemar_exact"
    assert delta["mde"] is None  # no spread in the differences: NaN is shown empty, not NaN
    per_case = metadata["per_case"].value
    assert [r.data["case_id"] for r in per_case.records] == [f"c{i}" for i in range(6)]
    assert per_case.records[0].data == {"case_id": "c0", "baseline": 1.0, "b=double": 0.0}


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
    assert "| baseline ⑂ patch{x} | 1 |" in metadata["matrix"].value
    assert "| baseline | 2 |" in metadata["matrix"].value


def test_batch_and_comparison_metadata_show_tokens_cost_and_the_pareto_plot(tmp_path, instance):
    from tests.dagster_fixtures import TOY_YAML

    config = write_toy_registry(tmp_path)
    config.write_text(
        TOY_YAML.replace(
            "        double: tests.toy_graphs:node_b_double\n",
            "        double: tests.toy_graphs:node_b_double\n"
            "        llm: tests.test_engine.test_usage:ask_big_twice\n",
        )
        + "prices:\n  big: {input_per_1m: 10, output_per_1m: 40}\n"
    )
    resources, _ = _prepare(instance, tmp_path, config)
    batch = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        partition_key=batch_key("toy", "b=llm"),
        instance=instance,
        resources=resources,
    )
    metadata = batch.asset_materializations_for_node("batch_runs")[0].metadata
    # 4 threads × two calls of 100 in / 20 out, at 10 and 40 USD per million
    assert metadata["tokens_in"].value == 800 and metadata["tokens_out"].value == 160
    assert metadata["cost_usd"].value == "0.0144"
    assert metadata["cost_per_case_usd"].value == "0.003600"
    assert set(metadata["node_latency_s"].value) == {"a", "b", "c"}
    result = _run_combos_and_compare(instance, resources, combos=("baseline",))
    compared = result.asset_materializations_for_node("comparison_matrix")[0].metadata
    rows = {r.data["combo"]: r.data for r in compared["costs"].value.records}
    assert rows["b=llm"]["cost_total_usd"] == 0.0144 and rows["baseline"]["cost_total_usd"] == 0
    assert rows["baseline"]["pareto"] is True  # free, and as good: b=llm is dominated
    assert rows["b=llm"]["pareto"] is False
    assert compared["cost_plot"].value.startswith("![comparison](data:image/png;base64,")
    assert "### Tokens and cost" in compared["matrix"].value


def test_a_combo_partition_shares_prefixes_with_the_partitions_stored_before_it(tmp_path, instance):
    config = write_toy_registry(tmp_path)
    resources, _ = _prepare(instance, tmp_path, config)
    _batch(instance, resources, "baseline")
    toy_graphs.CALLS.clear()
    _batch(instance, resources, "b=double")
    assert toy_graphs.CALLS == {"b_double": 4, "c": 4}  # a came from the baseline's threads
    store = ResultsStore(f"sqlite:///{tmp_path}/results.db")
    row = store.get_result("toy/b=double/c2")
    assert row["shared_from"] == "toy/baseline/c2" and row["nodes_executed"] == 2
    store.close()
    events = instance.fetch_materializations(AssetKey("batch_runs"), limit=1).records
    metadata = events[0].asset_materialization.metadata
    assert metadata["shared_prefix_threads"].value == 4
    assert metadata["node_executions"].value == 8

    # forced, each partition runs anew; with the time of the whole bench, the second may
    # still start from the first's fresh threads (what `wtb bench --force` passes)
    toy_graphs.CALLS.clear()
    since = time.time()
    for combo in ("baseline", "b=double"):
        result = materialize(
            BENCH_ASSETS,
            selection=["batch_runs"],
            partition_key=batch_key("toy", combo),
            instance=instance,
            resources=resources,
            run_config={"ops": {"batch_runs": {"config": {"force": True, "forced_since": since}}}},
        )
        assert result.success
    assert toy_graphs.CALLS == {"a": 4, "b": 4, "b_double": 4, "c": 8}


def _range_tags(instance, workflow, combos):
    """The tags of one run over `combos` of `workflow` (a backfill's single run), in the
    order of the instance's combo partitions."""
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    ordered = [c for c in instance.get_dynamic_partitions("combos") if c in combos]
    return {
        ASSET_PARTITION_RANGE_START_TAG: str(batch_key(workflow, ordered[0])),
        ASSET_PARTITION_RANGE_END_TAG: str(batch_key(workflow, ordered[-1])),
    }


def test_one_run_over_several_combos_materializes_each_partition_with_its_own_metadata_and_checks(
    tmp_path, instance
):
    from dagster import AssetRecordsFilter

    config = write_toy_registry(tmp_path, n_cases=3)
    with (tmp_path / "cases.jsonl").open("a") as handle:  # fails in node b: the baseline only
        handle.write('{"id": "boom", "input": {"x": 1, "fail_at": "b"}}\n')
    resources, _ = _prepare(instance, tmp_path, config, max_failure_rate=0.1)
    toy_graphs.CALLS.clear()
    result = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        instance=instance,
        resources=resources,
        tags=_range_tags(instance, "toy", ["baseline", "b=double"]),
    )
    assert result.success
    assert len(instance.get_runs()) == 2  # prepare, and one run for both batches
    # one batch: b=double's threads started from the baseline's checkpoints after node a,
    # but for the case whose baseline thread failed (a failed thread lends no prefix)
    assert toy_graphs.CALLS["a"] == 4 + 1
    metadata = {}
    for combo in ("baseline", "b=double"):
        (record,) = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("batch_runs"), asset_partitions=[
                str(batch_key("toy", combo))]), limit=5,
        ).records  # fmt: skip
        metadata[combo] = record.asset_materialization.metadata
    assert metadata["baseline"]["statuses"].value == {"succeeded": 3, "failed": 1}
    assert metadata["b=double"]["statuses"].value == {"succeeded": 4}
    assert metadata["baseline"]["mean_exact_match"].value == 0.75
    assert metadata["b=double"]["mean_exact_match"].value == 0.0
    assert metadata["baseline"]["shared_prefix_threads"].value == 0
    assert metadata["b=double"]["shared_prefix_threads"].value == 3
    for combo in ("baseline", "b=double"):
        assert metadata[combo]["threads"].value == 4
        assert metadata[combo]["executed_now"].value == 4
        assert metadata[combo]["batch_combos"].value == 2
    checks = {(e.partition, e.check_name): e for e in result.get_asset_check_evaluations()}
    assert {name: e.passed for name, e in checks.items()} == {
        ("b=double|toy", "every_case_ran"): True,
        ("b=double|toy", "failure_rate_under_threshold"): True,
        ("baseline|toy", "every_case_ran"): True,
        ("baseline|toy", "failure_rate_under_threshold"): False,  # 1 of 4 failed > 0.1
    }
    assert (
        checks["baseline|toy", "failure_rate_under_threshold"].metadata["failure_rate"].value
        == 0.25
    )
    # each evaluation is stored under its partition, against that partition's materialization
    for combo in ("baseline", "b=double"):
        (latest,) = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("batch_runs"), asset_partitions=[
                str(batch_key("toy", combo))]), limit=1,
        ).records  # fmt: skip
        evaluation = checks[f"{combo}|toy", "failure_rate_under_threshold"]
        assert evaluation.target_materialization_data.storage_id == latest.storage_id
    assert {
        r.event.dagster_event.event_specific_data.partition
        for r in instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey("batch_runs"), "failure_rate_under_threshold"), limit=5
        )
    } == {"baseline|toy", "b=double|toy"}


def test_a_run_over_several_combos_refuses_a_stale_one_before_running_any(tmp_path, instance):
    config = write_toy_registry(tmp_path)
    resources, _ = _prepare(instance, tmp_path, config)
    config.write_text(config.read_text().replace("double: tests.toy_graphs:node_b_double", "{}"))
    config.write_text(config.read_text().replace("      b:\n        {}\n", ""))
    toy_graphs.CALLS.clear()
    result = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        instance=instance,
        resources=resources,
        tags=_range_tags(instance, "toy", ["baseline", "b=double"]),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "combo 'b=double' is not in the variant matrix of workflow 'toy'" in str(
        failure.step_failure_data.user_failure_data.description
    )
    assert sum(toy_graphs.CALLS.values()) == 0
    assert instance.get_materialized_partitions(AssetKey("batch_runs")) == set()


def test_batch_metadata_counts_the_workspace_files_written(tmp_path, instance, monkeypatch):
    monkeypatch.setenv("WTB_BLOB_URL", str(tmp_path / "blobs"))
    config = tmp_path / "wtb.yaml"
    config.write_text(
        "workflows:\n  toy:\n    graph: tests.file_graphs:build_file_graph\n"
        "    dataset: cases.jsonl\n    workspace: true\n"
    )
    (tmp_path / "cases.jsonl").write_text(
        "".join(f'{{"id": "c{i}", "input": {{"tag": "c{i}"}}}}\n' for i in range(3))
    )
    resources, _ = _prepare(instance, tmp_path, config)
    result = materialize(
        BENCH_ASSETS,
        selection=["batch_runs"],
        partition_key=batch_key("toy", "baseline"),
        instance=instance,
        resources=resources,
    )
    assert result.success
    metadata = result.asset_materializations_for_node("batch_runs")[0].metadata
    assert metadata["files_written"].value == 3 * 7  # a: 4 files, b: 2, c: 1 per thread
    assert 0 < metadata["bytes_new_in_blob_store"].value < metadata["bytes_written"].value
