"""Turns stored rerun requests (from `wtb`, Python or the launchpad) into runs of the rerun job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

# The tags the sensor daemon puts on the runs it launches and matches to skip a run key again.
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from resources import ResultsStoreResource
from wtb_dagster.reruns import pending_requests

SENSOR_NAME = "rerun_requests_sensor"


def run_key(request_id: int) -> str:
    return f"rerun-{request_id}"


def launched_runs(
    instance: DagsterInstance, run_keys: Sequence[str], sensor_name: str = SENSOR_NAME
) -> dict[str, DagsterRun]:
    """The runs this sensor already launched for these run keys, by run key (what the sensor
    daemon would skip a RunRequest for)."""
    if not run_keys:
        return {}
    runs = instance.get_runs(
        filters=RunsFilter(tags={RUN_KEY_TAG: list(run_keys), SENSOR_NAME_TAG: sensor_name})
    )
    return {run.tags[RUN_KEY_TAG]: run for run in runs}


def make_rerun_requests_sensor(
    job: Any, minimum_interval_seconds: int = 15, max_runs_per_tick: int = 100
) -> SensorDefinition:
    """One run per pending request, oldest first, at most `max_runs_per_tick` per tick.

    There is no cursor: every tick looks at every pending request, because on PostgreSQL a
    request can commit after one with a higher id (a "highest id launched" cursor would hide
    it for good). The run key `rerun-<id>` makes a launch happen once: requests that already
    have a run of this sensor (queued, or started but not yet marked `running`) are left out,
    as the daemon would skip them, so they do not take the places of requests not yet launched.
    """

    @sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Launches the rerun job for each pending rerun request.",
    )
    def rerun_requests_sensor(
        context: SensorEvaluationContext, results: ResultsStoreResource
    ) -> SensorResult | SkipReason:
        to_launch: list[dict[str, Any]] = []
        waiting: dict[int, DagsterRun] = {}
        after = 0
        while len(to_launch) < max_runs_per_tick:
            page = pending_requests(results.store, after_id=after, limit=max_runs_per_tick)
            if not page:
                break
            runs = launched_runs(context.instance, [run_key(r.id) for r in page])
            for request in page:
                run = runs.get(run_key(request.id))
                if run is None:
                    to_launch.append(request)
                else:
                    waiting[request.id] = run
            after = page[-1].id
        to_launch = to_launch[:max_runs_per_tick]
        ended = {i: run for i, run in waiting.items() if run.is_finished}
        if ended:  # the run ended before it took the request: its run key is spent
            context.log.warning(
                "rerun request(s) still pending although their run ended: "
                + ", ".join(
                    f"#{i} (run {run.run_id} {run.status.value})" for i, run in ended.items()
                )
                + "; launch rerun_job with config request_id: <id> to execute one"
            )
        if not to_launch:
            return SkipReason(
                f"no pending rerun request to launch ({len(waiting)} pending with a run already)"
                if waiting
                else "no pending rerun request"
            )
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=run_key(request.id),
                    run_config={"ops": {"execute_rerun": {"config": {"request_id": request.id}}}},
                    tags={
                        "wtb/workflow": request.workflow,
                        "wtb/rerun_request": str(request.id),
                    },
                )
                for request in to_launch
            ]
        )

    return rerun_requests_sensor
