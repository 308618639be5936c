"""A thread's trajectory (the nodes it went through, in order) and matching it with an expected one.

The trajectory is read from the thread's checkpoints, so it is the whole path of the thread:
a fork's includes the part copied from its parent (the nodes before the fork point, which the
fork did not execute itself), a resumed thread's the nodes run before it stopped, a rolled-back
thread's only its current branch. Every node appears once per execution (a loop repeats it);
nodes of one super-step (parallel branches) appear in the order LangGraph scheduled them.
State patches (`update_state`) and LangGraph's own steps (`__start__`) are not nodes run.

Modes, as in LangChain's agentevals trajectory match, on node names; counts matter (a node that
ran twice must be expected twice):

| mode | passes when |
| --- | --- |
| strict | the path is the expected list exactly: same nodes, order and repetitions |
| unordered | the same nodes the same number of times, in any order |
| subset | the thread ran nothing beyond the expected nodes (path ⊆ expected) |
| superset | the thread ran at least the expected nodes (path ⊇ expected) |
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from wtb_dagster.history import CheckpointInfo, current_branch, list_checkpoints

MODES = ("strict", "unordered", "subset", "superset")


def path_of(checkpoints: Sequence[CheckpointInfo]) -> list[str]:
    """The nodes that wrote the checkpoints of the thread's current branch, oldest first."""
    path: list[str] = []
    for checkpoint in reversed(current_branch(checkpoints)):
        if checkpoint.source != "loop" or not checkpoint.writer:
            continue  # the input, a state patch, LangGraph's copy at a fork or rollback
        path.extend(n for n in checkpoint.writer.split(",") if not n.startswith("__"))
    return path


def thread_path(graph: Any, thread_id: str) -> list[str]:
    """The trajectory of a thread in `graph`'s checkpointer (see the module docstring)."""
    return path_of(list_checkpoints(graph, thread_id))


def matches(path: Sequence[str], expected: Sequence[str], mode: str) -> bool:
    """Whether a trajectory matches the expected one in a mode of `MODES`."""
    if mode == "strict":
        return list(path) == list(expected)
    ran, wanted = Counter(path), Counter(expected)
    if mode == "unordered":
        return ran == wanted
    if mode == "subset":
        return not ran - wanted
    if mode == "superset":
        return not wanted - ran
    raise ValueError(f"unknown trajectory mode {mode!r}; modes: {', '.join(MODES)}")


def tool_calls(messages: Any) -> list[str]:
    """The names of the tools called in a list of chat messages (LangChain or OpenAI shape)."""
    names: list[str] = []
    for message in messages if isinstance(messages, list | tuple) else ():
        calls = (message.get("tool_calls") if isinstance(message, dict) else None) or getattr(
            message, "tool_calls", None
        )
        for call in calls or ():
            if not isinstance(call, dict):
                continue
            name = call.get("name") or (call.get("function") or {}).get("name")
            if isinstance(name, str):
                names.append(name)
    return names
