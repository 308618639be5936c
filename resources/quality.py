"""Thresholds of the asset checks, set per deployment from the launchpad or definitions."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field


class QualityGates(ConfigurableResource):
    """What the checks on `batch_runs` and `comparison_matrix` enforce."""

    max_failure_rate: float = Field(
        default=0.1, description="Largest share of failed or timed-out threads a combo may have."
    )
    regression_tolerance: float = Field(
        default=0.05,
        description="How far below the baseline's mean a combo's mean may fall before it counts "
        "as a regression (absolute, on the metric's scale).",
    )
    metric: str | None = Field(
        default=None,
        description="Metric the regression check compares; default: the workflow's first scorer "
        "metric in alphabetical order (the comparison's primary metric).",
    )
