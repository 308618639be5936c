"""A synthetic chain workflow of N equal nodes: the workload of the benchmarks.

Each node adds one to `x` and, when `sleep_s` is set, sleeps like an LLM call would wait.
"""

from __future__ import annotations

import functools
import time
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from wtb_dagster.datasets import TestCase
from wtb_dagster.scoring import builtin
from wtb_dagster.workflows import Workflow


class ChainState(TypedDict, total=False):
    x: int
    answer: str


def _step(state: ChainState, sleep_s: float = 0.0, last: bool = False) -> dict:
    if sleep_s:
        time.sleep(sleep_s)
    x = state.get("x", 0) + 1
    return {"x": x, "answer": str(x)} if last else {"x": x}


def chain_graph(n_nodes: int = 5, sleep_s: float = 0.0) -> StateGraph:
    """`n0 → n1 → … → n{N-1}`, each node `x += 1` after sleeping `sleep_s` seconds."""
    graph = StateGraph(ChainState)
    for i in range(n_nodes):
        graph.add_node(f"n{i}", functools.partial(_step, sleep_s=sleep_s, last=i == n_nodes - 1))
    graph.add_edge(START, "n0")
    for i in range(n_nodes - 1):
        graph.add_edge(f"n{i}", f"n{i + 1}")
    graph.add_edge(f"n{n_nodes - 1}", END)
    return graph


def chain_cases(n_cases: int, n_nodes: int = 5) -> list[TestCase]:
    return [
        TestCase(id=f"case-{i:05d}", input={"x": i}, expected={"answer": str(i + n_nodes)})
        for i in range(n_cases)
    ]


def chain_workflow(
    name: str = "chain", n_nodes: int = 5, sleep_s: float = 0.0, n_cases: int = 100
) -> Workflow:
    """The chain as a registered workflow, scored by exact match on the final `answer`."""
    return Workflow(
        name=name,
        graph=functools.partial(chain_graph, n_nodes, sleep_s),
        scorers=[builtin("exact_match", field="answer")],
        dataset=chain_cases(n_cases, n_nodes),
    )
