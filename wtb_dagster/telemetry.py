"""Node telemetry: one event per node execution, the chat-model usage inside it, and spans.

`run_thread` opens a `ThreadRecorder` per thread run; the node wrapper of `execution` opens a
`node_scope` around every node call. A scope records the node's start, end, duration, step,
status (`ok`, `error`, `interrupted` — an `interrupt()`), error text, and the tokens of the
chat-model calls made inside it (`usage.UsageCallback`, passed in the graph's config
callbacks). Only the nodes a run executes are recorded: a fork records the nodes downstream of
its fork point, a resumed thread those after its last checkpoint. The events travel with the
`ThreadResult` and are stored with its row, in one transaction (`store.upsert_results`).

With a tracer (`tracing`), a thread run is one span (`wtb.thread`) and each node a child span
named after it, both with the workflow, combo, case, tokens and status as attributes; a node
span is the current span while the node runs, so spans the node's own code opens nest in it.

`WTB_TELEMETRY=off` turns all of this off (no events, usage, spans or metrics), for a
measurement of what it costs (`bench/telemetry.py`).
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from contextvars import ContextVar, Token
from typing import Any

from langchain_core.runnables.config import var_child_runnable_config
from langgraph.errors import GraphBubbleUp, GraphInterrupt
from opentelemetry import context as otel_context
from opentelemetry import trace

from wtb_dagster import metrics, tracing
from wtb_dagster.config import ModelPrice
from wtb_dagster.errors import ConfigError
from wtb_dagster.threads import FAILED, SUCCEEDED, TIMED_OUT, ThreadResult
from wtb_dagster.usage import Usage, UsageCallback, add_usage, cost_usd, merge_usage, token_totals

SWITCH_ENV = "WTB_TELEMETRY"
OK = "ok"
ERROR = "error"
INTERRUPTED = "interrupted"
_RUNNING = "running"
_ON, _OFF = ("on", "1", "true", "yes", ""), ("off", "0", "false", "no")


def enabled() -> bool:
    """Whether telemetry is on (`WTB_TELEMETRY`, default on); a value not on/off is refused."""
    value = os.environ.get(SWITCH_ENV)
    if value is None:  # the common case, asked once per thread run: keep it cheap
        return True
    value = value.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(f"{SWITCH_ENV}={value!r}: use 'on' or 'off'")


class _Event:
    """A node execution being recorded (a dict once the thread run finishes)."""

    __slots__ = (
        "error",
        "finished_at",
        "node",
        "perf",
        "seconds",
        "started_at",
        "status",
        "step",
        "usage",
    )

    def __init__(self, node: str, step: int | None) -> None:
        self.node, self.step = node, step
        self.started_at, self.perf = time.time(), time.perf_counter()
        self.finished_at: float | None = None
        self.seconds = 0.0
        self.status = _RUNNING
        self.error: str | None = None
        self.usage: Usage = {}


_RECORDER: ContextVar[ThreadRecorder | None] = ContextVar("wtb_recorder", default=None)
_EVENT: ContextVar[_Event | None] = ContextVar("wtb_node_event", default=None)


def _attributes(workflow: str, task: Any) -> dict[str, Any]:
    return {
        "wtb.workflow": workflow,
        "wtb.combo": task.combo,
        "wtb.case": task.case.id,
        "wtb.trial": task.trial,
        "wtb.thread_id": task.thread_id,
    }


def _usage_attributes(usage: Usage, cost: float | None) -> dict[str, Any]:
    tokens_in, tokens_out = token_totals(usage)
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": tokens_in,
        "gen_ai.usage.output_tokens": tokens_out,
    }
    if cost is not None:
        attributes["wtb.cost_usd"] = cost
    if usage:
        attributes["wtb.models"] = sorted(usage)
    return attributes


class ThreadRecorder:
    """The telemetry of one thread run: its node events, usage outside nodes, its span."""

    def __init__(self, workflow: str, prices: dict[str, ModelPrice], task: Any) -> None:
        self.workflow, self.task, self.prices = workflow, task, prices
        self.events: list[_Event] = []
        self.outside: Usage = {}  # calls made outside any wrapped node (a subgraph's nodes)
        self.callback = UsageCallback(self._add_usage)
        self._lock = threading.Lock()
        self.tracer = tracing.tracer()
        self.attributes = _attributes(workflow, task)
        self.span = (
            self.tracer.start_span("wtb.thread", attributes=self.attributes)
            if self.tracer is not None
            else None
        )
        self._tokens: tuple[Token[Any], Any] = (
            _RECORDER.set(self),
            otel_context.attach(trace.set_span_in_context(self.span)) if self.span else None,
        )

    def _add_usage(self, model: str, tokens_in: int, tokens_out: int) -> None:
        event = _EVENT.get()
        with self._lock:  # parallel nodes of one step report at once
            add_usage(
                event.usage if event is not None else self.outside, model, tokens_in, tokens_out
            )

    def detach(self) -> None:
        """Leave the thread's context (in the context `start_thread` was called in)."""
        recorder_token, span_token = self._tokens
        _RECORDER.reset(recorder_token)
        if span_token is not None:
            otel_context.detach(span_token)

    def config(self, config: dict[str, Any]) -> dict[str, Any]:
        """`config` with the usage callback added to its callbacks."""
        callbacks = config.get("callbacks") or []
        return {**config, "callbacks": [*callbacks, self.callback]}

    def finish(self, result: ThreadResult) -> None:
        """Put the events, tokens and cost on `result`; end the thread's span."""
        now, perf = time.time(), time.perf_counter()
        events = []
        for event in list(self.events):
            if event.status == _RUNNING:  # the thread ended around it: a timeout or a kill
                event.status, event.error = ERROR, "still running when the thread ended"
                event.finished_at, event.seconds = now, perf - event.perf
            events.append(self._as_dict(event))
        # a shared prefix's nodes count as this thread's (as their time does), not its events
        shared: dict[str, list[dict[str, Any]]] = getattr(self.task, "shared_usage", None) or {}
        node_usage = {node: [dict(u) for u in runs] for node, runs in shared.items()}
        for event in events:
            plain = {
                m: {k: v for k, v in e.items() if k != "cost_usd"}
                for m, e in event["usage"].items()
            }
            node_usage.setdefault(event["node"], []).append(plain)
        result.node_usage = node_usage
        total = merge_usage(
            self.outside,
            *(e["usage"] for e in events),
            *(u for runs in shared.values() for u in runs),
        )
        result.tokens_in, result.tokens_out = token_totals(total)
        result.cost_usd = cost_usd(total, self.prices)
        result.events = events
        if self.span is not None:
            self.span.set_attributes(
                {"wtb.status": result.status, **_usage_attributes(total, result.cost_usd)}
            )
            if result.status in (FAILED, TIMED_OUT):
                self.span.set_status(trace.StatusCode.ERROR, result.error or result.status)
            elif result.status == SUCCEEDED:
                self.span.set_status(trace.StatusCode.OK)
            self.span.end()

    def _as_dict(self, event: _Event) -> dict[str, Any]:
        usage: dict[str, dict[str, Any]] = {}
        for model, entry in event.usage.items():
            usage[model] = {**entry, "cost_usd": cost_usd({model: entry}, self.prices)}
        tokens_in, tokens_out = token_totals(event.usage)
        return {
            "node": event.node,
            "step": event.step,
            "status": event.status,
            "error": event.error,
            "started_at": event.started_at,
            "finished_at": event.finished_at,
            "duration_s": round(event.seconds, 6),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost_usd": cost_usd(event.usage, self.prices),
            "usage": usage,
        }


