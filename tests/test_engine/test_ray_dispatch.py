"""The Ray pool's and dispatcher's state machines, driven without any process: `FakeRay` is an
in-process `Handle` whose workers run cases as they are handed out, and can be told to die
(their calls end in `WorkerLost`, as Ray's `ActorDiedError` becomes), hang (their calls never
become ready), forget the plan, or fail, die or hang while loading it. Time is the fake's own:
a wait with nothing ready moves it on by its timeout, so deadlines pass without sleeping.
"""

from __future__ import annotations

import ast
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import wtb_dagster
from tests.conftest import toy_workflow
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ExecutionError
from wtb_dagster.execution import BatchPlan, ThreadTask, new_result
from wtb_dagster.ray_dispatch import Dispatch
from wtb_dagster.ray_handle import CallFailed, HandleError, PlanLost, WorkerLost
from wtb_dagster.ray_pool import Pool, RayStats, Slot, SlotState
from wtb_dagster.ray_worker import PlanNotLoaded
from wtb_dagster.threads import FAILED, SUCCEEDED, TIMED_OUT, ThreadResult

STARTING, READY, DEAD = SlotState.STARTING, SlotState.READY, SlotState.DEAD
WORKFLOW = toy_workflow()


class FakeActorDied(Exception):
    """The cause the fake gives a lost worker's calls, where Ray gives `ActorDiedError`."""


@dataclass(eq=False)  # hashed by identity, as Ray's references are
class FakeRef:
    actor: FakeActor
    cases: list[str]
    done: bool = False
    value: Any = None
    error: HandleError | None = None

    def end(self, value: Any = None, error: HandleError | None = None) -> None:
        self.done, self.value, self.error = True, value, error


@dataclass(eq=False)
class FakeActor:
    id: int
    pid: int
    alive: bool = True
    hung: bool = False
    has_plan: bool = False
    unfinished: list[FakeRef] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    case: str
    fresh: bool
    attempt: int
    actor: int
    fault: str | None


class FakeRay:
    """A `Handle` whose workers live in this process.

    `faults` maps a case id to what happens on its successive runs, one entry consumed per
    run: "die" (its worker dies with every call it had not finished), "hang" (its worker stops
    answering), "forget" (its worker has lost the plan when handed the case). `load_fault`
    maps the n-th load (0-based) to "die", "hang" or "fail" (the load raises). A wait past
    `horizon_s` fails the test rather than letting a loop without a deadline spin forever.
    """

    def __init__(
        self,
        faults: dict[str, list[str]] | None = None,
        load_fault: Callable[[int], str | None] = lambda n: None,
        latency_s: float = 0.001,
        horizon_s: float = 600.0,
    ) -> None:
        self.faults = {case: list(plan) for case, plan in (faults or {}).items()}
        self.load_fault, self.latency_s, self.horizon_s = load_fault, latency_s, horizon_s
        self.now = 0.0
        self.actors: list[FakeActor] = []
        self.calls: list[FakeRef] = []  # every `submit`, in order
        self.runs: list[Run] = []  # every case a worker started to run
        self.killed: list[int] = []
        self.loads = 0

    def clock(self) -> float:
        return self.now

    # -- the Handle -------------------------------------------------------------------------

    def new_actor(self) -> FakeActor:
        actor = FakeActor(id=len(self.actors), pid=1000 + len(self.actors))
        self.actors.append(actor)
        return actor

    def load(self, actor: FakeActor) -> FakeRef:
        ref = FakeRef(actor, [])
        fault = self.load_fault(self.loads)
        self.loads += 1
        if not actor.alive:
            ref.end(error=WorkerLost(FakeActorDied(f"actor {actor.id} is dead")))
        elif fault == "die":
            actor.unfinished.append(ref)
            self._lose(actor, "died while loading the plan")
        elif fault == "hang":
            actor.hung = True
            actor.unfinished.append(ref)
        elif fault == "fail":
            ref.end(error=CallFailed(ImportError("No module named 'missing_workflow'")))
        else:
            actor.has_plan = True
            ref.end(actor.pid)
        return ref

    def submit(self, actor: FakeActor, tasks: list[tuple[ThreadTask, int]]) -> FakeRef:
        ref = FakeRef(actor, [task.case.id for task, _ in tasks])
        self.calls.append(ref)
        if not actor.alive:
            ref.end(error=WorkerLost(FakeActorDied(f"actor {actor.id} is dead")))
            return ref
        if actor.hung:
            actor.unfinished.append(ref)
            return ref
        for task, _ in tasks:
            if self._peek(task.case.id) == "forget":
                self.faults[task.case.id].pop(0)
                actor.has_plan = False
        if not actor.has_plan:
            ref.end(error=PlanLost(PlanNotLoaded(actor.pid)))
            return ref
        results = []
        for task, attempt in tasks:
            fault = self.faults[task.case.id].pop(0) if self._peek(task.case.id) else None
            self.runs.append(Run(task.case.id, task.fresh, attempt, actor.id, fault))
            if fault == "die":
                actor.unfinished.append(ref)
                self._lose(actor, f"killed while running {task.case.id}")
                return ref
            if fault == "hang":
                actor.hung = True
                actor.unfinished.append(ref)
                return ref
            results.append(self._result(task, attempt))
        ref.end(results)
        return ref

    def wait(self, refs: list[FakeRef], timeout_s: float) -> list[FakeRef]:
        assert 0 <= timeout_s < math.inf, "every wait has a deadline"
        assert self.now < self.horizon_s, f"still waiting after {self.horizon_s:g} fake seconds"
        ready = [ref for ref in refs if ref.done]
        if not ready:
            self.now += max(timeout_s, 0.001)
        return ready

    def get(self, ref: FakeRef, timeout_s: float) -> Any:
        assert ref.done, "get is only called on a ready reference"
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor: FakeActor) -> None:
        self.killed.append(actor.id)
        self._lose(actor, "killed by the driver")

    def unload(self, actors: list[FakeActor], timeout_s: float) -> None:
        for actor in actors:
            actor.has_plan = False

    def peak_rss_mb(self, actors: list[FakeActor], timeout_s: float) -> list[float]:
        return [100.0 for _ in actors]

    def cpus(self) -> tuple[float, float]:
        return 8.0, 8.0

    # -- inside the fake ---------------------------------------------------------------------

    def _peek(self, case: str) -> str | None:
        planned = self.faults.get(case)
        return planned[0] if planned else None

    def _lose(self, actor: FakeActor, why: str) -> None:
        actor.alive = False
        for ref in actor.unfinished:
            ref.end(error=WorkerLost(FakeActorDied(f"actor {actor.id} {why}")))
        actor.unfinished = []

    def _result(self, task: ThreadTask, attempt: int) -> ThreadResult:
        result = new_result(task, WORKFLOW.name, "ray", None)
        result.status, result.error = SUCCEEDED, None
        result.final_values = {"answer": task.case.input["x"]}
        result.latency_s, result.attempts = self.latency_s, attempt
        return result


