"""The rerun job: executes one rerun request as forks on the executor (Ray by default).

Launched by `rerun_requests_sensor` with a request id, or from the launchpad with the request
itself as run config (it is stored first, so it is visible to `wtb` and the sensors).
"""

import json

from dagster import Config, OpExecutionContext, job, op
from pydantic import Field

from assets.errors import user_errors
from resources import (
    CheckpointerResource,
    ExecutorResource,
    ResultsStoreResource,
    WorkflowRegistryResource,
)
from resources.bench import bench_from
from wtb_dagster.errors import ConfigError


class RerunConfig(Config):
    """Either `request_id` of a stored request, or a new request: workflow + which + from where."""

    request_id: int | None = Field(default=None, description="A stored rerun request.")
    workflow: str | None = Field(default=None, description="Workflow of a new request.")
    thread_ids: list[str] | None = Field(default=None, description="These threads, or …")
    combo: str | None = Field(default=None, description="… the threads of this combo, or all.")
    status_filter: str | None = Field(default=None, description="Only threads with this status.")
    checkpoint_id: str | None = Field(default=None, description="Rerun from this checkpoint, or …")
    before_node: str | None = Field(default=None, description="… from just before this node, or …")
    after_node: str | None = Field(default=None, description="… from just after this node.")
    variant: str | None = Field(default=None, description="Apply this variant, e.g. node=variant.")
    state_patch: str | None = Field(
        default=None, description='Values to set, as a JSON object, e.g. {"question": "…"}.'
    )
    reason: str | None = Field(default=None, description="Why; shown with the request.")


def _json_object(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"state_patch is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("state_patch must be a JSON object of state keys to values")
    return value


@op
def execute_rerun(
    context: OpExecutionContext,
    config: RerunConfig,
    registry: WorkflowRegistryResource,
    checkpointer: CheckpointerResource,
    results: ResultsStoreResource,
    executor: ExecutorResource,
) -> None:
    """Run the request's forks; each result is stored as a fork linked to its parent."""
    with user_errors():
        bench = bench_from(registry, checkpointer, results, executor)
        request_id = config.request_id
        if request_id is None:
            if not config.workflow:
                raise ConfigError("give request_id, or workflow and a rerun point to create one")
            fields = config.model_dump(exclude={"request_id", "workflow"})
            fields["state_patch"] = _json_object(config.state_patch)
            request_id = bench.request_rerun(config.workflow, **fields)
            context.log.info(f"stored rerun request {request_id}")
        results_ = bench.execute_rerun(request_id, run_id=context.run.run_id)
    statuses: dict[str, int] = {}
    for result in results_:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    context.log.info(f"rerun request {request_id}: {len(results_)} forks {statuses}")


@job(description="Execute a rerun request: forks from a checkpoint, downstream nodes only.")
def rerun_job() -> None:
    execute_rerun()
