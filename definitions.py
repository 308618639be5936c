"""The bench's one `Definitions`: the Dagster code location loaded by workspace.yaml.

Settings come from the environment when set (shown as env vars in the launchpad), else the
embedded defaults: SQLite files under WTB_DATA_DIR and a local Ray instance.
"""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    EnvVar,
)

from assets import BENCH_ASSETS, batch_runs, comparison_matrix
from jobs import batch_runs_job, compare_job, prepare_workflow_job, rerun_job
from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    ResultsStoreResource,
    WorkflowRegistryResource,
)
from sensors import (
    make_nightly_regression_schedule,
    make_node_code_changed_sensor,
    make_rerun_requests_sensor,
    make_workflow_registry_sensor,
)
from wtb_dagster import settings


def _env_or(name: str, default: object) -> object:
    """`EnvVar(name)` when the variable is set (secrets stay out of run config), else the default."""
    return EnvVar(name) if os.environ.get(name) else default


RESOURCES = {
    "registry": WorkflowRegistryResource(config_path=_env_or("WTB_CONFIG", "wtb.yaml")),
    "checkpointer": CheckpointerResource(
        url=_env_or("WTB_CHECKPOINT_URL", settings.checkpoint_url())
    ),
    "results": ResultsStoreResource(url=_env_or("WTB_RESULTS_URL", settings.results_url())),
    "executor": ExecutorResource(
        kind=_env_or("WTB_EXECUTOR", "ray"), ray_address=_env_or("RAY_ADDRESS", None)
    ),
    "quality": QualityGates(),
}

defs = Definitions(
    assets=BENCH_ASSETS,
    jobs=[prepare_workflow_job, batch_runs_job, compare_job, rerun_job],
    schedules=[make_nightly_regression_schedule(prepare_workflow_job)],
    sensors=[
        make_workflow_registry_sensor(),
        make_rerun_requests_sensor(rerun_job),
        make_node_code_changed_sensor(),
        AutomationConditionSensorDefinition(
            "bench_automation",
            target=AssetSelection.assets(batch_runs, comparison_matrix),
            default_status=DefaultSensorStatus.RUNNING,
            description="Runs batch_runs after variant_matrix, comparison_matrix after batch_runs.",
        ),
    ],
    resources=RESOURCES,
)