@dataclass
class Batch:
    results: dict[str, list[ThreadResult]]
    pool: Pool
    stats: RayStats

    def one(self, case: str) -> ThreadResult:
        (result,) = self.results[case]
        return result


def case_ids(n: int) -> list[str]:
    return [f"c{i:02d}" for i in range(n)]


def run_on(
    fake: FakeRay,
    n: int = 20,
    *,
    workers: int = 2,
    concurrency: int = 1,
    max_retries: int = 3,
    timeout_s: float | None = None,
    chunk_s: float = 0.05,
    start_timeout_s: float = 5.0,
) -> Batch:
    """Start a pool on the fake and dispatch `n` cases (each a forced run: `fresh=True`)."""
    tasks = [
        ThreadTask(
            "baseline", TestCase(id=case, input={"x": i}), f"toy/baseline/{case}", fresh=True
        )
        for i, case in enumerate(case_ids(n))
    ]
    plan = BatchPlan(WORKFLOW, "sqlite:///unused.db", tasks, timeout_s=timeout_s)
    stats = RayStats()
    pool = Pool(
        fake,
        stats,
        max_retries=max_retries,
        start_timeout_s=start_timeout_s,
        poll_s=0.1,
        grace_s=0.5,
        cpus_per_worker=1.0,
        clock=fake.clock,
    )
    results: dict[str, list[ThreadResult]] = defaultdict(list)
    pool.start([], workers)
    try:
        Dispatch(
            pool,
            plan,
            lambda result: results[result.case_id].append(result),
            per_worker=2 * concurrency,
            max_retries=max_retries,
            chunk_s=chunk_s,
            grace_s=0.5,
            poll_s=0.1,
        ).run()
    finally:
        pool.stop(keep=False)
    return Batch(dict(results), pool, stats)


def assert_every_actor_ended(fake: FakeRay) -> None:
    assert [a.id for a in fake.actors if a.alive] == []
    assert set(fake.killed) == {a.id for a in fake.actors}


def test_every_case_completes_once_in_chunks_on_healthy_workers():
    fake = FakeRay()
    batch = run_on(fake, n=40, workers=3)
    assert sorted(batch.results) == case_ids(40)
    assert all(len(rs) == 1 and rs[0].status == SUCCEEDED for rs in batch.results.values())
    assert {rs[0].attempts for rs in batch.results.values()} == {1}
    assert Counter(run.case for run in fake.runs) == Counter(case_ids(40))
    # one by one until a latency is known, then in chunks: fewer calls than cases
    assert len(fake.calls[0].cases) == 1 and max(len(c.cases) for c in fake.calls) > 1
    assert len(fake.calls) < 40
    assert batch.stats.submitted == 40 and batch.stats.worker_deaths == batch.stats.retried == 0
    assert [s.path for s in batch.pool.slots] == [[STARTING, READY]] * 3
    assert_every_actor_ended(fake)


