"""The batch's worker actors as the driver sees them: one slot per worker, whose actor is
started, handed the plan, replaced when it dies and given up when it keeps dying.

A slot is STARTING while its actor starts and takes the plan, READY once it has it, and DEAD
when given up (its actor killed: it takes nothing more this batch). A worker lost mid-batch is
replaced: READY → STARTING with a new actor. An actor let go of is always killed for good
first (`kill` does not let Ray restart it): a dead, hung or half-started actor keeps no CPU. A
worker that dies while it starts or loads the plan — or, kept between batches, while idle — is
replaced the same way, at most `max_retries` times in a row; a slot given up leaves the batch
to the others, and only a batch left with no worker stops.

Every worker must be up (process started, plan unpickled — which imports the workflow's
modules — checkpointer open, graphs compiled) within `start_timeout_s`, and a replacement
within the same time, or it is given up. Each wait returns within `poll_s`, so deadlines are
checked between waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from wtb_dagster.environments import EnvBuildError, installer_message
from wtb_dagster.errors import ExecutionError
from wtb_dagster.ray_handle import EnvSetupFailed, Handle, WorkerLost, first_line


@dataclass
class EnvStats:
    """One combo environment of a batch: its combos, how long Ray took to build it (apart
    from any case's latency), and the workers that ran in it."""

    key: str
    description: str
    combos: list[str]
    build_s: float
    worker_pids: list[int] = field(default_factory=list)


@dataclass
class RayStats:
    """What the last `run` did besides running cases (summed over its environments)."""

    workers: int = 0  # workers that started and took the plan
    submitted: int = 0  # hand-outs of a case to a worker, retries included
    retried: int = 0  # cases handed out again after their worker was lost
    worker_deaths: int = 0  # workers lost mid-batch: crashed, killed, or replaced as hung
    hung_workers: int = 0  # of those, replaced because a case overran its deadline
    replaced: int = 0  # workers replaced after dying while starting or loading (or kept, idle)
    start_s: float = 0.0  # starting workers and handing them the plan; builds not included
    worker_pids: list[int] = field(default_factory=list)
    worker_peak_rss_mb: list[float] = field(default_factory=list)  # at the end of the batch
    environments: list[EnvStats] = field(default_factory=list)  # those built: not the driver's


class SlotState(Enum):
    STARTING = "starting"  # its actor is starting or taking the plan (`ready_ref`)
    READY = "ready"  # has the plan: takes cases
    DEAD = "dead"  # given up, its actor killed: takes nothing more this batch


# The states a slot may enter from each state. STARTING again: a new actor in its place.
NEXT_STATES = {
    SlotState.STARTING: {SlotState.STARTING, SlotState.READY, SlotState.DEAD},
    SlotState.READY: {SlotState.STARTING},
    SlotState.DEAD: set(),
}


@dataclass
class Slot:
    """One worker of the pool: the actor there now, replaced as needed."""

    actor: Any
    inflight: int = 0
    generation: int = 0  # bumped at each loss, so one loss is counted once
    state: SlotState = SlotState.STARTING
    path: list[SlotState] = field(default_factory=list)  # the states it entered, in order
    alone: bool = False  # running one suspect case and nothing else
    ready_ref: Any = None
    ready_due: float = 0.0
    pid: int | None = None
    cause: str = ""
    kept: bool = False  # its actor was kept from an earlier batch
    failures: int = 0  # its actors that died in a row while starting or taking the plan

    def enter(self, state: SlotState) -> None:
        if state not in NEXT_STATES[self.state]:
            raise RuntimeError(f"a worker slot cannot go from {self.state.name} to {state.name}")
        self.state = state
        self.path.append(state)


class Pool:
    """The slots of one batch, and their lifecycle, driven through a `Handle`."""

    def __init__(
        self,
        handle: Handle,
        stats: RayStats,
        *,
        max_retries: int,
        start_timeout_s: float,
        poll_s: float,
        grace_s: float,
        cpus_per_worker: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handle, self.stats, self.clock = handle, stats, clock
        self.max_retries, self.start_timeout_s = max_retries, start_timeout_s
        self.poll_s, self.grace_s, self.cpus_per_worker = poll_s, grace_s, cpus_per_worker
        self.slots: list[Slot] = []

    def start(self, kept: list[Any], size: int) -> None:
        """Start `size` workers — the `kept` actors first, new ones for the rest — with the
        plan; returns once every worker has started or been given up. Workers that die while
        starting are replaced, and the batch runs on those that started; it stops if none did,
        or if a worker cannot load the plan (it cannot import the workflow, or open the
        checkpointer: none could)."""
        slots = [Slot(actor=actor, kept=True) for actor in kept]
        slots += [Slot(actor=self.handle.new_actor()) for _ in range(size - len(kept))]
        self.slots = slots
        failure: BaseException | None = None
        try:
            for slot in slots:
                self.load(slot)
            while failure is None:
                loading = {s.ready_ref: s for s in slots if s.state is SlotState.STARTING}
                if not loading:
                    break
                wait_s = min(s.ready_due for s in loading.values()) - self.clock()
                ready = self.handle.wait(list(loading), max(0.0, min(self.poll_s, wait_s)))
                for ref in ready:
                    slot = loading[ref]
                    try:
                        self.take_plan(slot)
                    except WorkerLost as exc:  # it died starting or loading: replace it
                        self.start_failed(slot, exc)
                        continue
                    except Exception as exc:  # load raised: the plan cannot run on the workers
                        failure = exc
                        break
                self.check_start_deadlines()
        except BaseException:
            self.stop(keep=False)
            raise
        started = [s for s in slots if s.state is SlotState.READY]
        if failure is None and started:
            # += : a batch of several environments starts one pool per environment
            self.stats.workers += len(started)
            self.stats.worker_pids += [s.pid for s in started if s.pid is not None]
            return
        self.stop(keep=False)
        if isinstance(failure, EnvSetupFailed):  # on a node where it was not built yet
            raise EnvBuildError(
                f"on a worker's node: {installer_message(failure.cause)}"
            ) from failure
        if failure is not None:
            cause = getattr(failure, "cause", None) or failure
            raise ExecutionError(
                f"a Ray worker could not take the batch: {type(cause).__name__}: "
                f"{str(cause)[:2000]}; the workers must be able to import wtb_dagster and the "
                "workflow's modules, and to open the checkpointer"
            ) from failure
        causes = "; ".join(dict.fromkeys(s.cause for s in slots))
        raise ExecutionError(f"none of the {len(slots)} Ray workers started: {causes}")

    def load(self, slot: Slot) -> None:
        """Hand the slot's actor the batch's plan; it is ready when `ready_ref` is."""
        slot.enter(SlotState.STARTING)
        slot.ready_ref = self.handle.load(slot.actor)
        slot.ready_due = self.clock() + self.start_timeout_s

    def take_plan(self, slot: Slot) -> None:
        """The slot's `ready_ref` is ready: the slot is READY, or this raises why not
        (`WorkerLost`: its actor died; anything else: the load raised)."""
        ref, slot.ready_ref = slot.ready_ref, None
        slot.pid = self.handle.get(ref, self.start_timeout_s)
        slot.enter(SlotState.READY)
        slot.failures = 0

    def replace(self, slot: Slot) -> None:
        """Kill the slot's actor for good and start a new one in its place, taking the plan.

        Killed first whatever became of it — dead, hung, or half-started and about to take a
        CPU — so no CPU stays held by an actor the driver has let go of.
        """
        self.handle.kill(slot.actor)
        slot.actor = self.handle.new_actor()
        slot.kept, slot.pid = False, None
        self.load(slot)

    def give_up(self, slot: Slot, cause: str) -> None:
        """The slot takes no more work this batch; its actor is killed, so it holds no CPU."""
        slot.enter(SlotState.DEAD)
        slot.ready_ref = None
        slot.cause = f"{slot.cause}; {cause}" if slot.cause else cause  # after why it was lost
        self.handle.kill(slot.actor)

    def start_failed(self, slot: Slot, exc: WorkerLost) -> None:
        """The slot's actor died while starting or taking the plan: replace it, at most
        `max_retries` times in a row (a kept worker found dead is replaced without counting)."""
        if not slot.kept:
            slot.failures += 1
        if slot.failures > self.max_retries:
            self.give_up(
                slot,
                f"its Ray worker died while starting or loading the plan {slot.failures} "
                f"times (max_retries={self.max_retries}); last: {first_line(exc.cause)}",
            )
            return
        self.stats.replaced += 1
        self.replace(slot)

    def check_start_deadlines(self) -> None:
        """Give up the slots whose actor is not up within `start_timeout_s`."""
        now = self.clock()
        for slot in self.slots:
            if slot.state is SlotState.STARTING and now > slot.ready_due:
                total, free = self.handle.cpus()
                self.give_up(
                    slot,
                    f"its Ray worker did not start within start_timeout_s="
                    f"{self.start_timeout_s:g} s; the cluster has {total:g} CPUs ({free:g} "
                    f"free) and each worker asks for num_cpus_per_worker="
                    f"{self.cpus_per_worker:g}",
                )

    def stop(self, keep: bool) -> list[Any]:
        """End the batch's workers, or, with `keep`, keep those that are READY (unloaded, warm)
        and end the others; returns the actors kept."""
        if not keep:
            for slot in self.slots:
                self.handle.kill(slot.actor)
            return []
        for slot in self.slots:
            if slot.state is not SlotState.READY:  # a replacement still starting, say
                self.handle.kill(slot.actor)
        ready = [s.actor for s in self.slots if s.state is SlotState.READY]
        self.handle.unload(ready, self.grace_s)
        return ready

    def peak_rss_mb(self) -> list[float]:
        ready = [s.actor for s in self.slots if s.state is SlotState.READY]
        try:
            return [round(v, 1) for v in self.handle.peak_rss_mb(ready, 10)]
        except Exception:  # memory figures are informative; a worker gone now has none
            return []
