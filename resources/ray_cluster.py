"""Where a batch's Ray workers run: dagster-ray resources, plus one for an existing cluster.

A dagster-ray `RayResource` owns a cluster's lifecycle (create it, wait until it is ready,
delete it after the step) and says where it is (`ray_address`). The bench uses three:

- `LocalRay` (dagster-ray): a Ray started in the run's own process — the default.
- `RayClusterByAddress` (here): a cluster that already runs — `ray start --head` on a machine,
  a VM cluster, a long-lived KubeRay service — reached by address. dagster-ray has no resource
  for that: its KubeRay resources create the cluster they use.
- `KubeRayCluster` / `KubeRayInteractiveJob` (dagster-ray, `dagster_ray.kuberay`): a cluster
  created on Kubernetes for the step and deleted after it.

The bench's driver (`RayExecutor`) connects to `ray_address` itself, so these resources are
used with `lifecycle.connect=False`: dagster-ray's own `connect` imports Ray Data (pyarrow,
not a dependency here) and has no deadline on an unreachable address, while the driver probes
the address first and fails within seconds naming it. A resource configured to connect anyway
leaves Ray initialised, and the driver then uses that connection as it is.
"""

from __future__ import annotations

from dagster_ray import Lifecycle, LocalRay, RayResource
from dagster_ray.types import AnyDagsterContext
from pydantic import Field


def local_ray() -> LocalRay:
    """dagster-ray's `LocalRay`, leaving the connection to the bench's driver."""
    return LocalRay(lifecycle=Lifecycle(connect=False, cleanup="never"))


class RayClusterByAddress(RayResource):
    """An existing Ray cluster, reached by address; nothing is created or deleted.

    >>> RayClusterByAddress(address=EnvVar("RAY_ADDRESS"))   # e.g. RAY_ADDRESS=10.0.0.5:6379
    """

    address: str = Field(
        description="The cluster: 'host:port' of the head's GCS (`ray start --head --port "
        "6379`; the driver then joins the cluster and needs to reach its nodes), "
        "'ray://host:10001' (Ray Client, for a driver outside the cluster's network), or "
        "'auto' (the cluster `ray start` recorded on this machine). Env: RAY_ADDRESS."
    )
    lifecycle: Lifecycle = Field(
        # a default value, not a factory: Dagster builds a nested resource's config from it
        default=Lifecycle(connect=False, cleanup="never"),
        description="Nothing is created or deleted, whatever `create` and `cleanup` say; with "
        "`connect: false` the bench's driver connects when a batch runs on Ray.",
    )

    @property
    def host(self) -> str:
        rest = self.address.split("://", 1)[-1]
        return rest.rpartition(":")[0].strip("[]") or rest

    @property
    def name(self) -> str:
        return f"the Ray cluster at {self.address}"

    @property
    def ray_address(self) -> str:  # type: ignore[override]  # the address as given, any scheme
        return self.address

    @property
    def created(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return True

    def delete(self, context: AnyDagsterContext) -> None:
        pass  # the cluster is not the run's to delete

    def on_cleanup(self, context: AnyDagsterContext, *, deleted: bool) -> None:
        pass  # nothing was deleted
