"""Sensors and schedules of the bench."""

from sensors.node_code_changed import make_node_code_changed_sensor
from sensors.registry import make_workflow_registry_sensor
from sensors.rerun_requests import make_rerun_requests_sensor
from sensors.schedules import make_nightly_regression_schedule

__all__ = [
    "make_nightly_regression_schedule",
    "make_node_code_changed_sensor",
    "make_rerun_requests_sensor",
    "make_workflow_registry_sensor",
]
