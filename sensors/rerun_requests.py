"""Turns stored rerun requests (from `wtb`, Python or the launchpad) into runs of the rerun job."""

from __future__ import annotations

from typing import Any

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from resources import ResultsStoreResource
from wtb_dagster.reruns import pending_requests


def make_rerun_requests_sensor(job: Any, minimum_interval_seconds: int = 15) -> SensorDefinition:
    """One run per pending request. The cursor (newest request id launched) and the run key
    (`rerun-<id>`) make it idempotent: a request is launched once however many ticks see it."""

    @sensor(
        name="rerun_requests_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Launches the rerun job for each pending rerun request.",
    )
    def rerun_requests_sensor(
        context: SensorEvaluationContext, results: ResultsStoreResource
    ) -> SensorResult | SkipReason:
        after = int(context.cursor or 0)
        pending = pending_requests(results.store, after_id=after)
        if not pending:
            return SkipReason(f"no pending rerun request after id {after}")
        run_requests = [
            RunRequest(
                run_key=f"rerun-{request['id']}",
                run_config={"ops": {"execute_rerun": {"config": {"request_id": request["id"]}}}},
                tags={"wtb/workflow": request["workflow"], "wtb/rerun_request": str(request["id"])},
            )
            for request in pending
        ]
        return SensorResult(run_requests=run_requests, cursor=str(max(r["id"] for r in pending)))

    return rerun_requests_sensor
