"""wtb_dagster: a Workflow Test Bench for LangGraph workflows.

The engine (this package) is plain Python and knows nothing of Dagster; the Dagster code
location in the repository's `assets/`, `resources/` and `sensors/` wires it into Dagster.
"""

from wtb_dagster.errors import (
    ConfigError,
    DatasetError,
    ExecutionError,
    ThreadNotFoundError,
    VariantError,
    WorkflowError,
    WTBError,
)
from wtb_dagster.workspaces import workspace_dir

__all__ = [
    "ConfigError",
    "DatasetError",
    "ExecutionError",
    "ThreadNotFoundError",
    "VariantError",
    "WTBError",
    "WorkflowError",
    "workspace_dir",
]
