"""Small graphs for the tests: every node counts its executions so tests can assert on them."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

CALLS: Counter[str] = Counter()
_LOCK = threading.Lock()
# nodes sleeping right now, and the most seen at once: proof of concurrency without a clock
IN_FLIGHT = {"now": 0, "peak": 0}


def _count(name: str) -> None:
    with _LOCK:
        CALLS[name] += 1
    # Across processes (Ray workers), executions are appended to a file the test names.
    log = os.environ.get("WTB_TEST_CALL_LOG")
    if log:
        with Path(log).open("a") as handle:
            handle.write(name + "\n")


class State(TypedDict, total=False):
    x: int
    trail: list[str]
    fail_at: str
    sleep: float
    stop_at: str
    answer: str
    approved: str


def _step(name: str, state: State, x: int) -> dict:
    _count(name)
    if os.environ.get("WTB_TEST_CRASH_AT") == name:
        os._exit(17)  # a process killed half-way through a thread
    if state.get("fail_at") == name:
        raise ValueError(f"node {name} was told to fail")
    if state.get("sleep"):
        with _LOCK:
            IN_FLIGHT["now"] += 1
            IN_FLIGHT["peak"] = max(IN_FLIGHT["peak"], IN_FLIGHT["now"])
        try:
            time.sleep(state["sleep"])
        finally:
            with _LOCK:
                IN_FLIGHT["now"] -= 1
    return {"x": x, "trail": [*state.get("trail", []), name], "answer": str(x)}


def node_a(state: State) -> dict:
    return _step("a", state, state.get("x", 0) + 1)


def node_b(state: State) -> dict:
    return _step("b", state, state["x"] + 10)


def node_b_double(state: State) -> dict:
    return _step("b_double", state, state["x"] * 2)


async def node_b_async(state: State) -> dict:
    await asyncio.sleep(0)
    return _step("b_async", state, state["x"] + 100)


def node_c(state: State) -> dict:
    return _step("c", state, state["x"] + 1000)


def linear() -> StateGraph:
    """a → b → c."""
    graph = StateGraph(State)
    graph.add_node("a", node_a)
    graph.add_node("b", node_b)
    graph.add_node("c", node_c)
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    graph.add_edge("c", END)
    return graph


def chain(n: int = 5, sleep_s: float = 0.0) -> StateGraph:
    """n nodes in a row, each adding one (and sleeping `sleep_s`): the benchmark workload."""

    def make(i: int):
        def step(state: State) -> dict:
            if sleep_s:
                time.sleep(sleep_s)
            return {"x": state.get("x", 0) + 1}

        step.__name__ = f"n{i}"
        return step

    graph = StateGraph(State)
    for i in range(n):
        graph.add_node(f"n{i}", make(i))
    graph.add_edge(START, "n0")
    for i in range(n - 1):
        graph.add_edge(f"n{i}", f"n{i + 1}")
    graph.add_edge(f"n{n - 1}", END)
    return graph


def _approve(state: State) -> dict:
    _count("approve")
    answer = interrupt({"question": "approve?", "x": state["x"]})
    return {"approved": str(answer)}


def with_interrupt() -> StateGraph:
    """a → approve (interrupt) → c."""
    graph = StateGraph(State)
    graph.add_node("a", node_a)
    graph.add_node("approve", _approve)
    graph.add_node("c", node_c)
    graph.add_edge(START, "a")
    graph.add_edge("a", "approve")
    graph.add_edge("approve", "c")
    graph.add_edge("c", END)
    return graph


# -- async nodes --------------------------------------------------------------------------------


class AsyncState(State, total=False):
    await_s: float  # how long each async node awaits `asyncio.sleep`


# Per execution of an async node: (node, its running loop, the thread the loop runs on)
ASYNC_RUNS: list[tuple[str, asyncio.AbstractEventLoop, threading.Thread]] = []
CANCELLED: Counter[str] = Counter()  # async nodes cancelled while they awaited


async def _await_step(name: str, state: AsyncState, x: int) -> dict:
    with _LOCK:
        ASYNC_RUNS.append((name, asyncio.get_running_loop(), threading.current_thread()))
        IN_FLIGHT["now"] += 1
        IN_FLIGHT["peak"] = max(IN_FLIGHT["peak"], IN_FLIGHT["now"])
    try:
        await asyncio.sleep(state.get("await_s", 0))
    except asyncio.CancelledError:
        with _LOCK:
            CANCELLED[name] += 1
        raise
    finally:
        with _LOCK:
            IN_FLIGHT["now"] -= 1
    return _step(name, state, x)


async def node_b_awaits(state: AsyncState) -> dict:
    return await _await_step("b_awaits", state, state["x"] + 100)


async def node_c_awaits(state: AsyncState) -> dict:
    return await _await_step("c_awaits", state, state["x"] + 1000)


def async_linear() -> StateGraph:
    """a (sync) → b (async, awaits `await_s`) → c (async, awaits `await_s`)."""
    graph = StateGraph(AsyncState)
    graph.add_node("a", node_a)
    graph.add_node("b", node_b_awaits)
    graph.add_node("c", node_c_awaits)
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    graph.add_edge("c", END)
    return graph


async def _approve_async(state: State) -> dict:
    _count("approve_async")
    await asyncio.sleep(0)
    answer = interrupt({"question": "approve?", "x": state["x"]})
    return {"approved": str(answer)}


def async_with_interrupt() -> StateGraph:
    """a → approve (async, interrupt) → c."""
    graph = StateGraph(State)
    graph.add_node("a", node_a)
    graph.add_node("approve", _approve_async)
    graph.add_node("c", node_c)
    graph.add_edge(START, "a")
    graph.add_edge("a", "approve")
    graph.add_edge("approve", "c")
    graph.add_edge("c", END)
    return graph


def returns_compiled():
    return linear().compile()


def answer_scorer(case, state) -> dict:
    return {"right_answer": float(state.get("answer") == (case.expected or {}).get("answer"))}


def broken_scorer(case, state) -> float:
    raise RuntimeError("scorer bug")


def node_b_double_v2(state: State) -> dict:
    # node_b_double edited: another code version of the same variant
    return _step("b_double_v2", state, state["x"] * 2 + 1)
