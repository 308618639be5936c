"""Running a batch's threads on Ray: a pool of worker actors on a local Ray or a cluster.

Each worker is one actor process. For a batch it opens the checkpointer once (so a PostgreSQL
checkpointer holds at most `num_workers × pool_size` connections), compiles each combo's graph
once, and runs up to `concurrency_per_worker` threads at a time with the same `run_task` the
local executor runs. The driver pickles the plan once and hands each worker a copy when it
starts; tasks then travel one by one — or a few per call when cases take milliseconds (see
`chunk_s`) — with at most `2 × concurrency_per_worker` calls in flight per worker, and the
driver calls `on_result` for each result: only the driver writes the results store.

A worker that dies (killed, out of memory, its node lost) or hangs is replaced: its actor is
killed for good first (`ray.kill(…, no_restart=True)`: a dead, hung or half-started actor keeps
no CPU), and a new one takes the plan; the cases it had are handed out again. A worker that dies
while it starts or loads the plan — or, kept between batches, while idle — is replaced the same
way, at most `max_retries` times in a row per worker; a worker given up leaves the batch to the
others, and only a batch left with no worker stops. Checkpoints are written with durability
"sync", so a retried thread continues from its last checkpoint: the nodes it had finished do not
run again. The cases of a lost worker are retried one at a time per worker ("alone"), which
tells a case that kills its worker from the cases that merely shared the worker with it: only a
loss while the case ran alone counts against its `max_retries`, and a case that used them up is
recorded as failed, naming the worker loss. `ThreadResult.attempts` counts every hand-out.

How long the driver waits (it never waits without a deadline):

- connecting to a cluster: the address must accept a TCP connection within `connect_timeout_s`
  (Ray itself would retry an unreachable address for minutes);
- starting: every worker must be up (process started, plan unpickled — which imports the
  workflow's modules — checkpointer open, graphs compiled) within `start_timeout_s`, and a
  replacement within the same time, or it is given up;
- each `ray.wait` returns within `poll_s`, so deadlines are checked between waits; `ray.get`
  is only called on results that are ready, with a timeout;
- a case: when the plan has a timeout, the result of a call with k cases is due
  `2 × k × timeout_s + grace_s` after it was handed out (it may queue behind at most one call
  per slot of its worker, then its cases run one after the other for at most `timeout_s` each;
  `grace_s` covers scoring and checkpoint reads). A worker that misses that is taken to be
  hung and replaced; its cases are retried alone like those of a crashed worker, and a case
  that hangs its worker while running alone is recorded as timed out. Without a plan timeout a
  case may run as long as its nodes do, as on the local executor.

Workers import `wtb_dagster` and the workflow's modules by name. On a local Ray each worker
puts the driver's source directories (its working directory and the `sys.path` entries outside
the Python installation) on its own `sys.path` before it unpickles the plan, so whatever the
driver can import — a test module, a team's workflow package in its checkout — the workers can
too, with nothing uploaded and no `runtime_env` (which would cost a fresh worker process).
A cluster needs the code on its nodes: install it in the image, or pass a `runtime_env`
(`working_dir`, `py_modules`, `pip`) in `init_options`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from wtb_dagster.checkpoints import open_checkpointer, saver_lanes, sqlite_path
from wtb_dagster.errors import ConfigError, ExecutionError
from wtb_dagster.execution import BatchPlan, ThreadTask, compile_for, new_result, run_task
from wtb_dagster.threads import TIMED_OUT, ThreadResult

EXECUTOR_NAME = "ray"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ExecutionError(
            "the Ray executor needs Ray: pip install 'ray[default]' "
            f"(or use the local executor) — {exc}"
        ) from None
    return ray


@dataclass
class RayStats:
    """What the last `run` did besides running cases."""

    workers: int = 0  # workers that started and took the plan
    submitted: int = 0  # hand-outs of a case to a worker, retries included
    retried: int = 0  # cases handed out again after their worker was lost
    worker_deaths: int = 0  # workers lost mid-batch: crashed, killed, or replaced as hung
    hung_workers: int = 0  # of those, replaced because a case overran its deadline
    replaced: int = 0  # workers replaced after dying while starting or loading (or kept, idle)
    start_s: float = 0.0  # from `run` until every worker had taken the plan
    worker_pids: list[int] = field(default_factory=list)
    worker_peak_rss_mb: list[float] = field(default_factory=list)  # at the end of the batch


class _PlanNotLoaded(Exception):
    """A task reached a worker that has not taken the batch's plan (it lost it, restarted)."""