class _NullRecorder:
    """What `start_thread` returns with telemetry off: records nothing."""

    def detach(self) -> None:
        pass

    def finish(self, result: ThreadResult) -> None:
        pass


NULL_RECORDER = _NullRecorder()


def start_thread(workflow: Any, task: Any) -> ThreadRecorder | _NullRecorder:
    """Begin recording a thread run (in this context, until `detach`); a no-op when off."""
    if not enabled():
        return NULL_RECORDER
    return ThreadRecorder(workflow.name, workflow.prices, task)


def with_callbacks(config: dict[str, Any]) -> dict[str, Any]:
    """The graph config of the running thread, with its usage callback when recording."""
    recorder = _RECORDER.get()
    return recorder.config(config) if recorder is not None else config


def _error_text(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _step() -> int | None:
    # LangGraph runs a node with its task's config as LangChain's current config
    config = var_child_runnable_config.get() or {}
    step = (config.get("metadata") or {}).get("langgraph_step")
    return step if isinstance(step, int) else None


class node_scope:  # lower case: used like a function, `with node_scope(node):`
    """Records one node execution of the running thread (a no-op outside one)."""

    __slots__ = ("event", "node", "recorder", "span", "tokens")

    def __init__(self, node: str) -> None:
        self.node = node
        self.recorder = _RECORDER.get()

    def __enter__(self) -> node_scope:
        recorder = self.recorder
        if recorder is None:
            return self
        self.event = event = _Event(self.node, _step())
        recorder.events.append(event)  # in start order: list.append is atomic
        self.span = span = (
            recorder.tracer.start_span(
                self.node, attributes={**recorder.attributes, "wtb.node": self.node}
            )
            if recorder.tracer is not None
            else None
        )
        self.tokens = (
            _EVENT.set(event),
            otel_context.attach(trace.set_span_in_context(span)) if span is not None else None,
        )
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if self.recorder is None:
            return
        event = self.event
        event.seconds = time.perf_counter() - event.perf
        event.finished_at = time.time()
        if exc is None or (isinstance(exc, GraphBubbleUp) and not isinstance(exc, GraphInterrupt)):
            event.status = OK  # a Command to the parent graph is a normal end
        elif isinstance(exc, GraphInterrupt):
            event.status = INTERRUPTED
            event.error = (
                "; ".join(repr(getattr(i, "value", i)) for i in (exc.args[0] if exc.args else ()))
                or None
            )
        elif isinstance(exc, Exception):
            event.status, event.error = ERROR, _error_text(exc)
        else:  # cancelled (the case's timeout on the async path) or interrupted by a signal
            event.status, event.error = ERROR, f"cancelled ({type(exc).__name__})"
        event_token, span_token = self.tokens
        _EVENT.reset(event_token)
        span = self.span
        if span is not None:
            otel_context.detach(span_token)
            cost = cost_usd(event.usage, self.recorder.prices)
            span.set_attributes(
                {"wtb.status": event.status, **_usage_attributes(event.usage, cost)}
            )
            if event.status == ERROR:
                if exc is not None:
                    span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, event.error or ERROR)
            span.end()


def record_stored(results: list[ThreadResult]) -> None:
    """Count just-stored threads into this process's Prometheus metrics (`metrics`)."""
    if results and enabled():
        metrics.record(results)
