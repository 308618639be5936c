"""The executor resource: threads run in a local thread pool or on Ray (local or a cluster).

dagster-ray's resources manage a Ray *cluster's* lifecycle (`LocalRay` is a plain local
`ray.init()`, the KubeRay ones need Kubernetes) and its executor runs Dagster *steps* as Ray
jobs. The bench needs neither: it fans one step's threads out over a pool of long-lived Ray
actors that keep their checkpointer connections and compiled graphs. So this resource only
says where Ray is (`ray_address`, e.g. from `RAY_ADDRESS`) and how wide to run.
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from wtb_dagster.errors import ConfigError
from wtb_dagster.execution import Executor, LocalExecutor


class ExecutorResource(ConfigurableResource):
    """How a batch's threads run."""

    # a plain str (not Literal) so that it can come from the WTB_EXECUTOR env var
    kind: str = Field(
        default="ray",
        description="'ray' (local Ray, or the cluster at ray_address) or 'local' (a thread pool "
        "in the run's process).",
    )
    max_concurrency: int = Field(
        default=16, description="local: threads run at once in the run's process."
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster address (env: RAY_ADDRESS); empty starts a local Ray instance.",
    )
    num_workers: int = Field(default=2, description="ray: worker actors.")
    concurrency_per_worker: int = Field(
        default=16, description="ray: threads each worker runs at once (latency-bound nodes)."
    )
    max_retries: int = Field(
        default=3,
        description="ray: retries of a case whose worker process died while running it alone "
        "(cases that merely shared a lost worker are retried without counting).",
    )
    pool_size: int = Field(
        default=4, description="Checkpointer (PostgreSQL) connections per worker process."
    )

    def build(self) -> Executor:
        if self.kind not in ("local", "ray"):
            raise ConfigError(
                f"executor kind {self.kind!r} is unknown; use 'local' or 'ray' (WTB_EXECUTOR)"
            )
        if self.kind == "local":
            return LocalExecutor(max_concurrency=self.max_concurrency, pool_size=self.pool_size)
        from wtb_dagster.ray_execution import RayExecutor

        return RayExecutor(
            address=self.ray_address or None,
            num_workers=self.num_workers,
            concurrency_per_worker=self.concurrency_per_worker,
            max_retries=self.max_retries,
            pool_size=self.pool_size,
        )