class _Worker:
    """The actor: one checkpointer and compiled graphs per combo, shared by its threads."""

    def __init__(self, paths: list[str], env_vars: dict[str, str]) -> None:
        # Before the plan is unpickled: it names the workflow's modules, which must import.
        for path in reversed(paths):
            if path not in sys.path:
                sys.path.insert(0, path)
        os.environ.update(env_vars)
        self.plan: BatchPlan | None = None
        self._savers: list[Any] = []
        self._graphs: dict[tuple[str, int], Any] = {}
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._turn = 0

    def load(self, plan_bytes: bytes, combos: list[str], pool_size: int) -> int:
        """Take a batch's plan: open its checkpointer once and compile its combos."""
        from ray import cloudpickle

        self.unload()
        plan = cloudpickle.loads(plan_bytes)
        stack = contextlib.ExitStack()
        try:
            # The driver created the tables; workers opening with setup=True would only
            # contend for the migration lock.
            saver = stack.enter_context(
                open_checkpointer(plan.checkpoint_url, pool_size=pool_size, setup=False)
            )
            savers = saver_lanes(saver, pool_size)
            graphs = {
                (combo, lane): compile_for(plan.workflow, combo, lane_saver)
                for combo in combos
                for lane, lane_saver in enumerate(savers)
            }
        except BaseException:
            stack.close()
            raise
        self.plan, self._savers, self._graphs, self._stack = plan, savers, graphs, stack
        return os.getpid()

    def unload(self) -> None:
        """Close the checkpointer's connections; the process stays warm for the next batch."""
        self._stack.close()
        self.plan, self._savers, self._graphs = None, [], {}

    def peak_rss_mb(self) -> float:
        return _peak_rss_mb()

    def run(self, tasks: list[tuple[ThreadTask, int]]) -> list[ThreadResult]:
        """Run a chunk of (task, attempt) one after the other; one result per task."""
        plan = self.plan
        if plan is None:
            # A call sent before the worker died reached its restarted self before the plan.
            raise _PlanNotLoaded(os.getpid())
        return [self._run_one(plan, task, attempt) for task, attempt in tasks]

    def _run_one(self, plan: BatchPlan, task: ThreadTask, attempt: int) -> ThreadResult:
        try:
            with self._lock:
                lane = self._turn % len(self._savers)
                self._turn += 1
                key = (task.combo, lane)
                if key not in self._graphs:
                    self._graphs[key] = compile_for(plan.workflow, task.combo, self._savers[lane])
                graph = self._graphs[key]
            result = run_task(plan, graph, self._savers[lane], task, EXECUTOR_NAME)
        except Exception as exc:  # outside the workflow (run_task records those): this case's
            result = _failure(plan, task, attempt, f"{type(exc).__name__}: {exc}")
        result.attempts = attempt
        return result


