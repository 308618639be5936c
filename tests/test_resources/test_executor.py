"""The executor resource: a dagster-ray `RayResource` says where Ray is; the local executor
never starts Ray; a bad kind is refused."""

from __future__ import annotations

import sys

import pytest
from dagster import DagsterInstance, Definitions, EnvVar, materialize
from dagster_ray import Lifecycle, LocalRay
from dagster_ray.kuberay import KubeRayCluster

from assets import BENCH_ASSETS
from assets.partitions import batch_key, combos_partitions, workflows_partitions
from jobs import ASSET_JOBS
from resources import ExecutorResource, RayClusterByAddress
from tests.dagster_fixtures import bench_resources, write_toy_registry
from wtb_dagster.errors import ConfigError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.ray_execution import RayExecutor


def test_the_default_cluster_is_dagster_rays_local_ray_and_the_driver_connects():
    resource = ExecutorResource()
    assert isinstance(resource.ray, LocalRay)
    assert resource.ray.lifecycle.connect is False  # dagster-ray's connect needs Ray Data
    executor = resource.build()
    assert isinstance(executor, RayExecutor) and executor.address is None  # a local Ray
    assert (executor.num_workers, executor.concurrency_per_worker) == (2, 16)


def test_a_cluster_by_address_gives_the_driver_its_address():
    cluster = RayClusterByAddress(address="ray://head.example:10001")
    assert (cluster.ray_address, cluster.host) == ("ray://head.example:10001", "head.example")
    assert RayClusterByAddress(address="10.0.0.5:6379").host == "10.0.0.5"
    executor = ExecutorResource(ray=cluster, num_workers=8, concurrency_per_worker=4).build()
    assert executor.address == "ray://head.example:10001"  # type: ignore[attr-defined]
    assert (executor.num_workers, executor.concurrency_per_worker) == (8, 4)  # type: ignore[attr-defined]


def test_kuberay_resources_plug_in_without_code_changes(tmp_path):
    # Definitions load with dagster-ray's KubeRay resource as the cluster; nothing contacts
    # Kubernetes before a step runs on it.
    resources = bench_resources(tmp_path, "wtb.yaml")
    resources["executor"] = ExecutorResource(
        kind="ray", ray=KubeRayCluster(lifecycle=Lifecycle(connect=False))
    )
    defs = Definitions(assets=BENCH_ASSETS, jobs=ASSET_JOBS, resources=resources)
    assert defs.resolve_job_def("run_batches").resource_defs["executor"] is not None


def test_the_local_executor_runs_a_batch_without_starting_ray(tmp_path):
    config = write_toy_registry(tmp_path, n_cases=2)
    resources = bench_resources(tmp_path, config)
    assert isinstance(resources["executor"].build(), LocalExecutor)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(workflows_partitions.name, ["toy"])
        instance.add_dynamic_partitions(combos_partitions.name, ["baseline"])
        result = materialize(
            BENCH_ASSETS,
            selection=["batch_runs"],
            partition_key=batch_key("toy", "baseline"),
            instance=instance,
            resources=resources,
        )
    assert result.success
    metadata = result.asset_materializations_for_node("batch_runs")[0].metadata
    assert metadata["executor"].value == "local: 4 threads in the run's process"
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_an_unknown_kind_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setenv("WTB_EXECUTOR", "rayy")
    resource = ExecutorResource(kind=EnvVar("WTB_EXECUTOR"))
    with (
        resource.process_config_and_initialize_cm() as resolved,
        pytest.raises(ConfigError, match="executor kind 'rayy' is unknown; use 'local'"),
    ):
        resolved.build()
