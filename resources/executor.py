"""The executor resource: a batch's threads run in a thread pool of the run, or on Ray.

On Ray, the cluster is a dagster-ray `RayResource` (`ray`, see `resources.ray_cluster`):
`LocalRay` by default, `RayClusterByAddress` for a cluster that already runs, or dagster-ray's
KubeRay resources for one created on Kubernetes — swapped in the definitions, with nothing
else changed. The resource runs the cluster's lifecycle around the step and gives its address;
the bench's driver (`RayExecutor`) connects there and fans the step's threads out over a pool
of long-lived worker actors that keep their checkpointer connections and compiled graphs.
dagster-ray's executor and run launcher, which run each Dagster *step* as a Ray job, do not
fit: one step here is thousands of threads.

Width: `max_concurrency` threads at once on the local executor; `num_workers` ×
`concurrency_per_worker` on Ray (`wtb run/bench --workers W --concurrency N` sets the same).
"""

# No `from __future__ import annotations`: Dagster reads the `ResourceDependency` annotation
# at class creation to find the nested resource.
from typing import Any

from dagster import ConfigurableResource, InitResourceContext, MetadataValue, ResourceDependency
from dagster_ray import LocalRay, RayResource
from pydantic import Field, PrivateAttr

from resources.ray_cluster import local_ray
from wtb_dagster.errors import ConfigError
from wtb_dagster.execution import Executor, LocalExecutor

KINDS = ("local", "ray")


class ExecutorResource(ConfigurableResource):
    """How a batch's threads run, and how many at once."""

    # a plain str (not Literal) so that it can come from the WTB_EXECUTOR env var
    kind: str = Field(
        default="ray",
        description="'ray' (workers on the `ray` cluster) or 'local' (a thread pool in the run's "
        "process; `ray` is then not used). Env: WTB_EXECUTOR.",
    )
    max_concurrency: int = Field(
        default=16, description="local: threads run at once in the run's process."
    )
    ray: ResourceDependency[RayResource] = Field(
        default_factory=local_ray,
        description="ray: the cluster, a dagster-ray RayResource — LocalRay (default), "
        "RayClusterByAddress (env RAY_ADDRESS), KubeRayCluster or KubeRayInteractiveJob.",
    )
    num_workers: int = Field(default=2, description="ray: worker actors (processes).")
    concurrency_per_worker: int = Field(
        default=16, description="ray: threads each worker runs at once (latency-bound nodes)."
    )
    max_retries: int = Field(
        default=3,
        description="ray: retries of a case whose worker process died while running it alone "
        "(cases that merely shared a lost worker are retried without counting).",
    )
    pool_size: int | None = Field(
        default=None,
        description="Checkpointer connections per process running threads (the run's, or each "
        "Ray worker's); default: the executor's own, as for `wtb run` (local: "
        "min(max_concurrency, 10); ray: 4).",
    )
    _built: list[Any] = PrivateAttr(default_factory=list)

    def build(self) -> Executor:
        """The engine executor for one batch; a Ray one is closed when the step ends."""
        if self.kind not in KINDS:
            raise ConfigError(
                f"executor kind {self.kind!r} is unknown; use 'local' or 'ray' (WTB_EXECUTOR)"
            )
        # unset, the executor's default applies: the same width as `wtb run` with these flags
        pool = {} if self.pool_size is None else {"pool_size": self.pool_size}
        if self.kind == "local":
            return LocalExecutor(max_concurrency=self.max_concurrency, **pool)
        from wtb_dagster.ray_execution import RayExecutor

        executor = RayExecutor(
            address=self.ray.ray_address,
            num_workers=self.num_workers,
            concurrency_per_worker=self.concurrency_per_worker,
            max_retries=self.max_retries,
            **pool,
        )
        self._built.append(executor)
        return executor

    def describe(self, executor: Executor) -> dict[str, Any]:
        """Metadata of where a batch ran: the width, and on Ray the cluster and its workers."""
        if self.kind == "local":
            return {"executor": f"local: {self.max_concurrency} threads in the run's process"}
        stats = executor.stats  # type: ignore[attr-defined]  # a RayExecutor's
        width = self.num_workers * self.concurrency_per_worker
        where = (
            "a local Ray (LocalRay)" if isinstance(self.ray, LocalRay) else self.ray.display_name
        )
        metadata: dict[str, Any] = {
            "executor": f"ray: {self.num_workers} worker{'s' * (self.num_workers != 1)} × "
            f"{self.concurrency_per_worker} threads = {width} at once, on {where}",
            "ray_workers_started": stats.workers,
            "ray_worker_pids": MetadataValue.json(list(stats.worker_pids)),
            "ray_worker_deaths": stats.worker_deaths,
            "ray_cases_retried": stats.retried,
        }
        import ray
        from ray.util.client import ray as client

        if ray.is_initialized() and not client.is_connected():
            # the cluster the driver is attached to, as Ray itself reports it
            metadata["ray_gcs_address"] = ray.get_runtime_context().gcs_address
        return metadata

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        # Disconnects from (or shuts down) a Ray the step's executors attached to (or started);
        # the `ray` resource then runs its own cleanup (e.g. deletes a KubeRay cluster).
        for executor in self._built:
            executor.close()
        self._built.clear()
