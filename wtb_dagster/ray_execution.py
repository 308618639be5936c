"""Running a batch's threads on Ray: a pool of worker actors on a local Ray or a cluster.

Each worker is one actor process (`ray_worker`). For a batch it opens the checkpointer once (so
a PostgreSQL checkpointer holds at most `num_workers × pool_size` connections), compiles each
combo's graph once, and runs up to `concurrency_per_worker` threads at a time with the same
`run_task` the local executor runs. The driver pickles the plan once and hands each worker a
copy when it starts; tasks then travel one by one — or a few per call when cases take
milliseconds (see `chunk_s`) — with at most `2 × concurrency_per_worker` calls in flight per
worker, and the driver calls `on_result` for each result: only the driver writes the results
store.

The jobs are split by module: `ray_connection` reaches Ray (and says what workers need from
the driver), `ray_pool` starts, replaces and gives up the worker actors, `ray_dispatch` hands
out cases, retries those of lost workers from their last checkpoint and enforces deadlines,
both through the `ray_handle.Handle` interface. This module wires them together.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.environments import EnvBuildError, Environment, group_by_env, installer_message
from wtb_dagster.errors import ConfigError, ExecutionError
from wtb_dagster.execution import BatchPlan, compile_for
from wtb_dagster.ray_connection import (
    absolute_checkpoint_url,
    connect,
    driver_paths,
    import_ray,
    is_local,
)
from wtb_dagster.ray_dispatch import Dispatch
from wtb_dagster.ray_handle import RayHandle
from wtb_dagster.ray_pool import EnvStats, Pool, RayStats
from wtb_dagster.ray_worker import EXECUTOR_NAME, Worker, environment_ready
from wtb_dagster.threads import ThreadResult

log = logging.getLogger(__name__)

__all__ = ["EXECUTOR_NAME", "RayExecutor", "RayStats"]


class RayExecutor:
    """Runs a batch's threads on a pool of Ray worker actors.

    >>> RayExecutor()                                     # a local Ray, 2 workers
    >>> RayExecutor(address="ray://head:10001", num_workers=16, concurrency_per_worker=32)

    - `address`: None starts (or reuses) a local Ray — unless `RAY_ADDRESS` is set, which Ray
      itself honours; "auto" attaches to the cluster `ray start` recorded; "host:6379" or
      "ray://host:10001" attach to that cluster.
    - `init_options`: extra `ray.init` arguments (`num_cpus`, `runtime_env`, …), used when this
      executor initialises Ray; rejected when Ray was already initialised by someone else.
    - `env_vars`: set in the worker processes (API keys of LLM nodes, say).
    - `max_retries`: how many times a case may lose its worker while running alone before it
      is recorded as failed, and how many times in a row a worker that dies while starting
      or loading the plan is replaced before it is given up.
    - `num_cpus_per_worker`: what each worker reserves from Ray; 0 lets latency-bound workers
      outnumber the cores.
    - `keep_workers`: keep the worker processes (warm, with the workflow's modules imported,
      but no open connections) between batches until `close()`; otherwise each batch starts
      and ends its own. Kept workers keep the code they imported: a changed node needs a new
      executor.
    - `chunk_s`: hand cases out in chunks that take about this long, judged from the mean
      case latency so far, so Ray's per-call cost does not dominate millisecond-fast cases;
      slow cases still go one by one; 0 always sends them one by one.
    - `connect_timeout_s`, `start_timeout_s`, `grace_s`, `poll_s`: the deadlines of
      connecting (`ray_connection`), of starting a worker (`ray_pool`), and of a case's
      result (`ray_dispatch`).
    - `env_build_timeout_s`: the deadline of building a combo environment (`environments`):
      installing its packages, the first time Ray meets it.

    Combo environments: combos whose variants declare an `env` run on workers of their own,
    started with that Ray `runtime_env`; combos with equal environments share them. The
    environments of a batch run one after another, each on `num_workers` workers, the
    driver's first. Each is built once, by a probe task before its workers start (they then
    start from Ray's cache); its build time is in `stats.environments` and the log, not in
    any case's latency. A build that fails fails those combos with the installer's message
    (`EnvBuildError`, raised once the batch's other combos have run) and runs none of their
    cases. On a cluster each node builds an environment the first time a worker needs it
    there, within `start_timeout_s`. With `keep_workers`, the workers of the batch's last
    environment are kept; the next batch keeps them if it starts in the same one.

    When Ray is already initialised in this process (by a dagster-ray resource, or a test), it
    is used as it is, whatever `address` says.
    """

    name = EXECUTOR_NAME

    def __init__(
        self,
        address: str | None = None,
        num_workers: int = 2,
        concurrency_per_worker: int = 16,
        max_retries: int = 3,
        pool_size: int = 4,
        init_options: dict[str, Any] | None = None,
        connect_timeout_s: float = 10.0,
        start_timeout_s: float = 120.0,
        num_cpus_per_worker: float = 1.0,
        env_vars: dict[str, str] | None = None,
        keep_workers: bool = False,
        chunk_s: float = 0.05,
        grace_s: float = 30.0,
        poll_s: float = 1.0,
        env_build_timeout_s: float = 900.0,
    ) -> None:
        checks = {
            "num_workers": num_workers >= 1,
            "concurrency_per_worker": concurrency_per_worker >= 1,
            "max_retries": max_retries >= 0,
            "pool_size": pool_size >= 1,
            "connect_timeout_s": connect_timeout_s > 0,
            "start_timeout_s": start_timeout_s > 0,
            "num_cpus_per_worker": num_cpus_per_worker >= 0,
            "chunk_s": chunk_s >= 0,
            "grace_s": grace_s >= 0,
            "poll_s": poll_s > 0,
            "env_build_timeout_s": env_build_timeout_s > 0,
        }
        for setting, ok in checks.items():
            if not ok:
                raise ConfigError(f"RayExecutor: {setting}={locals()[setting]!r} is out of range")
        self.address = address
        self.num_workers = num_workers
        self.concurrency_per_worker = concurrency_per_worker
        self.max_retries = max_retries
        self.pool_size = pool_size
        self.init_options = dict(init_options or {})
        self.connect_timeout_s = connect_timeout_s
        self.start_timeout_s = start_timeout_s
        self.num_cpus_per_worker = num_cpus_per_worker
        self.env_vars = dict(env_vars or {})
        self.keep_workers = keep_workers
        self.chunk_s = chunk_s
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.env_build_timeout_s = env_build_timeout_s
        self.stats = RayStats()
        self._started_ray = False
        self._client_mode = False
        self._actors: list[Any] = []
        self._in_session = False
        self._actors_env = ""  # the key of the environment the kept workers run in

    def connect(self) -> None:
        """Initialise Ray unless it already is; fails fast with `ExecutionError` if unreachable."""
        connection = connect(
            self.address,
            self.init_options,
            started=self._started_ray,
            cpus_needed=self.num_workers * self.num_cpus_per_worker,
            connect_timeout_s=self.connect_timeout_s,
        )
        self._started_ray, self._client_mode = connection.started, connection.client_mode

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Several runs as one batch (the waves of a batch with shared prefixes): the workers
        stay warm between the runs, and `stats` add up over them."""
        keep, self.keep_workers = self.keep_workers, True
        self.stats, self._in_session = RayStats(), True
        try:
            yield
        finally:
            self._in_session, self.keep_workers = False, keep
            # a warm worker takes each run's plan again: count each process once
            self.stats.worker_pids = list(dict.fromkeys(self.stats.worker_pids))
            self.stats.workers = len(self.stats.worker_pids) or self.stats.workers
            if not keep:
                self.release_workers()

    def release_workers(self) -> None:
        """End the kept workers (Ray itself stays up)."""
        if self._actors:
            ray = import_ray()
            for actor in self._actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            self._actors = []

    def close(self) -> None:
        """End the kept workers, and shut Ray down if this executor started it."""
        self.release_workers()
        if self._started_ray:
            import_ray().shutdown()
            self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, plan: BatchPlan, on_result: Callable[[ThreadResult], None]) -> None:
        if not self._in_session:
            self.stats = RayStats()
        if not plan.tasks:
            return
        started = time.perf_counter()
        url = absolute_checkpoint_url(plan.checkpoint_url)
        combos = list(dict.fromkeys(t.combo for t in plan.tasks))
        for combo in combos:
            compile_for(plan.workflow, combo, None)  # a build error stops the batch before any run
        groups = group_by_env(plan.workflow, combos)  # conflicting pins: refused here
        with open_checkpointer(url, pool_size=1, setup=True):
            pass  # the tables are created once, here; workers open with setup=False
        self.connect()
        ray = import_ray()
        shipped = self._shipped(plan, url)
        failed: list[EnvBuildError] = []
        for env, group in groups:
            tasks = [t for t in plan.tasks if t.combo in group]
            try:
                self._run_group(
                    ray, replace(plan, tasks=tasks), shipped, env, group, on_result, started
                )
            except EnvBuildError as exc:  # only these combos fail; the others still run
                failed.append(exc)
            started = None
        if failed:
            raise EnvBuildError("; ".join(str(exc) for exc in failed))

    def _shipped(self, plan: BatchPlan, url: str) -> bytes:
        """The plan without its tasks, pickled once, unpickled by each worker after it has the
        driver's paths. Tasks travel one by one; the dataset stays here."""
        from ray import cloudpickle

        workflow = copy.copy(plan.workflow)
        if isinstance(workflow.dataset, list):
            workflow.dataset = None
        try:
            return cloudpickle.dumps(replace(plan, workflow=workflow, checkpoint_url=url, tasks=[]))
        except Exception as exc:
            raise ExecutionError(
                f"workflow {plan.workflow.name!r} cannot be shipped to Ray workers: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _run_group(
        self,
        ray: Any,
        plan: BatchPlan,
        shipped: bytes,
        env: Environment,
        combos: list[str],
        on_result: Callable[[ThreadResult], None],
        started: float | None,
    ) -> None:
        """Run the tasks of combos that share one environment on workers started in it."""
        runtime_env = env.runtime_env(self.env_build_timeout_s) if env else None
        building = time.perf_counter()
        env_stats = self._build(ray, plan.workflow.name, env, combos) if env else None
        # start_s counts starting workers; the build is counted apart, in `env_stats`
        started = building if started is None else started + (time.perf_counter() - building)

        def new_actor() -> Any:
            # `_new_actor` looked up at each call: tests replace it to kill actors as they start
            if runtime_env is None:
                return self._new_actor(ray)
            return self._new_actor(ray, runtime_env)

        handle = RayHandle(ray, new_actor, shipped, combos, self.pool_size)
        pids_before = len(self.stats.worker_pids)
        key = env.key if env else ""
        if self._actors_env != key:
            # kept workers of another environment hold the CPUs this one's need
            for actor in self._actors:
                handle.kill(actor)
            self._actors, self._actors_env = [], key
        try:
            pool = self._start_pool(handle, self._take_kept(handle))
        except EnvBuildError as exc:
            raise EnvBuildError(_env_failed(plan.workflow.name, env, combos, str(exc))) from exc
        self.stats.start_s += time.perf_counter() - started
        completed = False
        try:
            dispatch = Dispatch(
                pool,
                plan,
                on_result,
                per_worker=2 * self.concurrency_per_worker,
                max_retries=self.max_retries,
                chunk_s=self.chunk_s,
                grace_s=self.grace_s,
                poll_s=self.poll_s,
            )
            dispatch.run()
            self.stats.worker_peak_rss_mb += pool.peak_rss_mb()
            completed = True
        finally:
            # Workers cut off mid-batch may still be running cases: they are not kept.
            self._actors = pool.stop(keep=self.keep_workers and completed)
            if env_stats is not None:
                env_stats.worker_pids = self.stats.worker_pids[pids_before:]

    def _build(self, ray: Any, workflow: str, env: Environment, combos: list[str]) -> EnvStats:
        """Have Ray build the combos' environment, once, before any worker starts in it; its
        workers then start from Ray's cache, and the build's time is not any case's."""
        from ray.exceptions import GetTimeoutError, RuntimeEnvSetupError

        for known in self.stats.environments if self._in_session else ():
            if known.key == env.key:  # built by an earlier run of this session (a wave)
                known.combos = list(dict.fromkeys([*known.combos, *combos]))
                return known
        started = time.perf_counter()
        probe = ray.remote(environment_ready).options(
            runtime_env=env.runtime_env(self.env_build_timeout_s), num_cpus=0, max_retries=0
        )
        ref = probe.remote()
        try:
            ray.get(ref, timeout=self.env_build_timeout_s + self.grace_s)
        except RuntimeEnvSetupError as exc:
            raise EnvBuildError(
                _env_failed(workflow, env, combos, installer_message(exc))
            ) from None
        except GetTimeoutError:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            raise EnvBuildError(
                _env_failed(
                    workflow,
                    env,
                    combos,
                    f"not built within env_build_timeout_s={self.env_build_timeout_s:g} s",
                )
            ) from None
        stats = EnvStats(
            key=env.key,
            description=env.describe(),
            combos=list(combos),
            build_s=round(time.perf_counter() - started, 3),
        )
        self.stats.environments.append(stats)
        log.info(
            "workflow %r: environment %s (%s) for %s ready in %.1f s (not counted in any "
            "case's latency)",
            workflow,
            stats.key,
            stats.description,
            ", ".join(combos),
            stats.build_s,
        )
        return stats

    def _take_kept(self, handle: RayHandle) -> list[Any]:
        """The workers kept from the last batch, at most `num_workers` (the rest ended)."""
        for actor in self._actors[self.num_workers :]:
            handle.kill(actor)
        kept, self._actors = self._actors[: self.num_workers], []
        return kept

    def _start_pool(self, handle: RayHandle, kept: list[Any]) -> Pool:
        """The batch's pool, started: the kept workers woken, new ones for the rest."""
        if is_local(self.address, self._client_mode):
            # A local Ray has no autoscaler: workers that can never fit are an error now, not
            # after start_timeout_s. (CPUs held by other actors are waited for, up to it.)
            cpus, _ = handle.cpus()
            wanted = self.num_workers * self.num_cpus_per_worker
            if wanted > cpus:
                for actor in kept:
                    handle.kill(actor)
                raise ExecutionError(
                    f"{self.num_workers} Ray workers × num_cpus_per_worker="
                    f"{self.num_cpus_per_worker:g} need {wanted:g} CPUs; the local Ray has "
                    f"{cpus:g}; lower num_workers, or num_cpus_per_worker (0 lets "
                    "latency-bound workers share cores)"
                )
        pool = Pool(
            handle,
            self.stats,
            max_retries=self.max_retries,
            start_timeout_s=self.start_timeout_s,
            poll_s=self.poll_s,
            grace_s=self.grace_s,
            cpus_per_worker=self.num_cpus_per_worker,
        )
        pool.start(kept, self.num_workers)
        return pool

    def _new_actor(self, ray: Any, runtime_env: dict[str, Any] | None = None) -> Any:
        paths = [] if self._client_mode else driver_paths()
        return (
            ray.remote(Worker)
            .options(
                # the combos' environment, built already (`_build`): taken from Ray's cache
                **({"runtime_env": runtime_env} if runtime_env else {}),
                max_concurrency=self.concurrency_per_worker,
                # Ray does not restart a dead worker: the pool replaces it with a new actor,
                # after killing the old one, and bounds how often (`Pool.start_failed`).
                max_restarts=0,
                max_task_retries=0,  # the driver resubmits, counting attempts
                num_cpus=self.num_cpus_per_worker,
                scheduling_strategy="SPREAD",
            )
            .remote(paths, self.env_vars)
        )


def _env_failed(workflow: str, env: Environment, combos: list[str], why: str) -> str:
    return (
        f"workflow {workflow!r}, combo(s) {', '.join(combos)}: their environment "
        f"({env.describe()}) could not be built, so none of their cases ran: {why}; fix the "
        "pin in the variant's env, or make the package reachable (a local wheel path, or "
        "install_options: [--no-index, --find-links, DIR])"
    )
