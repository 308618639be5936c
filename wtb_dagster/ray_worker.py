"""The worker actor: the class each Ray worker process runs (`ray.remote(Worker)`).

For a batch it opens the checkpointer once (so a PostgreSQL checkpointer holds at most
`pool_size` connections per worker), compiles each combo's graph once, and runs the tasks it is
handed with the same `run_task` the local executor runs, several threads at a time (the actor's
`max_concurrency`). Workers import this module by name, so everything here is module-level and
imports nothing of Ray until it runs in a worker.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from wtb_dagster.checkpoints import open_checkpointer, saver_lanes
from wtb_dagster.execution import BatchPlan, ThreadTask, compile_for, new_result, run_task
from wtb_dagster.threads import ThreadResult

EXECUTOR_NAME = "ray"


class PlanNotLoaded(Exception):
    """A task reached a worker that has not taken the batch's plan (it lost it, restarted)."""


class Worker:
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
        return peak_rss_mb()

    def run(self, tasks: list[tuple[ThreadTask, int]]) -> list[ThreadResult]:
        """Run a chunk of (task, attempt) one after the other; one result per task."""
        plan = self.plan
        if plan is None:
            # A call sent before the worker died reached its restarted self before the plan.
            raise PlanNotLoaded(os.getpid())
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
            result = failure(plan, task, attempt, f"{type(exc).__name__}: {exc}")
        result.attempts = attempt
        return result


def environment_ready() -> str:
    """Run as a Ray task in a combo's environment: it returns once Ray has built it."""
    return sys.executable


def peak_rss_mb(pid: int | str = "self") -> float:
    """The peak resident set of a process (Linux `VmHWM`), in MB; 0 where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def failure(plan: BatchPlan, task: ThreadTask, attempts: int, error: str) -> ThreadResult:
    """The result of a case that failed outside its workflow (its worker lost, say)."""
    result = new_result(task, plan.workflow.name, EXECUTOR_NAME, plan.run_id, error)
    result.attempts = attempts
    return result
