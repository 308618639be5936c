"""workflow_registry_sensor adds a partition per registered workflow, once."""

from __future__ import annotations

from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from resources import WorkflowRegistryResource
from sensors.registry import make_workflow_registry_sensor
from tests.dagster_fixtures import write_toy_registry


def test_registry_sensor_adds_new_workflows_once(tmp_path):
    config = write_toy_registry(tmp_path)
    sensor = make_workflow_registry_sensor()
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(
            instance=instance,
            resources={"registry": WorkflowRegistryResource(config_path=str(config))},
        )
        result = sensor(context)
        assert isinstance(result, SensorResult)
        (request,) = result.dynamic_partitions_requests
        assert request.partitions_def_name == "workflows"
        assert list(request.partition_keys) == ["toy"]
        instance.add_dynamic_partitions("workflows", ["toy"])
        again = sensor(context)
        assert isinstance(again, SkipReason)


def test_registry_sensor_skips_with_the_reason_when_the_registry_is_broken(tmp_path):
    (tmp_path / "wtb.yaml").write_text("workflows: [oops]\n")
    sensor = make_workflow_registry_sensor()
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(
            instance=instance,
            resources={
                "registry": WorkflowRegistryResource(config_path=str(tmp_path / "wtb.yaml"))
            },
        )
        result = sensor(context)
        assert isinstance(result, SkipReason)
        assert "cannot load the registry" in result.skip_message
