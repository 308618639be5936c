"""The workflow registry resource: which `wtb.yaml` the code location serves."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from wtb_dagster.workflows import Registry, Workflow, load_registry


class WorkflowRegistryResource(ConfigurableResource):
    """Loads the workflows declared in a `wtb.yaml` (relative paths from the working directory)."""

    config_path: str = Field(
        default="wtb.yaml", description="Path of the wtb.yaml registry (env: WTB_CONFIG)."
    )

    def load(self) -> Registry:
        return load_registry(self.config_path)

    def get(self, name: str) -> Workflow:
        return self.load().get(name)
