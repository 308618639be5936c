"""A graph whose nodes create, overwrite and delete files in their thread's workspace.

Every node records what it found in the workspace when it started (`seen`: path → content),
so a test can tell from a thread's state whether a restored workspace was exactly right.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from wtb_dagster import workspace_dir


class FileState(TypedDict, total=False):
    tag: str
    fail_at: str
    kill_marker: str  # node c SIGKILLs its process once (then creates this file)
    seen: dict[str, dict[str, str]]  # node → {path: content} found when it started
    answer: str


def listing(folder: Path) -> dict[str, str]:
    """path → content (text, or `<n bytes, mode>` for binary files) of a folder's files."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = f"<{len(data)} bytes>"
        found[path.relative_to(folder).as_posix()] = f"{text}|{oct(path.stat().st_mode & 0o777)}"
    return found


def _start(name: str, state: FileState, config: RunnableConfig) -> tuple[Path, dict]:
    folder = workspace_dir(config)
    seen = {**state.get("seen", {}), name: listing(folder)}
    if name in (state.get("fail_at"), os.environ.get("WTB_TEST_FILES_FAIL_AT")):
        (folder / "junk.txt").write_text("written by a node that then failed")
        raise ValueError(f"node {name} was told to fail")
    return folder, seen


def write_a(state: FileState, config: RunnableConfig) -> dict:
    folder, seen = _start("a", state, config)
    (folder / "notes").mkdir(exist_ok=True)
    (folder / "notes" / "a.txt").write_text(f"a of {state['tag']}")
    (folder / "data.bin").write_bytes(bytes(range(256)) * 4)
    script = folder / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o755)
    (folder / "shared.txt").write_text("the same in every thread")
    return {"seen": seen}


def write_b(state: FileState, config: RunnableConfig) -> dict:
    folder, seen = _start("b", state, config)
    (folder / "data.bin").write_bytes(b"b rewrote this for " + state["tag"].encode())
    (folder / "b.txt").write_text("b was here")
    return {"seen": seen}


def write_c(state: FileState, config: RunnableConfig) -> dict:
    folder, seen = _start("c", state, config)
    marker = state.get("kill_marker")
    if marker and not Path(marker).exists():
        # half-done side effects, then death: the retry must not see any of them
        (folder / "b.txt").write_text("torn by a node that was killed")
        (folder / "junk.txt").write_text("left by a killed node")
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    (folder / "notes" / "a.txt").unlink()
    private = folder / "c.txt"
    private.write_text("c: " + (folder / "data.bin").read_text())
    os.chmod(private, 0o600)
    return {"seen": seen, "answer": (folder / "b.txt").read_text() + " / " + private.read_text()}


def write_c_alt(state: FileState, config: RunnableConfig) -> dict:
    folder, seen = _start("c", state, config)
    (folder / "alt.txt").write_text("the alternative c")
    return {"seen": seen, "answer": "alt"}


def build_file_graph() -> StateGraph:
    graph = StateGraph(FileState)
    graph.add_node("a", write_a)
    graph.add_node("b", write_b)
    graph.add_node("c", write_c)
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    graph.add_edge("c", END)
    return graph


async def write_c_async(state: FileState, config: RunnableConfig) -> dict:
    """Node c on LangGraph's async path: the checkpoints go through the saver's `aput`."""
    folder, seen = _start("c", state, config)
    (folder / "notes" / "a.txt").unlink()
    (folder / "async.txt").write_text("written by an async node")
    return {"seen": seen, "answer": "async"}


def _parallel(name: str):
    def node(state: FileState, config: RunnableConfig) -> dict:
        folder, _ = _start(name, state, config)
        (folder / f"{name}.txt").write_text(f"{name} of {state['tag']}")
        return {}

    node.__name__ = f"write_{name}"
    return node


def join(state: FileState, config: RunnableConfig) -> dict:
    folder = workspace_dir(config)
    return {"answer": " + ".join((folder / f"{n}.txt").read_text() for n in ("p1", "p2"))}


def build_parallel_file_graph() -> StateGraph:
    """p1 and p2 in one super-step, each writing a file; `join` reads both."""
    graph = StateGraph(FileState)
    graph.add_node("p1", _parallel("p1"))
    graph.add_node("p2", _parallel("p2"))
    graph.add_node("join", join)
    graph.add_edge(START, "p1")
    graph.add_edge(START, "p2")
    graph.add_edge(["p1", "p2"], "join")
    graph.add_edge("join", END)
    return graph
