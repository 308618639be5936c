"""Dagster resources of the bench: where workflows, checkpoints and results live, and what runs them."""

from resources.checkpointer import CheckpointerResource
from resources.executor import ExecutorResource
from resources.quality import QualityGates
from resources.ray_cluster import RayClusterByAddress, local_ray
from resources.registry import WorkflowRegistryResource
from resources.results_store import ResultsStoreResource

__all__ = [
    "CheckpointerResource",
    "ExecutorResource",
    "QualityGates",
    "RayClusterByAddress",
    "ResultsStoreResource",
    "WorkflowRegistryResource",
    "local_ray",
]
