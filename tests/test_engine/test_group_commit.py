"""Group-committing checkpoint savers: LangGraph's contract, durability under SIGKILL, errors.

SQLite files and the local PostgreSQL, real processes killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import BASE_CAPABILITIES
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from wtb_dagster.checkpoints import open_checkpointer, saver_lanes, thread_config
from wtb_dagster.errors import ConfigError
from wtb_dagster.group_commit import GroupCommit, GroupCommitPostgresSaver, GroupCommitSqliteSaver

NODES = 8
CASES = 4000  # far more than the child gets through before it is killed
KILL_AFTER_PUTS = 400


@pytest.fixture
def checkpoint_url(request, tmp_path) -> str:
    """A SQLite file, then a fresh database on the local PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/checkpoints.db"
    return request.getfixturevalue("pg_url")


backends = pytest.mark.parametrize("checkpoint_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(autouse=True)
def _group_commit_on(monkeypatch) -> None:
    monkeypatch.setenv("WTB_GROUP_COMMIT", "on")


# -- the chain run by the killed child and resumed by the test ----------------------------------


class ChainState(TypedDict, total=False):
    x: int


CALLS: Counter[str] = Counter()  # node executions per thread, in this process


def _node(state: ChainState, config: RunnableConfig) -> ChainState:
    CALLS[config["configurable"]["thread_id"]] += 1
    time.sleep(0.002)  # stretches the run so the kill lands in its middle
    return {"x": state["x"] + 1}


def chain() -> StateGraph:
    graph = StateGraph(ChainState)
    for i in range(NODES):
        graph.add_node(f"n{i}", _node)
    graph.add_edge(START, "n0")
    for i in range(NODES - 1):
        graph.add_edge(f"n{i}", f"n{i + 1}")
    graph.add_edge(f"n{NODES - 1}", END)
    return graph


# Records every put and put_writes once it has returned (one O_APPEND write per line reaches
# the kernel before the call's caller goes on, so SIGKILL cannot lose it).
CHILD = textwrap.dedent(
    """
    import os, sys
    from concurrent.futures import ThreadPoolExecutor
    from tests.test_engine.test_group_commit import chain
    from wtb_dagster.checkpoints import open_checkpointer, thread_config

    url, side, cases = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with open_checkpointer(url) as saver:
        assert type(saver).__name__.startswith("GroupCommit"), type(saver)
        put, put_writes = saver.put, saver.put_writes

        def recorded_put(config, checkpoint, metadata, new_versions):
            saved = put(config, checkpoint, metadata, new_versions)
            os.write(fd, f"put {saved['configurable']['thread_id']} {checkpoint['id']}\\n".encode())
            return saved

        def recorded_writes(config, writes, task_id, task_path=""):
            put_writes(config, writes, task_id, task_path)
            c = config["configurable"]
            os.write(fd, f"writes {c['thread_id']} {c['checkpoint_id']} {task_id}\\n".encode())

        saver.put, saver.put_writes = recorded_put, recorded_writes
        graph = chain().compile(checkpointer=saver)
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(
                lambda i: graph.invoke({"x": i}, thread_config(f"t{i}"), durability="sync"),
                range(cases),
            ))
    print("finished")
    """
)


def _records(side: Path) -> list[list[str]]:
    text = side.read_text() if side.exists() else ""
    return [line.split() for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _run_child_until_killed(url: str, side: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(side), str(CASES)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        while sum(r[0] == "put" for r in _records(side)) < KILL_AFTER_PUTS:
            assert child.poll() is None, f"the child ended early: {child.communicate()}"
            assert time.monotonic() < deadline, "the child wrote no checkpoint"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def _ancestors(saver: Any, thread_id: str) -> list[str]:
    """Checkpoint ids from the thread's head back to its first, following parents."""
    by_id = {
        t.config["configurable"]["checkpoint_id"]: t for t in saver.list(thread_config(thread_id))
    }
    head = saver.get_tuple(thread_config(thread_id))
    chain_ids = []
    while head is not None:
        chain_ids.append(head.config["configurable"]["checkpoint_id"])
        parent = (head.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        head = by_id.get(parent) if parent else None
    return chain_ids


def _nodes_left(state: Any) -> int:
    """Nodes the chain still has to execute from a head: the head of step s has run s nodes
    (step -1 holds the input); the next node's writes, if saved with the head, are not run
    again."""
    step = state.metadata["step"]
    if step < 0:
        return NODES
    done_in_writes = any(t.name == f"n{step}" and t.result is not None for t in state.tasks)
    return NODES - step - done_in_writes


@backends
def test_thread_killed_between_group_commits_resumes_from_its_last_committed_checkpoint(
    checkpoint_url, tmp_path
):
    side = tmp_path / "returned.log"
    _run_child_until_killed(checkpoint_url, side)
    records = _records(side)
    puts = [(t, c) for kind, t, c, *_ in records if kind == "put"]
    writes = [(t, c, task) for kind, t, c, *rest in records if kind == "writes" for task in rest]
    assert len(puts) >= KILL_AFTER_PUTS

    with open_checkpointer(checkpoint_url) as saver:
        # No committed checkpoint is lost: every put and put_writes that returned is stored.
        for thread_id, checkpoint_id in puts:
            assert saver.get_tuple(thread_config(thread_id, checkpoint_id)) is not None, (
                f"checkpoint {checkpoint_id} of {thread_id} returned from put but is not stored"
            )
        for thread_id, checkpoint_id, task_id in writes:
            stored = saver.get_tuple(thread_config(thread_id, checkpoint_id))
            assert stored is not None
            assert task_id in {w[0] for w in stored.pending_writes}, (thread_id, task_id)

        graph = chain().compile(checkpointer=saver)
        last_returned = {t: c for t, c in puts}  # checkpoint ids grow within a thread
        heads, left = {}, {}
        for i in range(CASES):
            state = graph.get_state(thread_config(f"t{i}"))
            if state.created_at is None:
                continue
            head_id = state.config["configurable"]["checkpoint_id"]
            # the head is the newest committed checkpoint: never older than a returned put
            assert head_id >= last_returned.get(f"t{i}", ""), f"t{i} lost a committed checkpoint"
            heads[f"t{i}"], left[f"t{i}"] = head_id, _nodes_left(state)
        assert any(left.values()), "the kill landed after every started thread had ended"

        CALLS.clear()
        with ThreadPoolExecutor(32) as pool:
            resumed = dict(
                zip(
                    heads,
                    pool.map(
                        lambda t: graph.invoke(None, thread_config(t), durability="sync"), heads
                    ),
                    strict=True,
                )
            )
        clean = chain().compile(checkpointer=saver)
        for thread_id, head_id in heads.items():
            i = int(thread_id[1:])
            reference_id = f"clean-{i}"
            expected = clean.invoke({"x": i}, thread_config(reference_id), durability="sync")
            assert resumed[thread_id] == expected == {"x": i + NODES}
            path = _ancestors(saver, thread_id)
            # resumed from the head it was killed at: same path as a clean run, through the head
            assert head_id in path
            assert len(path) == len(_ancestors(saver, reference_id))
            assert CALLS[thread_id] == left[thread_id], thread_id


# -- LangGraph's conformance suite --------------------------------------------------------------


def _conformance(
    url: str, group_commit: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, tuple[bool | None, list[str]]]:
    monkeypatch.setenv("WTB_GROUP_COMMIT", group_commit)

    @checkpointer_test(name=f"group commit {group_commit}")
    async def factory():
        with open_checkpointer(url) as saver:
            yield saver

    report = asyncio.run(validate(factory))
    return {name: (r.passed, r.failures) for name, r in report.results.items()}


@backends
def test_group_commit_savers_pass_langgraph_conformance_as_the_plain_savers_do(
    checkpoint_url, monkeypatch
):
    grouped = _conformance(checkpoint_url, "on", monkeypatch)
    plain = _conformance(checkpoint_url, "off", monkeypatch)
    for capability in BASE_CAPABILITIES:
        assert grouped[capability.value][0] is True, (capability, grouped[capability.value][1])
    # Extended capabilities (copy_thread, delete_for_runs, prune) are whatever the saver
    # underneath implements: the group-committing one must not lose any.
    assert {k: v[0] for k, v in grouped.items()} == {k: v[0] for k, v in plain.items()}


# -- the savers open_checkpointer picks ---------------------------------------------------------


GROUPED = GroupCommitSqliteSaver | GroupCommitPostgresSaver


@backends
def test_open_checkpointer_group_commits_as_the_setting_says(checkpoint_url, monkeypatch):
    on_postgres = checkpoint_url.startswith("postgresql")
    monkeypatch.delenv("WTB_GROUP_COMMIT")  # auto: PostgreSQL only
    with open_checkpointer(checkpoint_url) as saver:
        assert isinstance(saver, GROUPED) == on_postgres
        assert isinstance(saver, PostgresSaver if on_postgres else SqliteSaver)
    monkeypatch.setenv("WTB_GROUP_COMMIT", "on")
    with open_checkpointer(checkpoint_url) as saver:
        assert isinstance(saver, GROUPED)
    monkeypatch.setenv("WTB_GROUP_COMMIT", "off")
    with open_checkpointer(checkpoint_url) as saver:
        assert isinstance(saver, SqliteSaver | PostgresSaver)
        assert not isinstance(saver, GROUPED)
    monkeypatch.setenv("WTB_GROUP_COMMIT", "sometimes")
    with pytest.raises(ConfigError, match="WTB_GROUP_COMMIT"), open_checkpointer(checkpoint_url):
        pass


def test_postgres_lanes_share_one_group_so_their_writes_commit_together(pg_url):
    with open_checkpointer(pg_url, pool_size=4) as saver:
        lanes = saver_lanes(saver, 4)
        assert len(lanes) == 4
        assert all(lane.group is saver.group for lane in lanes)  # type: ignore[attr-defined]
        graphs = [chain().compile(checkpointer=lane) for lane in lanes]
        with ThreadPoolExecutor(16) as pool:
            finals = list(
                pool.map(
                    lambda i: graphs[i % 4].invoke(
                        {"x": i}, thread_config(f"t{i}"), durability="sync"
                    ),
                    range(64),
                )
            )
        assert finals == [{"x": i + NODES} for i in range(64)]
        group = saver.group  # type: ignore[attr-defined]
        assert group.members_committed > 0 and group.commits <= group.members_committed


# -- a group with a bad member ------------------------------------------------------------------


def _held_group(saver: Any) -> tuple[threading.Event, threading.Event]:
    """Make the saver's next commit wait until released, so that calls queue behind it and
    form one group of their own. Returns (first commit started, release)."""
    started, release = threading.Event(), threading.Event()
    transact = saver.group._transact

    def held(groups):
        if not started.is_set():
            started.set()
            assert release.wait(60)
        transact(groups)

    saver.group._transact = held
    return started, release


BAD = [("execute", "INSERT INTO no_such_table VALUES (1)", None)]


@backends
def test_a_failing_member_of_a_group_fails_alone_and_the_others_commit(checkpoint_url):
    with open_checkpointer(checkpoint_url) as saver:
        graph = chain().compile(checkpointer=saver)
        started, release = _held_group(saver)
        group = saver.group  # type: ignore[attr-defined]
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(graph.invoke, {"x": 0}, thread_config("first"), durability="sync")
            assert started.wait(60)
            bad = pool.submit(group.submit, BAD)
            _wait_until(lambda: group.queued() >= 1)
            good = [
                pool.submit(graph.invoke, {"x": i}, thread_config(f"good{i}"), durability="sync")
                for i in range(4)
            ]
            # the bad statement and the four threads' first writes wait as one group
            _wait_until(lambda: group.queued() >= 5)
            release.set()
            with pytest.raises(Exception, match="no_such_table"):
                bad.result(timeout=60)
            assert first.result(timeout=60) == {"x": NODES}
            assert [g.result(timeout=60) for g in good] == [{"x": i + NODES} for i in range(4)]
        for i in range(4):
            assert len(_ancestors(saver, f"good{i}")) == len(_ancestors(saver, "first"))


def _wait_until(condition: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_group_commit_returns_only_after_its_transaction_commits():
    """`submit` blocks while the transaction holding its statements is still open."""
    committed: list[int] = []
    in_transaction = threading.Event()
    release = threading.Event()

    def transact(groups):
        in_transaction.set()
        assert release.wait(60)
        committed.extend(len(g) for g in groups)

    group = GroupCommit(transact)
    with ThreadPoolExecutor(2) as pool:
        call = pool.submit(group.submit, [("execute", "SELECT 1", None)])
        assert in_transaction.wait(60)
        assert not call.done()
        release.set()
        call.result(timeout=60)
    assert committed == [1]


def test_a_write_stuck_behind_a_commit_times_out_and_is_dropped_not_committed_later():
    committed: list[list[Any]] = []
    in_transaction, release = threading.Event(), threading.Event()

    def transact(groups):
        if not in_transaction.is_set():
            in_transaction.set()
            assert release.wait(60)
        committed.extend(groups)

    group = GroupCommit(transact, timeout_s=0.2)
    with ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(group.submit, [("execute", "first", None)])
        assert in_transaction.wait(60)
        with pytest.raises(TimeoutError, match="no commit took this write"):
            group.submit([("execute", "second", None)])
        assert group.queued() == 0
        release.set()
        stuck.result(timeout=60)
    assert committed == [[("execute", "first", None)]]
