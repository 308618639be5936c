"""Sensors and schedules of the bench."""

from sensors.registry import make_workflow_registry_sensor
from sensors.schedules import make_nightly_regression_schedule

__all__ = ["make_nightly_regression_schedule", "make_workflow_registry_sensor"]