def test_worker_lost_mid_chunk_its_cases_resume_on_another_worker_counted_in_attempts():
    fake = FakeRay(faults={"c10": ["die"]})
    batch = run_on(fake, n=20)
    (killing,) = [c for c in fake.calls if "c10" in c.cases and isinstance(c.error, WorkerLost)]
    assert killing.cases.index("c10") > 0  # cases before it in its chunk had run
    dead = killing.actor.id
    lost = {case for c in fake.calls if isinstance(c.error, WorkerLost) for case in c.cases}
    assert set(killing.cases) <= lost
    assert sorted(batch.results) == case_ids(20)
    for case in case_ids(20):
        result = batch.one(case)
        assert result.status == SUCCEEDED
        assert result.attempts == (2 if case in lost else 1), case
    for case in lost:
        *_, retry = [run for run in fake.runs if run.case == case]
        # from its last checkpoint, never afresh again, and not on the worker that died
        assert (retry.fresh, retry.attempt) == (False, 2) and retry.actor != dead
    assert all(run.fresh for run in fake.runs if run.attempt == 1)
    assert batch.stats.worker_deaths == 1 and batch.stats.retried == len(lost)
    assert batch.stats.submitted == 20 + len(lost)
    assert_every_actor_ended(fake)


@pytest.mark.parametrize("max_retries", [0, 2])
def test_case_that_kills_every_worker_it_touches_fails_after_max_retries(max_retries):
    fake = FakeRay(faults={"c03": ["die"] * 10})
    batch = run_on(fake, n=12, max_retries=max_retries)
    result = batch.one("c03")
    assert result.status == FAILED
    died = max_retries + 1  # while it ran alone; the first loss, beside others, is not charged
    assert result.error.startswith(
        f"worker lost: the Ray worker running this case alone died {died} times "
        f"(max_retries={max_retries}); last: FakeActorDied: actor "
    ), result.error
    runs = [run for run in fake.runs if run.case == "c03"]
    assert len(runs) == result.attempts == died + 1
    assert len({run.actor for run in runs}) == len(runs)  # each on a fresh worker, each killed
    assert batch.stats.worker_deaths == len(runs)
    # the cases that shared a worker with it finish normally
    others = [batch.one(case) for case in case_ids(12) if case != "c03"]
    assert {r.status for r in others} == {SUCCEEDED}
    assert_every_actor_ended(fake)


def test_hung_worker_past_its_deadline_is_replaced_and_only_its_case_times_out():
    fake = FakeRay(faults={"c02": ["hang"] * 10})
    batch = run_on(fake, n=12, timeout_s=1.0)
    result = batch.one("c02")
    assert result.status == TIMED_OUT
    assert result.error.startswith(
        "timed out: no result from its Ray worker within 2 × 1 s + 0.5 s grace"
    ), result.error
    assert result.attempts == 2  # first beside others (retried), then alone (timed out)
    statuses = Counter(batch.one(case).status for case in case_ids(12))
    assert statuses == {SUCCEEDED: 11, TIMED_OUT: 1}
    hung = [a.id for a in fake.actors if a.hung]
    assert len(hung) == 2 and set(hung) <= set(fake.killed[: len(fake.killed) - 2])
    assert batch.stats.hung_workers == batch.stats.worker_deaths == 2
    # each hang was noticed once its call's budget (2 × 1 s + 0.5 s) had passed, not before
    assert 2 * 2.5 < fake.now < 2 * 2.5 + 1.0
    assert_every_actor_ended(fake)


def test_slot_states_follow_the_enum_from_starting_to_ready_to_dead():
    # worker 0 dies mid-batch; every replacement dies loading: the slot is given up
    fake = FakeRay(faults={"c01": ["die"]}, load_fault=lambda n: "die" if n >= 2 else None)
    batch = run_on(fake, n=10, max_retries=1)
    kept, lost = sorted(batch.pool.slots, key=lambda slot: len(slot.path))
    assert lost.path == [STARTING, READY, STARTING, STARTING, DEAD]
    assert kept.path == [STARTING, READY]
    assert all(isinstance(state, SlotState) for state in lost.path)
    assert "died while starting or loading the plan 2 times (max_retries=1)" in lost.cause
    assert {batch.one(case).status for case in case_ids(10)} == {SUCCEEDED}
    assert batch.stats.replaced == 1 and batch.stats.workers == 2
    assert_every_actor_ended(fake)


