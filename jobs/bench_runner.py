"""The runner behind `wtb bench`: a whole workflow materialized through Dagster, in dependency
order, in this process.

What `wtb bench <workflow>` runs: the same assets, resources and instance the UI uses, so
every step is a Dagster run with its logs, metadata and checks visible in `dagster dev`.
It stands in for the daemon on a machine where nothing runs in the background: it adds the
workflow partition (as `workflow_registry_sensor` would) and the batch runs and comparison
(as `bench_automation` would).
"""

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, materialize

from assets import BENCH_ASSETS
from assets.partitions import batch_key, workflows_partitions


@dataclass
class WholeWorkflowResult:
    """The runs of one whole-workflow materialization and what they reported."""

    workflow: str
    run_ids: list[str] = field(default_factory=list)
    combos: list[str] = field(default_factory=list)
    comparison_markdown: str = ""
    checks: dict[str, bool] = field(default_factory=dict)
    succeeded: bool = True


def materialize_workflow(
    workflow: str,
    resources: Mapping[str, Any],
    instance: DagsterInstance,
    combos: list[str] | None = None,
    batch_config: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
    log_level: str = "INFO",
) -> WholeWorkflowResult:
    """Run test_cases → workflow_definitions → variant_matrix, every combo's batch_runs, then
    comparison_matrix, each as a Dagster run on `instance`.

    >>> materialize_workflow("demo", defs_resources, DagsterInstance.get())
    """
    # Check names before anything is written: an unknown workflow or combo adds no partition.
    registered = resources["registry"].get(workflow)
    chosen = [registered.check_combo(c).key for c in combos] if combos else None
    outcome = WholeWorkflowResult(workflow)
    if not instance.has_dynamic_partition(workflows_partitions.name, workflow):
        instance.add_dynamic_partitions(workflows_partitions.name, [workflow])

    def run(selection: list[str], partition_key: Any, run_config: Mapping[str, Any] | None = None):
        result = materialize(
            BENCH_ASSETS,
            selection=selection,
            partition_key=partition_key,
            instance=instance,
            resources=resources,
            run_config={
                **(run_config or {}),
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
            raise_on_error=False,
        )
        outcome.run_ids.append(result.run_id)
        for evaluation in result.get_asset_check_evaluations():
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            outcome.checks[f"{name}[{partition_key}]"] = evaluation.passed
        if not result.success:
            outcome.succeeded = False
            failure = result.get_run_failure_event()
            message = failure.message if failure else "see the run's logs"
            log(f"run {result.run_id} failed: {message}")
        return result

    log(f"[1/3] {workflow}: test_cases, workflow_definitions, variant_matrix")
    prepared = run(["test_cases", "workflow_definitions", "variant_matrix"], workflow)
    if not prepared.success:
        return outcome
    outcome.combos = chosen or [c.key for c in registered.matrix()]
    config = {"ops": {"batch_runs": {"config": dict(batch_config or {})}}}
    for index, combo in enumerate(outcome.combos, start=1):
        log(f"[2/3] {workflow}: batch_runs {index}/{len(outcome.combos)} [{combo}]")
        run(["batch_runs"], batch_key(workflow, combo), config)
    log(f"[3/3] {workflow}: comparison_matrix")
    compared = run(["comparison_matrix"], workflow)
    if compared.success:
        event = compared.asset_materializations_for_node("comparison_matrix")[0]
        outcome.comparison_markdown = event.metadata["matrix"].value  # type: ignore[union-attr]
    return outcome


def run_whole_workflow(
    workflow: str,
    resources: Mapping[str, Any],
    code_location: Path,
    combos: list[str] | None = None,
    force: bool = False,
) -> int:
    """`wtb bench`: the whole workflow on the instance at DAGSTER_HOME (default ./.dagster_home).

    `resources` are the code location's (`definitions.RESOURCES`); a new DAGSTER_HOME gets the
    `dagster.yaml` of `code_location`.
    """
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = code_location / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and instance_yaml.is_file():
        shutil.copy(instance_yaml, home / "dagster.yaml")
    with DagsterInstance.get() as instance:
        outcome = materialize_workflow(
            workflow,
            resources,
            instance,
            combos=combos,
            batch_config={"force": force},
        )
    print()
    print(outcome.comparison_markdown or "(no comparison: a run failed; see above)")
    print()
    failed_checks = [name for name, passed in outcome.checks.items() if not passed]
    print(
        f"{len(outcome.run_ids)} Dagster runs on {home}; checks: "
        f"{len(outcome.checks) - len(failed_checks)} passed, {len(failed_checks)} failed"
        + (f" ({', '.join(failed_checks)})" if failed_checks else "")
    )
    print(f"Open the UI: DAGSTER_HOME={home} dagster dev -h 127.0.0.1")
    return 0 if outcome.succeeded else 1
