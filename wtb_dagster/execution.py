"""Running threads: one case under one combo as a checkpointed LangGraph thread, and batches.

`run_thread` is the unit of work every executor runs. `LocalExecutor` runs many at once in a
thread pool, so latency-bound (LLM-like) nodes overlap; the Ray executor (`ray_execution`)
runs the same unit on Ray workers. An executor reports each finished thread to a callback;
the batch code in `batches` decides what to run and stores what comes back.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import time
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from langgraph.types import Command

from wtb_dagster import settings
from wtb_dagster.chains import drop_pending_writes
from wtb_dagster.checkpoints import open_checkpointer, saver_lanes, serves_async, thread_config
from wtb_dagster.datasets import TestCase
from wtb_dagster.environments import refuse_local
from wtb_dagster.errors import ConfigError
from wtb_dagster.scoring import score_state
from wtb_dagster.telemetry import node_scope, start_thread, with_callbacks
from wtb_dagster.threads import (
    FAILED,
    INTERRUPTED,
    MAIN_LINEAGE,
    SUCCEEDED,
    TIMED_OUT,
    ThreadResult,
)
from wtb_dagster.workflows import Workflow, is_coroutine_function, runs_async
from wtb_dagster.workspaces import WORKSPACE_KEY, WorkspaceSetup, thread_workspace
from wtb_dagster.workspaces import prepare as prepare_workspaces


class _NoValue:
    """'No resume value' for a ThreadTask; pickles by reference, so it survives Ray."""

    def __reduce__(self) -> str:
        return "_NO_VALUE"

    def __repr__(self) -> str:
        return "<no value>"


_NO_VALUE = _NoValue()


@dataclass(frozen=True)
class ThreadTask:
    """One thread to run.

    A new thread starts from the case input. A thread that already has checkpoints continues
    from its newest one (resuming after a crash), or from `checkpoint_id` when given (a fork or
    a rollback). `resume_value` answers an `interrupt()` with `Command(resume=…)`.
    """

    combo: str
    case: TestCase
    thread_id: str
    lineage: str = MAIN_LINEAGE
    checkpoint_id: str | None = None
    resume_value: Any = _NO_VALUE
    fresh: bool = False
    parent_thread_id: str | None = None
    parent_checkpoint_id: str | None = None
    change: dict[str, Any] | None = None
    code_version: str | None = None
    trial: int = 0
    # Node → code version under this combo (recorded with the result, for later sharing).
    node_versions: dict[str, str] | None = None
    # Shared prefixes (`prefixes`): whether this thread may start from another's checkpoint,
    # and if so from which thread and checkpoint, and the timings and chat-model usage of the
    # nodes that thread ran before it (counted as this thread's, as if run).
    # `shared_path`: the path ([checkpoint id, next nodes], …) copied into this thread before
    # it runs (a shared prefix, or a fork's parent up to the fork point), so the thread's whole
    # path is known without reading it back.
    may_share: bool = False
    shared_from: str | None = None
    shared_checkpoint_id: str | None = None
    shared_path: list[list[Any]] | None = None
    shared_timings: dict[str, list[float]] | None = None
    shared_usage: dict[str, list[dict[str, Any]]] | None = None
    # Set by a `prepare` hook that left the thread's head where it is to resume (a fork or a
    # shared prefix copied in): run from it without reading the state first.
    resume_head: bool = False


@dataclass
class BatchPlan:
    """Everything an executor needs; picklable so Ray can ship it to workers."""

    workflow: Workflow
    checkpoint_url: str
    tasks: list[ThreadTask]
    timeout_s: float | None = None
    run_id: str | None = None
    # "sync" writes each checkpoint before the next super-step starts, so a killed process
    # resumes from its last node; "async" overlaps the write with the next step.
    durability: str = "sync"
    # Called in the worker before a task runs, with (graph, checkpointer, task); returns the
    # task to run. Forks use it to copy the parent's checkpoints into the new thread. Must be
    # a module-level function so Ray can ship it.
    prepare: Callable[[Any, Any, ThreadTask], ThreadTask] | None = field(default=None, repr=False)
    # Where the threads' workspace files go (`workspaces`), for a workflow that has them: set
    # up here, in the driver, so a bad blob store fails before any thread runs.
    workspace: WorkspaceSetup | None = None

    def __post_init__(self) -> None:
        if self.workspace is None and self.workflow.workspace:
            self.workspace = workspace_setup(self.workflow)


class Executor(Protocol):
    """Runs the tasks of a plan and calls `on_result` once per task, in completion order."""

    name: str

    def run(self, plan: BatchPlan, on_result: Callable[[ThreadResult], None]) -> None: ...


_STATS: contextvars.ContextVar[list[tuple[str, float]] | None] = contextvars.ContextVar(
    "wtb_node_stats", default=None
)


def _record_timing(node: str, started: float) -> None:
    stats = _STATS.get()
    if stats is not None:
        stats.append((node, time.perf_counter() - started))


def _timed(node: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` timed into the running thread's node stats; a coroutine function stays one.

    LangGraph copies the context into the threads and tasks that run nodes (sync nodes of an
    async graph run in the loop's executor, with a copy too), so the list set by run_thread is
    the one appended to, whichever thread or task runs the node.
    """
    if is_coroutine_function(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                with node_scope(node):  # the node's event, usage and span (`telemetry`)
                    return await fn(*args, **kwargs)
            finally:
                _record_timing(node, started)

        return timed_async

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            with node_scope(node):
                return fn(*args, **kwargs)
        finally:
            _record_timing(node, started)

    return timed


def compile_for(workflow: Workflow, combo: str, checkpointer: Any) -> Any:
    """The workflow compiled for a combo, with node timing instrumentation.

    A combo with an async node runs on LangGraph's async path, so its checkpointer must serve
    LangGraph's async calls: those `open_checkpointer` returns do.
    """
    graph = workflow.build(combo, checkpointer=checkpointer, wrap=_timed)
    if checkpointer is not None and runs_async(graph) and not serves_async(checkpointer):
        raise ConfigError(
            f"workflow {workflow.name!r}, combo {combo!r} has async nodes, which run with "
            f"LangGraph's astream; the checkpointer {type(checkpointer).__name__} does not "
            "implement LangGraph's async methods (aget_tuple, aput, aput_writes): open it with "
            "wtb_dagster.checkpoints.open_checkpointer"
        )
    return graph


def new_result(
    task: ThreadTask,
    workflow: str,
    executor_name: str,
    run_id: str | None,
    error: str | None = None,
) -> ThreadResult:
    """The record of a task before (or instead of) running it: failed until it succeeds."""
    now = time.time()
    return ThreadResult(
        workflow=workflow,
        combo=task.combo,
        case_id=task.case.id,
        thread_id=task.thread_id,
        status=FAILED,
        lineage=task.lineage,
        parent_thread_id=task.parent_thread_id,
        parent_checkpoint_id=task.parent_checkpoint_id,
        input=task.case.input,
        expected=task.case.expected,
        error=error,
        executor=executor_name,
        run_id=run_id,
        change=task.change,
        code_version=task.code_version,
        trial=task.trial,
        node_versions=task.node_versions,
        restarted=task.fresh,  # its usage replaces the stored row's (`telemetry`)
        started_at=now,
        finished_at=now,
    )


def _error_text(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def has_ended(snapshot: Any) -> bool:
    """Whether a thread's newest checkpoint (a live `get_state`) is the end of its graph.

    `next` is not enough: LangGraph leaves out of `next` the tasks whose writes are already
    saved, so a process killed between a step's task writes and that step's checkpoint leaves
    a thread with no `next` that has not ended. Only a checkpoint with no task left is an end.
    """
    return bool(snapshot.created_at) and not snapshot.tasks


def workspace_setup(workflow: Workflow) -> WorkspaceSetup:
    """The blob store (`WTB_BLOB_URL`) checked and the template stored, for a workflow with
    workspaces."""
    return prepare_workspaces(settings.blob_url(), workflow.workspace_template)


def run_thread(
    graph: Any,
    workflow: Workflow,
    task: ThreadTask,
    timeout_s: float | None = None,
    executor_name: str = "local",
    run_id: str | None = None,
    durability: str = "sync",
    workspace: WorkspaceSetup | None = None,
) -> ThreadResult:
    """Run one thread to its end (or interrupt, error, timeout) and score its final state.

    Never raises for a failure of the workflow: the result's status and error say what happened.
    A workflow with workspaces runs each thread in a folder of its own (`workspace`, set up
    by `workspace_setup` when not given).
    """
    if workflow.workspace and workspace is None:
        workspace = workspace_setup(workflow)
    started_wall, started = time.time(), time.perf_counter()
    stats: list[tuple[str, float]] = []
    token = _STATS.set(stats)
    recorder = start_thread(workflow, task)  # node events, usage, spans (`telemetry`)
    result = new_result(task, workflow.name, executor_name, run_id)
    result.started_at = started_wall
    config = thread_config(task.thread_id)
    steps: list[list[Any]] = []  # [checkpoint id, nodes run next] of each checkpoint streamed
    fresh_thread = False
    try:
        if task.fresh:
            graph.checkpointer.delete_thread(task.thread_id)
        if task.resume_value is not _NO_VALUE:
            graph_input: Any = Command(resume=task.resume_value)
        elif task.checkpoint_id is not None:
            graph_input, config = None, thread_config(task.thread_id, task.checkpoint_id)
        elif task.resume_head:
            graph_input = None
        else:
            existing = graph.get_state(config)
            fresh_thread = not existing.created_at
            # A thread with checkpoints resumes from its newest one (invoke with None); one that
            # already ended or waits on an interrupt is only recorded, not executed again.
            graph_input = task.case.input if fresh_thread else None
            if not fresh_thread and (has_ended(existing) or existing.interrupts):
                graph_input = _NO_VALUE
            elif not fresh_thread and workspace is not None:
                # the whole step again: its finished tasks' files died with the folder
                drop_pending_writes(
                    graph.checkpointer,
                    task.thread_id,
                    existing.config["configurable"]["checkpoint_id"],
                )
        if graph_input is _NO_VALUE:
            values, paused = existing.values, (None if has_ended(existing) else existing)
        elif workspace is not None:
            values, paused = _stream_in_workspace(
                graph, workspace, task, fresh_thread, graph_input, config, timeout_s, steps, result
            )
        else:
            values, paused = _stream(graph, graph_input, config, timeout_s, durability, steps)
        result.final_values = dict(values) if isinstance(values, dict) else {}
        result.status = SUCCEEDED if paused is None else INTERRUPTED
        if paused is not None:
            payloads = "; ".join(repr(i.value) for i in paused.interrupts)
            result.error = f"interrupted before {', '.join(paused.next)}" + (
                f": {payloads}" if payloads else ""
            )
    except TimeoutError as exc:
        # LangGraph's step timeout and our deadline both land here; a node's own TimeoutError
        # (say, an HTTP call) before the case's budget is spent is a failure of that node.
        if timeout_s is not None and time.perf_counter() - started >= timeout_s * 0.95:
            result.status = TIMED_OUT
            result.error = f"timed out: the case exceeded its {timeout_s:g} s timeout"
        else:
            result.status, result.error = FAILED, _error_text(exc)
    except Exception as exc:  # a node's exception is data about this thread
        result.status, result.error = FAILED, _error_text(exc)
    finally:
        _STATS.reset(token)
        recorder.detach()
    result.finished_at = time.time()
    result.latency_s = time.perf_counter() - started
    result.nodes_executed = len(stats)
    if task.shared_from is not None:
        # The shared prefix is part of this combo's run: its nodes' timings count, as if run.
        result.shared_from, result.shared_checkpoint_id = (
            task.shared_from,
            task.shared_checkpoint_id,
        )
        for node, seconds_run in (task.shared_timings or {}).items():
            result.node_timings[node] = list(seconds_run)
            result.latency_s += sum(seconds_run)
    for node, seconds in stats:
        result.node_timings.setdefault(node, []).append(round(seconds, 6))
    if fresh_thread or task.shared_path is not None:
        # Everything the thread has was seen on the stream (after the copied prefix, if any).
        path = list(task.shared_path or [])
        # a run resumed from the copied head streams that checkpoint again first
        path += steps[1:] if path and steps and steps[0][0] == path[-1][0] else steps
        result.path = path
        result.checkpoints = len(path)
        result.first_checkpoint_id = path[0][0] if path else None
        result.last_checkpoint_id = path[-1][0] if path else None
    else:
        _record_checkpoints(graph, result)
    if result.status == SUCCEEDED:
        # graph + thread id: a scorer asking for `trajectory` reads the path from the checkpoints
        result.scores, result.score_errors = score_state(
            task.case,
            result.final_values or {},
            workflow.scorers,
            result.latency_s,
            graph=graph,
            thread_id=task.thread_id,
        )
    recorder.finish(result)
    return result


def _stream_in_workspace(
    graph: Any,
    setup: WorkspaceSetup,
    task: ThreadTask,
    fresh: bool,
    graph_input: Any,
    config: dict[str, Any],
    timeout_s: float | None,
    steps: list[list[Any]],
    result: ThreadResult,
) -> tuple[Any, Any]:
    """`_stream` with the thread's workspace rebuilt first and snapshotted at every checkpoint.

    Durability is "sync" whatever the plan says: the snapshot is taken when a checkpoint is
    saved, and only "sync" saves it before the next step's nodes start writing files."""
    with thread_workspace(
        setup, graph.checkpointer, task.thread_id, task.checkpoint_id, fresh
    ) as workspace:
        config = {**config, "configurable": {**config["configurable"]}}
        config["configurable"][WORKSPACE_KEY] = str(workspace.path)
        try:
            return _stream(graph, graph_input, config, timeout_s, "sync", steps)
        finally:
            result.files_written = workspace.files_written
            result.bytes_written = workspace.bytes_written
            result.bytes_stored = workspace.bytes_stored


def _stream(
    graph: Any,
    graph_input: Any,
    config: dict[str, Any],
    timeout_s: float | None,
    durability: str,
    steps: list[list[Any]],
) -> tuple[Any, Any]:
    """Run the graph; returns the last checkpoint's values, and the state if it was interrupted.

    A graph with async nodes runs on LangGraph's async path: `astream` on an event loop of
    this thread run's own, so its async nodes run as tasks on that loop (and LangGraph cancels
    them at a timeout); its sync nodes run in the loop's thread pool, as LangGraph runs them.
    """
    runner = graph.copy({"step_timeout": timeout_s}) if timeout_s else graph
    config = with_callbacks(config)  # chat-model usage of the nodes (`telemetry`)
    deadline = time.perf_counter() + timeout_s if timeout_s else None
    last: dict[str, Any] = {"values": {}, "next": []}

    def seen(event: dict[str, Any]) -> None:
        steps.append([event["config"]["configurable"]["checkpoint_id"], list(event["next"])])
        last["values"], last["next"] = event["values"], event["next"]
        if deadline is not None:
            # The step timeout is read at every super-step, so shrinking it keeps the whole
            # case, not just each step, within its budget. A step's checkpoint reaches this
            # stream only once the next step has started with the timeout it read, so the
            # shrinking lags a step: a sync case may overrun by up to one step's duration.
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError
            runner.step_timeout = remaining

    options: dict[str, Any] = {"stream_mode": "checkpoints", "durability": durability}
    if runs_async(graph):

        async def drive() -> None:
            # A task can be cancelled where a thread cannot: the async path holds the case to
            # its deadline exactly, whatever step it is in.
            async with asyncio.timeout(deadline - time.perf_counter() if deadline else None):
                async for event in runner.astream(graph_input, config, **options):
                    seen(event)

        _run_on_own_loop(drive())
    else:
        for event in runner.stream(graph_input, config, **options):
            seen(event)
    if not last["next"]:
        return last["values"], None
    # The run ended with nodes still to go and no error: an interrupt (dynamic or static).
    return last["values"], graph.get_state(thread_config(config["configurable"]["thread_id"]))


def _run_on_own_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a thread run's coroutine on a new event loop, closed when it ends.

    A loop per thread run rather than one per process: executors run each case on an OS
    thread of its own, so every case gets its loop and none waits on another's. A caller that
    already runs a loop on this thread (a notebook, an async host) cannot start another one
    here, so the coroutine then runs on a thread of its own, in a copy of this context (the
    node stats); this call blocks either way, as a sync call does.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, thread_name_prefix="wtb-loop") as pool:
        pool.submit(context.run, asyncio.run, coroutine).result()


def _record_checkpoints(graph: Any, result: ThreadResult) -> None:
    """Counts and path of a thread that did not run from its input in this call (resumed,
    forked, rolled back): read back from the checkpointer."""
    config = thread_config(result.thread_id)
    if result.lineage != MAIN_LINEAGE:  # forks are no one's donor: the ids are enough
        try:
            ids = [
                c.config["configurable"]["checkpoint_id"] for c in graph.checkpointer.list(config)
            ]
        except Exception:  # the checkpointer failed: leave the counts empty rather than guess
            return
        result.checkpoints = len(ids)
        result.first_checkpoint_id = ids[-1] if ids else None
        result.last_checkpoint_id = ids[0] if ids else None
        return
    try:
        history = list(graph.get_state_history(config))
    except Exception:
        return
    result.checkpoints = len(history)
    if not history:
        return
    result.first_checkpoint_id = history[-1].config["configurable"]["checkpoint_id"]
    result.last_checkpoint_id = history[0].config["configurable"]["checkpoint_id"]
    # the current branch (head and its ancestors), oldest first: what later threads may share
    by_id = {s.config["configurable"]["checkpoint_id"]: s for s in history}
    branch, node = [], history[0]
    while node is not None:
        branch.append([node.config["configurable"]["checkpoint_id"], list(node.next)])
        parent = (node.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        node = by_id.get(parent) if parent else None
    result.path = branch[::-1]


def run_task(
    plan: BatchPlan, graph: Any, saver: Any, task: ThreadTask, executor_name: str
) -> ThreadResult:
    """Run one task of a plan on a graph compiled for its combo: what every executor calls."""
    restarted = task.fresh  # a prepare hook that set the thread up anew says fresh=False after
    if plan.prepare is not None:
        try:
            task = plan.prepare(graph, saver, task)
        except Exception as exc:  # a fork that cannot be set up is that thread's failure
            return new_result(
                task, plan.workflow.name, executor_name, plan.run_id, _error_text(exc)
            )
    result = run_thread(
        graph,
        plan.workflow,
        task,
        plan.timeout_s,
        executor_name,
        plan.run_id,
        plan.durability,
        plan.workspace,
    )
    result.restarted = result.restarted or restarted
    return result


class LocalExecutor:
    """Runs threads concurrently in a thread pool of `max_concurrency` in this process.

    >>> LocalExecutor(max_concurrency=32)
    """

    name = "local"

    def __init__(self, max_concurrency: int = 8, pool_size: int | None = None) -> None:
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.pool_size = pool_size or min(max_concurrency, 10)

    def run(self, plan: BatchPlan, on_result: Callable[[ThreadResult], None]) -> None:
        refuse_local(plan.workflow, dict.fromkeys(t.combo for t in plan.tasks))
        with open_checkpointer(plan.checkpoint_url, pool_size=self.pool_size) as saver:
            savers = saver_lanes(saver, min(self.pool_size, self.max_concurrency))
            graphs: dict[tuple[str, int], Any] = {}
            turns = itertools.count()

            def graph_for(combo: str, lane: int) -> Any:
                if (combo, lane) not in graphs:
                    graphs[combo, lane] = compile_for(plan.workflow, combo, savers[lane])
                return graphs[combo, lane]

            def one(task: ThreadTask) -> ThreadResult:
                lane = next(turns) % len(savers)  # spread threads over the connections
                return run_task(plan, graph_for(task.combo, lane), savers[lane], task, self.name)

            for combo in dict.fromkeys(t.combo for t in plan.tasks):
                for lane in range(len(savers)):  # up front: a build error stops the batch early
                    graph_for(combo, lane)
            if self.max_concurrency == 1:
                for task in plan.tasks:
                    on_result(one(task))
                return
            pending_tasks = iter(plan.tasks)
            with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="wtb") as pool:
                running = set()
                # Submit lazily: a 10,000-case batch keeps only max_concurrency × 2 futures alive.
                for task in pending_tasks:
                    running.add(pool.submit(one, task))
                    if len(running) >= self.max_concurrency * 2:
                        break
                while running:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        on_result(future.result())
                        next_task = next(pending_tasks, None)
                        if next_task is not None:
                            running.add(pool.submit(one, next_task))