@pytest.mark.parametrize(
    ("start", "to"),
    [(DEAD, STARTING), (DEAD, READY), (READY, READY), (READY, DEAD)],
)
def test_a_slot_refuses_a_transition_the_enum_does_not_allow(start, to):
    slot = Slot(actor=None, state=start)
    with pytest.raises(RuntimeError, match=f"from {start.name} to {to.name}"):
        slot.enter(to)
    assert slot.state is start


def test_worker_dead_while_loading_is_replaced_and_the_batch_runs():
    fake = FakeRay(load_fault=lambda n: "die" if n == 0 else None)
    batch = run_on(fake, n=6)
    assert batch.pool.slots[0].path == [STARTING, STARTING, READY]
    assert batch.stats.replaced == 1 and batch.stats.workers == 2
    assert batch.stats.worker_pids == [1002, 1001]
    assert {batch.one(case).status for case in case_ids(6)} == {SUCCEEDED}
    assert_every_actor_ended(fake)


def test_worker_that_cannot_load_the_plan_stops_the_batch_before_any_run():
    fake = FakeRay(load_fault=lambda n: "fail" if n == 1 else None)
    with pytest.raises(ExecutionError, match="could not take the batch: ImportError: No module"):
        run_on(fake, n=6)
    assert fake.runs == [] and fake.calls == []
    assert_every_actor_ended(fake)


def test_workers_that_never_start_are_given_up_at_the_start_deadline():
    fake = FakeRay(load_fault=lambda n: "hang")
    with pytest.raises(
        ExecutionError, match=r"none of the 2 Ray workers started: .*start_timeout_s=5 s"
    ):
        run_on(fake, n=6, start_timeout_s=5.0)
    assert 5.0 < fake.now < 5.5 and fake.runs == []
    assert_every_actor_ended(fake)


def test_batch_whose_last_worker_is_replaced_by_one_that_never_starts_stops_at_the_deadline():
    fake = FakeRay(faults={"c01": ["die"]}, load_fault=lambda n: "hang" if n >= 1 else None)
    with pytest.raises(ExecutionError, match=r"no Ray worker is left to run the batch's \d+ rem"):
        run_on(fake, n=6, workers=1, start_timeout_s=5.0)
    assert 5.0 < fake.now < 5.5  # given up at start_timeout_s after its replacement started
    assert_every_actor_ended(fake)


def test_worker_that_lost_its_plan_is_replaced_once_and_its_cases_rerun_uncounted():
    fake = FakeRay(faults={"c05": ["forget"]})
    batch = run_on(fake, n=12)
    refused = [c for c in fake.calls if isinstance(c.error, PlanLost)]
    assert any("c05" in c.cases for c in refused)
    (actor,) = {c.actor for c in refused}  # every call it refused, before it was replaced
    assert actor.id in fake.killed
    assert batch.stats.worker_deaths == 1 and batch.stats.retried == 0
    assert {batch.one(case).attempts for case in case_ids(12)} == {1}  # they had not run
    assert {batch.one(case).status for case in case_ids(12)} == {SUCCEEDED}
    assert_every_actor_ended(fake)


@pytest.mark.parametrize("seed", range(5))
def test_every_case_completes_once_whatever_its_workers_go_through(seed):
    rng = random.Random(seed)
    cases = case_ids(60)
    faults = {case: [rng.choice(["die", "hang", "forget"])] for case in rng.sample(cases, 8)}
    fake = FakeRay(faults=faults)
    batch = run_on(fake, n=60, workers=3, concurrency=2, timeout_s=1.0)
    assert sorted(batch.results) == cases
    # a worker that hangs on a case run alone (a retry: attempt > 1) times it out; a case that
    # kills its worker once is retried; a worker that lost the plan is replaced
    hung_alone = {run.case for run in fake.runs if run.fault == "hang" and run.attempt > 1}
    timed_out = {case for case in cases if batch.one(case).status == TIMED_OUT}
    assert timed_out == hung_alone, faults
    assert {batch.one(case).status for case in set(cases) - timed_out} == {SUCCEEDED}, faults
    assert not any(fake.faults.values())  # every fault happened (faults on one worker may
    assert 1 <= batch.stats.worker_deaths <= len(faults)  # cost it once)
    assert_every_actor_ended(fake)


def test_the_pool_and_dispatcher_reach_ray_only_through_the_handle():
    engine = Path(wtb_dagster.__file__).parent
    for module in ("ray_pool", "ray_dispatch"):
        tree = ast.parse((engine / f"{module}.py").read_text())
        imported = {
            alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names
        }
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {name for name in imported if name.split(".")[0] == "ray"}, module
