"""The bench's one `Definitions`: the Dagster code location loaded by workspace.yaml.

Settings come from the environment when set (shown as env vars in the launchpad), else the
embedded defaults: SQLite files under WTB_DATA_DIR and a local Ray instance. The Ray cluster
is a dagster-ray resource (`ray_cluster`): put a KubeRay one there for Kubernetes (README,
"Deployments").
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
from dagster_ray import RayResource

from assets import BENCH_ASSETS, batch_runs, comparison_matrix
from jobs import ASSET_JOBS, prepare_workflow_job, rerun_job
from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    RayClusterByAddress,
    ResultsStoreResource,
    WorkflowRegistryResource,
    local_ray,
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


def ray_cluster() -> RayResource:
    """The cluster batches on Ray use: the one at RAY_ADDRESS when that is set, else a Ray
    started in the run's process. For Kubernetes, return a dagster-ray KubeRay resource."""
    if os.environ.get("RAY_ADDRESS"):
        return RayClusterByAddress(address=EnvVar("RAY_ADDRESS"))
    return local_ray()


def executor_resource(**width: int) -> ExecutorResource:
    """This code location's executor; `width` (`max_concurrency`, `num_workers`,
    `concurrency_per_worker`) is what `wtb bench --concurrency/--workers` sets."""
    return ExecutorResource(kind=_env_or("WTB_EXECUTOR", "ray"), ray=ray_cluster(), **width)


RESOURCES = {
    "registry": WorkflowRegistryResource(config_path=_env_or("WTB_CONFIG", "wtb.yaml")),
    "checkpointer": CheckpointerResource(
        url=_env_or("WTB_CHECKPOINT_URL", settings.checkpoint_url())
    ),
    "results": ResultsStoreResource(url=_env_or("WTB_RESULTS_URL", settings.results_url())),
    "executor": executor_resource(),
    "quality": QualityGates(),
}

defs = Definitions(
    assets=BENCH_ASSETS,
    jobs=[*ASSET_JOBS, rerun_job],
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
