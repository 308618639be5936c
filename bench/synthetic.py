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


def _step_by(state: ChainState, add: int, sleep_s: float = 0.0, last: bool = False) -> dict:
    # a variant of a chain node: adds `add` instead of one
    if sleep_s:
        time.sleep(sleep_s)
    x = state.get("x", 0) + add
    return {"x": x, "answer": str(x)} if last else {"x": x}


def matrix_workflow(
    name: str = "matrix",
    n_nodes: int = 5,
    varied: int = 3,
    variants: int = 2,
    sleep_s: float = 0.05,
    n_cases: int = 40,
    share_prefix: bool = True,
) -> Workflow:
    """The chain with its last `varied` nodes varied, `variants` alternatives each: a matrix
    of (variants + 1) ** varied combos whose threads agree up to their first varied node."""
    return Workflow(
        name=name,
        graph=functools.partial(chain_graph, n_nodes, sleep_s),
        variants={
            f"n{i}": {
                f"v{k}": functools.partial(
                    _step_by, add=k + 1, sleep_s=sleep_s, last=i == n_nodes - 1
                )
                for k in range(1, variants + 1)
            }
            for i in range(n_nodes - varied, n_nodes)
        },
        scorers=[builtin("exact_match", field="answer")],
        dataset=chain_cases(n_cases, n_nodes),
        share_prefix=share_prefix,
    )


# The latency-bound matrix as import paths, for a wtb.yaml (`bench/matrix.py` through Dagster).
LATENCY_S = 0.05


def latency_chain() -> StateGraph:
    """The 5-node chain, each node waiting `LATENCY_S` as an LLM call would."""
    return chain_graph(5, LATENCY_S)


plus2 = functools.partial(_step_by, add=2, sleep_s=LATENCY_S)
plus3 = functools.partial(_step_by, add=3, sleep_s=LATENCY_S)
plus2_last = functools.partial(_step_by, add=2, sleep_s=LATENCY_S, last=True)
plus3_last = functools.partial(_step_by, add=3, sleep_s=LATENCY_S, last=True)
