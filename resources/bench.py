"""One engine `Bench` from the Dagster resources, for the ops and sensors that need it."""

from __future__ import annotations

from resources.checkpointer import CheckpointerResource
from resources.executor import ExecutorResource
from resources.registry import WorkflowRegistryResource
from resources.results_store import ResultsStoreResource
from wtb_dagster.api import Bench


def bench_from(
    registry: WorkflowRegistryResource,
    checkpointer: CheckpointerResource,
    results: ResultsStoreResource,
    executor: ExecutorResource | None = None,
) -> Bench:
    return Bench(
        registry.load(),
        checkpoint_url=checkpointer.checked_url(),
        results_url=results.url,
        executor=executor.build() if executor is not None else None,
    )
