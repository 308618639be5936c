"""The few calls the worker pool and the dispatcher make on Ray, as an interface (`Handle`),
so their state machines run in tests against an in-process fake; and `RayHandle`, the real one.

Actors and references are opaque to the pool and the dispatcher: they keep them, hash them and
hand them back. What can go wrong with a call is said in the dispatcher's terms, not Ray's:
`get` raises `WorkerLost`, `PlanLost`, `EnvSetupFailed`, `CallFailed` or `FetchTimeout`, each
with the error that caused it as `cause` (the one error messages name).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from wtb_dagster.execution import ThreadTask
from wtb_dagster.ray_worker import PlanNotLoaded


class HandleError(Exception):
    """A call on a worker did not give its result; `cause` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class WorkerLost(HandleError):
    """The worker's process is gone (killed, crashed, its node lost): none of its calls
    that had not finished will."""


class PlanLost(HandleError):
    """The worker refused the call: it has not got the batch's plan (it was restarted)."""


class EnvSetupFailed(HandleError):
    """Ray could not build the worker's runtime environment (the installer failed)."""


class CallFailed(HandleError):
    """The call raised as a whole (the worker records each case's own errors in its result)."""


class FetchTimeout(HandleError):
    """The result is ready but could not be fetched from the worker in time."""


class Handle(Protocol):
    """What the pool and the dispatcher call. None of it blocks longer than its timeout."""

    def new_actor(self) -> Any:
        """Start a worker actor (asynchronously: `load` tells when it is up)."""

    def load(self, actor: Any) -> Any:
        """Hand the actor the batch's plan; the reference is ready, with the worker's pid,
        once it has taken it."""

    def submit(self, actor: Any, tasks: list[tuple[ThreadTask, int]]) -> Any:
        """Run (task, attempt) pairs on the actor; the reference gives one result per task."""

    def wait(self, refs: list[Any], timeout_s: float) -> list[Any]:
        """The references ready now, or after waiting up to `timeout_s` for the first one."""

    def get(self, ref: Any, timeout_s: float) -> Any:
        """The value of a ready reference; raises a `HandleError` for a call that gave none."""

    def kill(self, actor: Any) -> None:
        """End the actor for good (no restart), whatever became of it; never raises."""

    def unload(self, actors: list[Any], timeout_s: float) -> None:
        """Have the actors close their connections, waiting up to `timeout_s`; never raises."""

    def peak_rss_mb(self, actors: list[Any], timeout_s: float) -> list[float]:
        """Each actor's peak resident memory."""

    def cpus(self) -> tuple[float, float]:
        """The CPUs of the Ray cluster: (in all, free now)."""


class RayHandle:
    """`Handle` on a connected Ray, for one batch: `load` hands out that batch's plan."""

    def __init__(
        self,
        ray: Any,
        new_actor: Callable[[], Any],  # starts an actor in the combos' environment
        plan_bytes: bytes,
        combos: list[str],
        pool_size: int,
    ) -> None:
        self.ray, self._new_actor = ray, new_actor
        self.plan_bytes, self.combos, self.pool_size = plan_bytes, combos, pool_size

    def new_actor(self) -> Any:
        return self._new_actor()

    def load(self, actor: Any) -> Any:
        return actor.load.remote(self.plan_bytes, self.combos, self.pool_size)

    def submit(self, actor: Any, tasks: list[tuple[ThreadTask, int]]) -> Any:
        return actor.run.remote(tasks)

    def wait(self, refs: list[Any], timeout_s: float) -> list[Any]:
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready:
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        return ready

    def get(self, ref: Any, timeout_s: float) -> Any:
        from ray.exceptions import (
            GetTimeoutError,
            RayActorError,
            RayTaskError,
            RuntimeEnvSetupError,
            WorkerCrashedError,
        )

        try:
            return self.ray.get(ref, timeout=timeout_s)
        except RuntimeEnvSetupError as exc:
            raise EnvSetupFailed(exc) from exc
        except (RayActorError, WorkerCrashedError) as exc:
            raise WorkerLost(exc) from exc
        except RayTaskError as exc:
            if isinstance(exc.cause, PlanNotLoaded):
                raise PlanLost(exc.cause) from exc
            raise CallFailed(exc.cause or exc) from exc
        except GetTimeoutError as exc:
            raise FetchTimeout(exc) from exc

    def kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)

    def unload(self, actors: list[Any], timeout_s: float) -> None:
        refs = [actor.unload.remote() for actor in actors]
        if refs:
            with contextlib.suppress(Exception):
                self.ray.wait(refs, num_returns=len(refs), timeout=timeout_s)

    def peak_rss_mb(self, actors: list[Any], timeout_s: float) -> list[float]:
        return self.ray.get([actor.peak_rss_mb.remote() for actor in actors], timeout=timeout_s)

    def cpus(self) -> tuple[float, float]:
        return (
            self.ray.cluster_resources().get("CPU", 0),
            self.ray.available_resources().get("CPU", 0),
        )


def first_line(exc: BaseException) -> str:
    """An error as one short line, its type first."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:500] if text else ''}"
