"""The rerun request: "resume these threads from this point, with this change".

One model for every place that handles a request: the results store persists it, `reruns`
validates and executes it, and the API, the CLI, the sensor and the rerun job build or read it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wtb_dagster.errors import WTBError

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


class RerunRequest(BaseModel):
    """Which threads, from where, with what change — as a user asks for it.

    >>> RerunRequest(workflow="demo", combo="baseline", before_node="generate",
    ...              variant="generate=template", reason="try the template")
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow: str
    # which threads: explicit ids, or a combo / status filter over the main lineage
    thread_ids: list[str] | None = None
    combo: str | None = None
    status_filter: str | None = None
    # from where: a checkpoint id, or just before / just after a node
    checkpoint_id: str | None = None
    before_node: str | None = None
    after_node: str | None = None
    # what changes
    variant: str | None = None
    state_patch: dict[str, Any] | None = None
    reason: str | None = None


class StoredRerunRequest(RerunRequest):
    """A request as the results store holds it: with its id and how far it got."""

    id: int
    status: str = PENDING
    dagster_run_id: str | None = None
    result_thread_ids: list[str] | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = Field(default=None)

    def request(self) -> RerunRequest:
        """The user's request without the store's bookkeeping."""
        return RerunRequest(**self.model_dump(include=set(RerunRequest.model_fields)))


def rerun_request(workflow: str, **fields: Any) -> RerunRequest:
    """A `RerunRequest` from keyword fields; a wrong field or type is a `WTBError`.

    >>> rerun_request("demo", combo="baseline", before_node="generate")
    """
    try:
        return RerunRequest(workflow=workflow, **fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: "
            + ("unknown field" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        )
        allowed = ", ".join(f for f in RerunRequest.model_fields if f != "workflow")
        raise WTBError(f"rerun request: {problems} (fields: {allowed})") from None