def _peak_rss_mb(pid: int | str = "self") -> float:
    """The peak resident set of a process (Linux `VmHWM`), in MB; 0 where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _SlotState(Enum):
    STARTING = "starting"  # its actor is starting or taking the plan (`ready_ref`)
    READY = "ready"  # has the plan: takes cases
    DEAD = "dead"  # given up, its actor killed: takes nothing more this batch


@dataclass
class _Slot:
    """One worker of the pool as the driver sees it: the actor there now, replaced as needed."""

    handle: Any
    inflight: int = 0
    generation: int = 0  # bumped at each loss, so one loss is counted once
    state: _SlotState = _SlotState.STARTING
    alone: bool = False  # running one suspect case and nothing else
    ready_ref: Any = None
    ready_due: float = 0.0
    pid: int | None = None
    cause: str = ""
    kept: bool = False  # its actor was kept from an earlier batch
    failures: int = 0  # its actors that died in a row while starting or taking the plan


@dataclass
class _Pending:
    task: ThreadTask
    attempt: int = 1  # how many times the case has been handed out, this one included
    charged: int = 0  # worker losses while it ran alone: they count against max_retries


@dataclass
class _Call:
    pendings: list[_Pending]  # the chunk of cases one call runs
    slot: int
    generation: int
    alone: bool
    due: float | None


def _driver_paths() -> list[str]:
    """The driver's source directories: its cwd and `sys.path` entries outside Python itself."""
    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths: list[str] = []
    for entry in [os.getcwd(), *sys.path]:
        path = Path(entry or os.getcwd()).resolve()
        if not path.is_dir() or any(path.is_relative_to(p) for p in installed):
            continue
        if str(path) not in paths:
            paths.append(str(path))
    return paths


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _absolute_checkpoint_url(url: str) -> str:
    """Workers may run in another directory: a relative SQLite path is made absolute."""
    if url.startswith("memory://"):
        raise ConfigError(
            f"checkpointer {url!r} lives in one process, so Ray workers cannot share it; "
            "use sqlite:///path.db or postgresql://… with the Ray executor"
        )
    if url.startswith("sqlite:///"):
        return f"sqlite:///{sqlite_path(url).resolve()}"
    return url


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
        self.stats = RayStats()
        self._started_ray = False
        self._client_mode = False
        self._actors: list[Any] = []

    # -- connecting ---------------------------------------------------------------------------

    def _target(self) -> tuple[str | None, str]:
        """The cluster address to attach to (None: a local Ray) and the setting it came from."""
        if self.address:
            return self.address, "address"
        env = os.environ.get("RAY_ADDRESS")
        if env:
            return env, "RAY_ADDRESS"
        return None, "address"

    def _is_local(self) -> bool:
        return self._target()[0] in (None, "local") and not self._client_mode

    def connect(self) -> None:
        """Initialise Ray unless it already is; fails fast with `ExecutionError` if unreachable."""
        ray = _import_ray()
        if ray.is_initialized():
            if self.init_options and not self._started_ray:
                raise ConfigError(
                    "RayExecutor: init_options are ray.init arguments, but Ray is already "
                    "initialised in this process; drop them or set them where Ray is started"
                )
            from ray.util.client import ray as client

            self._client_mode = bool(client.is_connected())
            return
        target, setting = self._target()
        options: dict[str, Any] = {
            "include_dashboard": False,
            "ignore_reinit_error": True,
            "log_to_driver": False,
            **self.init_options,
        }
        address = None
        if target in (None, "local"):
            wanted = math.ceil(self.num_workers * self.num_cpus_per_worker)
            options.setdefault("num_cpus", max(os.cpu_count() or 1, wanted))
        else:
            address = self._probe(target, setting)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {target!r} ({setting})" if target else "a local Ray"
            raise ExecutionError(f"cannot start or attach to {where}: {exc}") from exc
        self._started_ray = True
        self._client_mode = bool(target and target.startswith("ray://"))

    def _probe(self, target: str, setting: str) -> str:
        """Check that the cluster's port answers within `connect_timeout_s`; returns the address.

        Ray itself keeps retrying an unreachable address for minutes.
        """
        address = target
        if target == "auto":
            try:
                from ray._private.services import canonicalize_bootstrap_address_or_die
            except ImportError:  # Ray moved its helper: let ray.init resolve "auto"
                return target
            try:
                address = canonicalize_bootstrap_address_or_die("auto")
            except ConnectionError as exc:
                raise ExecutionError(
                    f"no running Ray cluster found for {setting}='auto': {exc}; start one with "
                    "`ray start --head`, or leave the address empty for a local Ray"
                ) from None
        host_port = _host_port(address)
        if host_port is None:
            raise ExecutionError(
                f"Ray address {target!r} (set by {setting}) is not 'host:port', "
                "'ray://host:port' or 'auto'"
            )
        try:
            with socket.create_connection(host_port, timeout=self.connect_timeout_s):
                pass
        except OSError as exc:
            raise ExecutionError(
                f"cannot reach the Ray cluster at {target!r} (set by {setting}): "
                f"{host_port[0]}:{host_port[1]} did not accept a connection within "
                f"connect_timeout_s={self.connect_timeout_s:g} s ({exc}); check the address, "
                "or leave `address` and RAY_ADDRESS empty for a local Ray"
            ) from None
        return address

    def close(self) -> None:
        """End the kept workers, and shut Ray down if this executor started it."""
        if self._actors:
            ray = _import_ray()
            for handle in self._actors:
                with contextlib.suppress(Exception):
                    ray.kill(handle, no_restart=True)
            self._actors = []
        if self._started_ray:
            _import_ray().shutdown()
            self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running ------------------------------------------------------------------------------

    def run(self, plan: BatchPlan, on_result: Callable[[ThreadResult], None]) -> None:
        self.stats = RayStats()
        if not plan.tasks:
            return
        started = time.perf_counter()
        url = _absolute_checkpoint_url(plan.checkpoint_url)
        combos = list(dict.fromkeys(t.combo for t in plan.tasks))
        for combo in combos:
            compile_for(plan.workflow, combo, None)  # a build error stops the batch before any run
        with open_checkpointer(url, pool_size=1, setup=True):
            pass  # the tables are created once, here; workers open with setup=False
        self.connect()
        ray = _import_ray()
        from ray import cloudpickle

        # Pickled once here, unpickled by each worker after it has the driver's paths. Tasks
        # travel one by one; the dataset stays here.
        workflow = copy.copy(plan.workflow)
        if isinstance(workflow.dataset, list):
            workflow.dataset = None
        try:
            shipped = cloudpickle.dumps(
                replace(plan, workflow=workflow, checkpoint_url=url, tasks=[])
            )
        except Exception as exc:
            raise ExecutionError(
                f"workflow {plan.workflow.name!r} cannot be shipped to Ray workers: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        slots = self._start_workers(ray, shipped, combos)
        self.stats.start_s = time.perf_counter() - started
        completed = False
        try:
            _Dispatch(self, ray, plan, slots, shipped, combos, on_result).run()
            self.stats.worker_peak_rss_mb = self._peak_rss(ray, slots)
            completed = True
        finally:
            # Workers cut off mid-batch may still be running cases: they are not kept.
            self._stop_workers(ray, slots, keep=self.keep_workers and completed)

    def _stop_workers(self, ray: Any, slots: list[_Slot], keep: bool) -> None:
        if not keep:
            for slot in slots:
                with contextlib.suppress(Exception):
                    ray.kill(slot.handle, no_restart=True)
            self._actors = []
            return
        for slot in slots:
            if slot.state is not _SlotState.READY:  # a replacement still starting, say
                with contextlib.suppress(Exception):
                    ray.kill(slot.handle, no_restart=True)
        ready = [s for s in slots if s.state is _SlotState.READY]
        unloads = [s.handle.unload.remote() for s in ready]
        if unloads:
            with contextlib.suppress(Exception):
                ray.wait(unloads, num_returns=len(unloads), timeout=self.grace_s)
        self._actors = [s.handle for s in ready]

    def _new_actor(self, ray: Any) -> Any:
        paths = [] if self._client_mode else _driver_paths()
        return (
            ray.remote(_Worker)
            .options(
                max_concurrency=self.concurrency_per_worker,
                # Ray does not restart a dead worker: the driver replaces it with a new actor,
                # after killing the old one, and bounds how often (see `_start_failed`).
                max_restarts=0,
                max_task_retries=0,  # the driver resubmits, counting attempts
                num_cpus=self.num_cpus_per_worker,
                scheduling_strategy="SPREAD",
            )
            .remote(paths, self.env_vars)
        )

    def _load(self, slot: _Slot, shipped: bytes, combos: list[str]) -> None:
        """Hand the slot's actor the batch's plan; it is ready when `ready_ref` is."""
        slot.state = _SlotState.STARTING
        slot.ready_ref = slot.handle.load.remote(shipped, combos, self.pool_size)
        slot.ready_due = time.monotonic() + self.start_timeout_s

    def _replace(self, ray: Any, slot: _Slot, shipped: bytes, combos: list[str]) -> None:
        """Kill the slot's actor for good and start a new one in its place, taking the plan.

        Killed first whatever became of it — dead, hung, or half-started and about to take a
        CPU — so no CPU stays held by an actor the driver has let go of.
        """
        with contextlib.suppress(Exception):
            ray.kill(slot.handle, no_restart=True)
        slot.handle = self._new_actor(ray)
        slot.kept, slot.pid = False, None
        self._load(slot, shipped, combos)

    def _give_up(self, ray: Any, slot: _Slot, cause: str) -> None:
        """The slot takes no more work this batch; its actor is killed, so it holds no CPU."""
        slot.state, slot.ready_ref = _SlotState.DEAD, None
        slot.cause = f"{slot.cause}; {cause}" if slot.cause else cause  # after why it was lost
        with contextlib.suppress(Exception):
            ray.kill(slot.handle, no_restart=True)

    def _start_failed(
        self, ray: Any, slot: _Slot, exc: BaseException, shipped: bytes, combos: list[str]
    ) -> None:
        """The slot's actor died while starting or taking the plan: replace it, at most
        `max_retries` times in a row (a kept worker found dead is replaced without counting)."""
        if not slot.kept:
            slot.failures += 1
        if slot.failures > self.max_retries:
            self._give_up(
                ray,
                slot,
                f"its Ray worker died while starting or loading the plan {slot.failures} "
                f"times (max_retries={self.max_retries}); last: {_first_line(exc)}",
            )
            return
        self.stats.replaced += 1
        self._replace(ray, slot, shipped, combos)

    def _start_timed_out(self, ray: Any, slot: _Slot) -> None:
        self._give_up(
            ray,
            slot,
            f"its Ray worker did not start within start_timeout_s={self.start_timeout_s:g} s; "
            f"the cluster has {ray.cluster_resources().get('CPU', 0):g} CPUs "
            f"({ray.available_resources().get('CPU', 0):g} free) and each worker asks for "
            f"num_cpus_per_worker={self.num_cpus_per_worker:g}",
        )

    def _start_workers(self, ray: Any, shipped: bytes, combos: list[str]) -> list[_Slot]:
        """Start the pool (or wake the kept one) with the plan; returns once every worker has
        started or been given up. Workers that die while starting are replaced, and the batch
        runs on those that started; it stops if none did, or if a worker cannot load the plan
        (it cannot import the workflow, or open the checkpointer: none could)."""
        from ray.exceptions import RayActorError

        for handle in self._actors[self.num_workers :]:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        kept, self._actors = self._actors[: self.num_workers], []
        missing = self.num_workers - len(kept)
        if self._is_local():
            # A local Ray has no autoscaler: workers that can never fit are an error now, not
            # after start_timeout_s. (CPUs held by other actors are waited for, up to it.)
            cpus = ray.cluster_resources().get("CPU", 0)
            wanted = self.num_workers * self.num_cpus_per_worker
            if wanted > cpus:
                for handle in kept:
                    with contextlib.suppress(Exception):
                        ray.kill(handle, no_restart=True)
                raise ExecutionError(
                    f"{self.num_workers} Ray workers × num_cpus_per_worker="
                    f"{self.num_cpus_per_worker:g} need {wanted:g} CPUs; the local Ray has "
                    f"{cpus:g}; lower num_workers, or num_cpus_per_worker (0 lets "
                    "latency-bound workers share cores)"
                )
        slots = [_Slot(handle=handle, kept=True) for handle in kept]
        slots += [_Slot(handle=self._new_actor(ray)) for _ in range(missing)]
        failure: BaseException | None = None
        try:
            for slot in slots:
                self._load(slot, shipped, combos)
            while failure is None:
                loading = {s.ready_ref: s for s in slots if s.state is _SlotState.STARTING}
                if not loading:
                    break
                wait_s = min(s.ready_due for s in loading.values()) - time.monotonic()
                ready, _ = ray.wait(
                    list(loading), num_returns=1, timeout=max(0.0, min(self.poll_s, wait_s))
                )
                if ready:
                    ready, _ = ray.wait(list(loading), num_returns=len(loading), timeout=0)
                for ref in ready:
                    slot = loading[ref]
                    slot.ready_ref = None
                    try:
                        slot.pid = ray.get(ref, timeout=self.start_timeout_s)
                    except RayActorError as exc:  # it died starting or loading: replace it
                        self._start_failed(ray, slot, exc, shipped, combos)
                        continue
                    except Exception as exc:  # load raised: the plan cannot run on the workers
                        failure = exc
                        break
                    slot.state, slot.failures = _SlotState.READY, 0
                now = time.monotonic()
                for slot in slots:
                    if slot.state is _SlotState.STARTING and now > slot.ready_due:
                        self._start_timed_out(ray, slot)
        except BaseException:
            self._stop_workers(ray, slots, keep=False)
            raise
        started = [s for s in slots if s.state is _SlotState.READY]
        if failure is None and started:
            self.stats.workers = len(started)
            self.stats.worker_pids = [s.pid for s in started if s.pid is not None]
            return slots
        self._stop_workers(ray, slots, keep=False)
        if failure is not None:
            cause = getattr(failure, "cause", None) or failure
            raise ExecutionError(
                f"a Ray worker could not take the batch: {type(cause).__name__}: "
                f"{str(cause)[:2000]}; the workers must be able to import wtb_dagster and the "
                "workflow's modules, and to open the checkpointer"
            ) from failure
        causes = "; ".join(dict.fromkeys(s.cause for s in slots))
        raise ExecutionError(f"none of the {len(slots)} Ray workers started: {causes}")

    def _peak_rss(self, ray: Any, slots: list[_Slot]) -> list[float]:
        refs = [s.handle.peak_rss_mb.remote() for s in slots if s.state is _SlotState.READY]
        try:
            return [round(v, 1) for v in ray.get(refs, timeout=10)]
        except Exception:  # memory figures are informative; a worker gone now has none
            return []


class _Dispatch:
    """The driver's loop for one batch: hand out cases, collect results, replace lost work.

    Cases go out in chunks sized so that a chunk takes about `chunk_s` (from the running mean
    of case latency): one by one while cases are slow, a few at a time when they take
    milliseconds and Ray's per-call cost would otherwise dominate.

    A worker lost with several cases on it gives no clue which one (if any) killed it, so its
    cases become *suspects*: each is retried alone on a worker (no other case beside it). Only
    a loss while a case ran alone counts against its `max_retries`, so a case that crashes its
    worker fails alone, and the cases that shared the worker with it finish normally.
    """

    def __init__(
        self,
        executor: RayExecutor,
        ray: Any,
        plan: BatchPlan,
        slots: list[_Slot],
        shipped: bytes,
        combos: list[str],
        on_result: Callable[[ThreadResult], None],
    ) -> None:
        self.executor, self.ray, self.plan, self.slots = executor, ray, plan, slots
        self.shipped, self.combos, self.on_result = shipped, combos, on_result
        self.stats = executor.stats
        self.queue: deque[_Pending] = deque(_Pending(task) for task in plan.tasks)
        self.suspects: deque[_Pending] = deque()
        self.calls: dict[Any, _Call] = {}
        self.per_worker = 2 * executor.concurrency_per_worker
        self.mean_latency_s: float | None = None

    def run(self) -> None:
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError, WorkerCrashedError

        ray, executor = self.ray, self.executor
        self.submit()
        while self.queue or self.suspects or self.calls:
            starting = [s.ready_ref for s in self.slots if s.state is _SlotState.STARTING]
            waiting = list(self.calls) + starting
            if not waiting:
                causes = "; ".join(sorted({s.cause for s in self.slots if s.cause}))
                left = len(self.queue) + len(self.suspects)
                raise ExecutionError(
                    f"no Ray worker is left to run the batch's {left} remaining cases: "
                    f"{causes or 'all workers are dead'}"
                )
            ready, _ = ray.wait(waiting, num_returns=1, timeout=executor.poll_s)
            if ready:
                ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            for ref in ready:
                call = self.calls.pop(ref, None)
                if call is None:
                    self.worker_ready(ref)
                    continue
                slot = self.slots[call.slot]
                slot.inflight -= 1
                if call.alone:
                    slot.alone = False
                try:
                    results = ray.get(ref, timeout=max(executor.grace_s, 10.0))
                except (RayActorError, WorkerCrashedError) as exc:
                    reason = _first_line(exc)
                    self.lose_worker(call.slot, call.generation, reason)
                    self.retry(call, reason)
                    continue
                except RayTaskError as exc:
                    if isinstance(exc.cause, _PlanNotLoaded):
                        self.queue.extendleft(reversed(call.pendings))  # they did not run
                        # its actor lost the plan (Ray restarted it): replace it, or it would
                        # refuse every case sent to it
                        reason = "its Ray worker restarted without the plan"
                        self.lose_worker(call.slot, call.generation, reason)
                        continue
                    # the worker records each case's own errors; this is the call failing as
                    # a whole (say, a result Ray cannot serialise): it fails its cases
                    error = _first_line(exc.cause or exc)
                    for pending in call.pendings:
                        self.on_result(_failure(self.plan, pending.task, pending.attempt, error))
                    continue
                except GetTimeoutError:
                    self.retry(call, "its results could not be fetched from the worker")
                    continue
                for result in results:
                    self.observe(result.latency_s)
                    self.on_result(result)
            self.check_deadlines()
            self.submit()

    def observe(self, latency_s: float) -> None:
        mean = self.mean_latency_s
        self.mean_latency_s = latency_s if mean is None else 0.9 * mean + 0.1 * latency_s

    def chunk_size(self, workers: int) -> int:
        chunk_s = self.executor.chunk_s
        if not chunk_s or self.mean_latency_s is None:
            return 1  # nothing measured yet: one by one
        size = int(chunk_s / max(self.mean_latency_s, 1e-4))
        # keep every slot fed to the end of the batch
        fair = math.ceil(len(self.queue) / max(1, workers * self.per_worker))
        return max(1, min(size, fair, 64))

    def submit(self) -> None:
        ready = [i for i, s in enumerate(self.slots) if s.state is _SlotState.READY and not s.alone]
        if self.suspects and ready:
            # A suspect needs an idle worker: stop feeding the least busy one until it is.
            reserved = min(ready, key=lambda i: self.slots[i].inflight)
            if self.slots[reserved].inflight == 0:
                self.send(reserved, [self.suspects.popleft()], alone=True)
            ready.remove(reserved)
        size = self.chunk_size(len(ready))
        while self.queue:
            free = [i for i in ready if self.slots[i].inflight < self.per_worker]
            if not free:
                return
            chunk = [self.queue.popleft() for _ in range(min(size, len(self.queue)))]
            self.send(min(free, key=lambda i: self.slots[i].inflight), chunk)

    def send(self, index: int, pendings: list[_Pending], alone: bool = False) -> None:
        slot = self.slots[index]
        ref = slot.handle.run.remote([(p.task, p.attempt) for p in pendings])
        timeout_s = self.plan.timeout_s
        # a chunk's cases run one after the other; it may queue behind one chunk per slot
        budget = 2 * len(pendings) * timeout_s + self.executor.grace_s if timeout_s else None
        due = time.monotonic() + budget if budget is not None else None
        self.calls[ref] = _Call(pendings, index, slot.generation, alone, due)
        slot.inflight += 1
        slot.alone = alone
        self.stats.submitted += len(pendings)

    def lose_worker(self, index: int, generation: int, reason: str) -> None:
        """The slot's worker died or hung mid-batch: a new actor replaces it (the old one
        killed for good) and takes the plan before it gets more cases."""
        slot = self.slots[index]
        if slot.state is not _SlotState.READY or generation != slot.generation:
            return  # this loss was already noted
        slot.generation += 1
        self.stats.worker_deaths += 1
        slot.cause, slot.alone = reason, False
        self.executor._replace(self.ray, slot, self.shipped, self.combos)

    def retry(self, call: _Call, reason: str) -> None:
        for pending in call.pendings:
            charged = pending.charged + (1 if call.alone else 0)
            if charged > self.executor.max_retries:
                error = (
                    f"worker lost: the Ray worker running this case alone died {charged} "
                    f"times (max_retries={self.executor.max_retries}); last: {reason}"
                )
                self.on_result(_failure(self.plan, pending.task, pending.attempt, error))
                continue
            self.stats.retried += 1
            # A retry continues the thread from its last checkpoint: never afresh again.
            task = replace(pending.task, fresh=False)
            self.suspects.append(_Pending(task, pending.attempt + 1, charged))

    def check_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.state is _SlotState.STARTING and now > slot.ready_due:
                self.executor._start_timed_out(self.ray, slot)
        for ref, call in list(self.calls.items()):
            slot = self.slots[call.slot]
            if call.due is not None and now > call.due:
                del self.calls[ref]
                slot.inflight -= 1
                self.hung(slot, call)
            elif slot.state is _SlotState.DEAD:
                del self.calls[ref]
                slot.inflight -= 1
                self.retry(replace(call, alone=False), slot.cause)

    def hung(self, slot: _Slot, call: _Call) -> None:
        """Cases overdue by their whole budget: their worker is replaced. A case run alone is
        what hung it and is recorded as timed out; cases run beside others are retried alone."""
        if call.generation == slot.generation and slot.state is _SlotState.READY:
            self.stats.hung_workers += 1
            # Killed and replaced; the other cases it had are retried as after a crash.
            self.lose_worker(call.slot, call.generation, "replaced: a case overran its deadline")
        timeout_s = self.plan.timeout_s or 0.0
        reason = (
            f"no result from its Ray worker within 2 × {timeout_s:g} s + "
            f"{self.executor.grace_s:g} s grace (the case timeout, queueing and scoring)"
        )
        if not call.alone:
            self.retry(call, reason)
            return
        pending = call.pendings[0]
        result = _failure(
            self.plan,
            pending.task,
            pending.attempt,
            f"timed out: {reason}, running alone; its worker was restarted",
        )
        result.status = TIMED_OUT
        self.on_result(result)

    def worker_ready(self, ref: Any) -> None:
        from ray.exceptions import RayActorError

        slot = next(s for s in self.slots if s.ready_ref is not None and s.ready_ref == ref)
        slot.ready_ref = None
        try:
            slot.pid = self.ray.get(ref, timeout=self.executor.start_timeout_s)
        except RayActorError as exc:  # the replacement died too: replaced again, if allowed
            self.executor._start_failed(self.ray, slot, exc, self.shipped, self.combos)
            return
        except Exception as exc:  # the replacement cannot take the plan: the slot is lost
            cause = getattr(exc, "cause", None) or exc
            self.executor._give_up(self.ray, slot, f"its replacement failed: {_first_line(cause)}")
            return
        slot.state, slot.failures = _SlotState.READY, 0
        if slot.pid not in self.stats.worker_pids:
            self.stats.worker_pids.append(slot.pid)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:500] if text else ''}"


def _failure(plan: BatchPlan, task: ThreadTask, attempts: int, error: str) -> ThreadResult:
    result = new_result(task, plan.workflow.name, EXECUTOR_NAME, plan.run_id, error)
    result.attempts = attempts
    return result
