"""The driver's loop for one batch: hand out cases to the pool's workers, collect results,
replace lost work — through the pool's `Handle`, so it runs without Ray in tests.

Cases go out in chunks sized so that a chunk takes about `chunk_s` (from the running mean of
case latency): one by one while cases are slow, a few at a time when they take milliseconds
and Ray's per-call cost would otherwise dominate; at most `per_worker` calls are in flight per
worker. Only the driver calls `on_result`, once per case.

A worker lost with several cases on it gives no clue which one (if any) killed it, so its
cases become *suspects*: each is retried alone on a worker (no other case beside it). Only a
loss while a case ran alone counts against its `max_retries`, so a case that crashes its worker
fails alone, naming the loss, and the cases that shared the worker with it finish normally. A
retried case continues its thread from its last checkpoint (`fresh=False`): checkpoints are
written with durability "sync", so the nodes it had finished do not run again.
`ThreadResult.attempts` counts every hand-out.

Deadlines (nothing is waited for without one): each wait returns within `poll_s`, and `get` is
only called on results that are ready, with a timeout. When the plan has a timeout, the result
of a call with k cases is due `2 × k × timeout_s + grace_s` after it was handed out (it may
queue behind at most one call per slot of its worker, then its cases run one after the other
for at most `timeout_s` each; `grace_s` covers scoring and checkpoint reads). A worker that
misses that is taken to be hung and replaced; its cases are retried alone like those of a
crashed worker, and a case that hangs its worker while running alone is recorded as timed out.
Without a plan timeout a case may run as long as its nodes do, as on the local executor.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from wtb_dagster.errors import ExecutionError
from wtb_dagster.execution import BatchPlan, ThreadTask
from wtb_dagster.ray_handle import CallFailed, FetchTimeout, PlanLost, WorkerLost, first_line
from wtb_dagster.ray_pool import Pool, Slot, SlotState
from wtb_dagster.ray_worker import failure
from wtb_dagster.threads import TIMED_OUT, ThreadResult


@dataclass
class Pending:
    task: ThreadTask
    attempt: int = 1  # how many times the case has been handed out, this one included
    charged: int = 0  # worker losses while it ran alone: they count against max_retries


@dataclass
class Call:
    pendings: list[Pending]  # the chunk of cases one call runs
    slot: int
    generation: int
    alone: bool
    due: float | None


class Dispatch:
    """Runs one batch's cases on a started pool; `run` returns when every case has a result."""

    def __init__(
        self,
        pool: Pool,
        plan: BatchPlan,
        on_result: Callable[[ThreadResult], None],
        *,
        per_worker: int,
        max_retries: int,
        chunk_s: float,
        grace_s: float,
        poll_s: float,
    ) -> None:
        self.pool, self.handle, self.slots = pool, pool.handle, pool.slots
        self.plan, self.on_result, self.stats = plan, on_result, pool.stats
        self.per_worker, self.max_retries = per_worker, max_retries
        self.chunk_s, self.grace_s, self.poll_s = chunk_s, grace_s, poll_s
        self.queue: deque[Pending] = deque(Pending(task) for task in plan.tasks)
        self.suspects: deque[Pending] = deque()
        self.calls: dict[Any, Call] = {}
        self.mean_latency_s: float | None = None

    def run(self) -> None:
        self.submit()
        while self.queue or self.suspects or self.calls:
            starting = [s.ready_ref for s in self.slots if s.state is SlotState.STARTING]
            waiting = list(self.calls) + starting
            if not waiting:
                causes = "; ".join(sorted({s.cause for s in self.slots if s.cause}))
                left = len(self.queue) + len(self.suspects)
                raise ExecutionError(
                    f"no Ray worker is left to run the batch's {left} remaining cases: "
                    f"{causes or 'all workers are dead'}"
                )
            for ref in self.handle.wait(waiting, self.poll_s):
                call = self.calls.pop(ref, None)
                if call is None:
                    self.worker_ready(ref)
                else:
                    self.collect(ref, call)
            self.check_deadlines()
            self.submit()

    def collect(self, ref: Any, call: Call) -> None:
        """A call's reference is ready: its results, or what became of its cases."""
        slot = self.slots[call.slot]
        slot.inflight -= 1
        if call.alone:
            slot.alone = False
        try:
            results = self.handle.get(ref, max(self.grace_s, 10.0))
        except WorkerLost as exc:
            reason = first_line(exc.cause)
            self.lose_worker(call.slot, call.generation, reason)
            self.retry(call, reason)
            return
        except PlanLost:
            self.queue.extendleft(reversed(call.pendings))  # they did not run
            # its actor lost the plan (Ray restarted it): replace it, or it would refuse
            # every case sent to it
            self.lose_worker(
                call.slot, call.generation, "its Ray worker restarted without the plan"
            )
            return
        except CallFailed as exc:
            # the worker records each case's own errors; this is the call failing as a whole
            # (say, a result Ray cannot serialise): it fails its cases
            error = first_line(exc.cause)
            for pending in call.pendings:
                self.on_result(failure(self.plan, pending.task, pending.attempt, error))
            return
        except FetchTimeout:
            self.retry(call, "its results could not be fetched from the worker")
            return
        for result in results:
            self.observe(result.latency_s)
            self.on_result(result)

    def observe(self, latency_s: float) -> None:
        mean = self.mean_latency_s
        self.mean_latency_s = latency_s if mean is None else 0.9 * mean + 0.1 * latency_s

    def chunk_size(self, workers: int) -> int:
        if not self.chunk_s or self.mean_latency_s is None:
            return 1  # nothing measured yet: one by one
        size = int(self.chunk_s / max(self.mean_latency_s, 1e-4))
        # keep every slot fed to the end of the batch
        fair = math.ceil(len(self.queue) / max(1, workers * self.per_worker))
        return max(1, min(size, fair, 64))

    def submit(self) -> None:
        ready = [i for i, s in enumerate(self.slots) if s.state is SlotState.READY and not s.alone]
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

    def send(self, index: int, pendings: list[Pending], alone: bool = False) -> None:
        slot = self.slots[index]
        ref = self.handle.submit(slot.actor, [(p.task, p.attempt) for p in pendings])
        timeout_s = self.plan.timeout_s
        # a chunk's cases run one after the other; it may queue behind one chunk per slot
        budget = 2 * len(pendings) * timeout_s + self.grace_s if timeout_s else None
        due = self.pool.clock() + budget if budget is not None else None
        self.calls[ref] = Call(pendings, index, slot.generation, alone, due)
        slot.inflight += 1
        slot.alone = alone
        self.stats.submitted += len(pendings)

    def lose_worker(self, index: int, generation: int, reason: str) -> None:
        """The slot's worker died or hung mid-batch: a new actor replaces it (the old one
        killed for good) and takes the plan before it gets more cases."""
        slot = self.slots[index]
        if slot.state is not SlotState.READY or generation != slot.generation:
            return  # this loss was already noted
        slot.generation += 1
        self.stats.worker_deaths += 1
        slot.cause, slot.alone = reason, False
        self.pool.replace(slot)

    def retry(self, call: Call, reason: str) -> None:
        for pending in call.pendings:
            charged = pending.charged + (1 if call.alone else 0)
            if charged > self.max_retries:
                error = (
                    f"worker lost: the Ray worker running this case alone died {charged} "
                    f"times (max_retries={self.max_retries}); last: {reason}"
                )
                self.on_result(failure(self.plan, pending.task, pending.attempt, error))
                continue
            self.stats.retried += 1
            # A retry continues the thread from its last checkpoint: never afresh again.
            task = replace(pending.task, fresh=False)
            self.suspects.append(Pending(task, pending.attempt + 1, charged))

    def check_deadlines(self) -> None:
        self.pool.check_start_deadlines()
        now = self.pool.clock()
        for ref, call in list(self.calls.items()):
            slot = self.slots[call.slot]
            if call.due is not None and now > call.due:
                del self.calls[ref]
                slot.inflight -= 1
                self.hung(slot, call)
            elif slot.state is SlotState.DEAD:
                del self.calls[ref]
                slot.inflight -= 1
                self.retry(replace(call, alone=False), slot.cause)

    def hung(self, slot: Slot, call: Call) -> None:
        """Cases overdue by their whole budget: their worker is replaced. A case run alone is
        what hung it and is recorded as timed out; cases run beside others are retried alone."""
        if call.generation == slot.generation and slot.state is SlotState.READY:
            self.stats.hung_workers += 1
            # Killed and replaced; the other cases it had are retried as after a crash.
            self.lose_worker(call.slot, call.generation, "replaced: a case overran its deadline")
        timeout_s = self.plan.timeout_s or 0.0
        reason = (
            f"no result from its Ray worker within 2 × {timeout_s:g} s + "
            f"{self.grace_s:g} s grace (the case timeout, queueing and scoring)"
        )
        if not call.alone:
            self.retry(call, reason)
            return
        pending = call.pendings[0]
        result = failure(
            self.plan,
            pending.task,
            pending.attempt,
            f"timed out: {reason}, running alone; its worker was restarted",
        )
        result.status = TIMED_OUT
        self.on_result(result)

    def worker_ready(self, ref: Any) -> None:
        slot = next(s for s in self.slots if s.ready_ref is not None and s.ready_ref == ref)
        try:
            self.pool.take_plan(slot)
        except WorkerLost as exc:  # the replacement died too: replaced again, if allowed
            self.pool.start_failed(slot, exc)
            return
        except Exception as exc:  # the replacement cannot take the plan: the slot is lost
            cause = getattr(exc, "cause", None) or exc
            self.pool.give_up(slot, f"its replacement failed: {first_line(cause)}")
            return
        if slot.pid not in self.stats.worker_pids:
            self.stats.worker_pids.append(slot.pid)
