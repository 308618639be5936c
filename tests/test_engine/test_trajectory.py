"""Trajectory scorers on recorded paths: the demo's two routes, a tool-calling loop, a fork."""

from __future__ import annotations

from typing import Annotated, TypedDict

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from tests import toy_graphs
from tests.conftest import toy_cases
from wtb_dagster.api import Bench
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError
from wtb_dagster.scoring import builtin, exact_match, score_state
from wtb_dagster.trajectory import matches, path_of, thread_path
from wtb_dagster.workflows import Registry, Workflow, workflow_from_yaml

MODES = ("strict", "unordered", "subset", "superset")
DOCS = "How many days do I have to return a product after delivery?"
SQL = "What is the price of the Aurora Lamp?"
DOCS_PATH = ["router", "retrieve", "grade", "generate"]
SQL_PATH = ["router", "sql_answer"]


def trajectory_scorers() -> list:
    return [builtin("trajectory_match", mode=mode) for mode in MODES] + [builtin("tool_called")]


def bench_for(workflow: Workflow, urls: tuple[str, str]) -> Bench:
    return Bench(Registry([workflow]), urls[0], urls[1])


def scores(**by_mode: int) -> dict[str, float]:
    return {f"trajectory_{mode}": float(value) for mode, value in by_mode.items()}


# -- a tool-calling loop: agent → tools → agent … (a scripted ReAct agent) ------------------------


class AgentState(TypedDict, total=False):
    question: str
    plan: list[str]  # the tools the scripted model calls, one per turn
    messages: Annotated[list, add_messages]
    answer: str


def agent(state: AgentState) -> dict:
    done = sum(isinstance(m, ToolMessage) for m in state.get("messages", []))
    plan = state.get("plan", [])
    if done < len(plan):
        call = {"name": plan[done], "args": {"q": state["question"]}, "id": f"call-{done}"}
        return {"messages": [AIMessage(content="", tool_calls=[call])]}
    return {"messages": [AIMessage(content="done")], "answer": f"used {done} tools"}


def tools(state: AgentState) -> dict:
    call = state["messages"][-1].tool_calls[0]
    return {"messages": [ToolMessage(content=f"{call['name']}: ok", tool_call_id=call["id"])]}


def agent_loop() -> StateGraph:
    graph = StateGraph(AgentState)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges(
        "agent", lambda s: "tools" if s["messages"][-1].tool_calls else END, ["tools", END]
    )
    graph.add_edge("tools", "agent")
    return graph


LOOP_PATH = ["agent", "tools", "agent", "tools", "agent"]  # two tool calls, three turns

# (case id, input, expected, scores it must get); every mode passes on one case and fails on
# another; a case with nothing to check for a scorer gets no score from it (not a 0).
LOOP_CASES = [
    ("same", LOOP_PATH, scores(strict=1, unordered=1, subset=1, superset=1)),
    ("one-turn-fewer", ["agent", "tools", "agent"], scores(strict=0, unordered=0, subset=0, superset=1)),
    ("reordered", ["tools", "agent", "tools", "agent", "agent"], scores(strict=0, unordered=1, subset=1, superset=1)),
    ("same-set-other-counts", ["agent", "tools"], scores(strict=0, unordered=0, subset=0, superset=1)),
    ("room-for-a-third-call", [*LOOP_PATH, "tools", "agent"], scores(strict=0, unordered=0, subset=1, superset=0)),
    ("tools-twice-agent-once", ["agent", "tools", "tools"], scores(strict=0, unordered=0, subset=0, superset=1)),
    ("tools-thrice", ["tools", "tools", "tools"], scores(strict=0, unordered=0, subset=0, superset=0)),
]  # fmt: skip
LOOP_TOOL_CASES = [  # tools called are read from the messages' tool calls as well as the path
    ("called-search", {"tools_called": ["search"]}, 1.0),
    ("not-called-calculator", {"tools_not_called": ["calculator"]}, 0.0),
    ("called-browser", {"tools_called": ["browser"]}, 0.0),
    ("called-tools-node", {"tools_called": ["tools"], "tools_not_called": ["browser"]}, 1.0),
]


def test_loop_trajectory_repeats_nodes_and_each_mode_passes_and_fails(sqlite_urls):
    plan = ["search", "calculator"]
    cases = [
        TestCase(id=f"loop-{name}", input={"question": "q", "plan": plan}, expected={"trajectory": path})
        for name, path, _ in LOOP_CASES
    ] + [
        TestCase(id=f"tool-{name}", input={"question": "q", "plan": plan}, expected=expected)
        for name, expected, _ in LOOP_TOOL_CASES
    ]  # fmt: skip
    wf = Workflow(name="loop", graph=agent_loop, scorers=trajectory_scorers(), dataset=cases)
    bench = bench_for(wf, sqlite_urls)
    bench.run_batch("loop")
    threads = bench.threads("loop").set_index("case_id")
    assert set(threads.status) == {"succeeded"}
    path = path_of(bench.get_checkpoints("loop/baseline/loop-same"))
    assert path == LOOP_PATH
    for name, _, wanted in LOOP_CASES:
        assert threads.loc[f"loop-{name}", "scores"] == wanted, name
    for name, _, wanted in LOOP_TOOL_CASES:
        assert threads.loc[f"tool-{name}", "scores"] == {"tool_called": wanted}, name


# -- the demo: both routes ---------------------------------------------------------------------

DEMO_CASES = [
    ("docs-same", DOCS, DOCS_PATH, scores(strict=1, unordered=1, subset=1, superset=1)),
    ("docs-swapped", DOCS, ["router", "grade", "retrieve", "generate"], scores(strict=0, unordered=1, subset=1, superset=1)),
    ("docs-no-grade", DOCS, ["router", "retrieve", "generate"], scores(strict=0, unordered=0, subset=0, superset=1)),
    ("docs-or-sql", DOCS, [*DOCS_PATH, "sql_answer"], scores(strict=0, unordered=0, subset=1, superset=0)),
    ("sql-same", SQL, SQL_PATH, scores(strict=1, unordered=1, subset=1, superset=1)),
    ("sql-docs-route", SQL, DOCS_PATH, scores(strict=0, unordered=0, subset=0, superset=0)),
    ("sql-reversed", SQL, ["sql_answer", "router"], scores(strict=0, unordered=1, subset=1, superset=1)),
    ("sql-router-only", SQL, ["router"], scores(strict=0, unordered=0, subset=0, superset=1)),
]  # fmt: skip
DEMO_TOOL_CASES = [
    ("docs-no-sql", DOCS, {"tools_not_called": ["sql_answer"]}, 1.0),
    ("docs-sql", DOCS, {"tools_called": ["sql_answer"]}, 0.0),
    ("sql-sql", SQL, {"tools_called": ["sql_answer"], "tools_not_called": ["retrieve"]}, 1.0),
    ("sql-no-sql", SQL, {"tools_not_called": ["sql_answer"]}, 0.0),
]


def demo_workflow(cases: list[TestCase], scorers: list | None = None) -> Workflow:
    return Workflow(
        name="demo_paths",
        graph="wtb_dagster.demo.workflow:build_graph",
        variants={"generate": {"template": "wtb_dagster.demo.workflow:generate_template"}},
        scorers=scorers if scorers is not None else trajectory_scorers(),
        dataset=cases,
    )


def test_demo_routes_are_recorded_and_each_mode_passes_and_fails(sqlite_urls):
    cases = [
        TestCase(id=name, input={"question": q}, expected={"trajectory": path})
        for name, q, path, _ in DEMO_CASES
    ] + [
        TestCase(id=f"tool-{name}", input={"question": q}, expected=expected)
        for name, q, expected, _ in DEMO_TOOL_CASES
    ]
    bench = bench_for(demo_workflow(cases), sqlite_urls)
    bench.run_batch("demo_paths", combos=["baseline"])
    threads = bench.threads("demo_paths").set_index("case_id")
    assert path_of(bench.get_checkpoints("demo_paths/baseline/docs-same")) == DOCS_PATH
    assert path_of(bench.get_checkpoints("demo_paths/baseline/sql-same")) == SQL_PATH
    for name, _, _, wanted in DEMO_CASES:
        assert threads.loc[name, "scores"] == wanted, name
    for name, _, _, wanted in DEMO_TOOL_CASES:
        assert threads.loc[f"tool-{name}", "scores"] == {"tool_called": wanted}, name


def test_a_forks_trajectory_includes_the_nodes_before_the_fork(store_urls):
    case = TestCase(id="docs-1", input={"question": DOCS}, expected={"trajectory": DOCS_PATH})
    bench = bench_for(demo_workflow([case]), store_urls)
    bench.run_batch("demo_paths", combos=["baseline"])
    forked = bench.fork(
        "demo_paths/baseline/docs-1", before_node="generate", variant="generate=template"
    )
    assert forked.status == "succeeded" and forked.nodes_executed == 1  # only generate ran
    assert forked.score_errors == {}
    assert forked.scores == scores(strict=1, unordered=1, subset=1, superset=1)
    assert path_of(bench.get_checkpoints(forked.thread_id)) == DOCS_PATH


def test_a_rolled_back_threads_trajectory_is_its_current_branch(sqlite_urls):
    wf = toy_graphs_workflow()
    bench = bench_for(wf, sqlite_urls)
    bench.run("toy_paths", "c0")
    again = bench.rollback("toy_paths/baseline/c0", to_node="b")
    # the old branch (a, b, c) stays in the history; the path is the branch that led here
    assert len(bench.get_checkpoints(again.thread_id)) > 5
    assert path_of(bench.get_checkpoints(again.thread_id)) == ["a", "b", "c"]
    assert again.scores["trajectory_strict"] == 1.0


def toy_graphs_workflow() -> Workflow:
    cases = [
        TestCase(id=c.id, input=c.input, expected={"trajectory": ["a", "b", "c"]})
        for c in toy_cases(1)
    ]
    return Workflow(
        name="toy_paths",
        graph=toy_graphs.linear,
        scorers=[builtin("trajectory_match", mode="strict")],
        dataset=cases,
    )


# -- how scorers get the path ----------------------------------------------------------------------


class CountingGraph:
    """A compiled graph that counts how often its history is read."""

    def __init__(self, graph) -> None:
        self.graph, self.reads = graph, 0

    def get_state_history(self, config):
        self.reads += 1
        return self.graph.get_state_history(config)


@pytest.fixture
def toy_thread(tmp_path):
    with SqliteSaver.from_conn_string(str(tmp_path / "cp.db")) as saver:
        graph = toy_graphs.linear().compile(checkpointer=saver)
        graph.invoke({"x": 0}, {"configurable": {"thread_id": "t"}})
        yield CountingGraph(graph)


def test_the_path_is_read_only_when_a_scorer_asks_and_then_once(toy_thread):
    case = TestCase(id="k", input={}, expected={"trajectory": ["a", "b", "c"], "answer": "1011"})
    state = {"answer": "1011"}
    metrics, _ = score_state(case, state, [exact_match()], graph=toy_thread, thread_id="t")
    assert metrics == {"exact_match": 1.0} and toy_thread.reads == 0

    def loops(case, state, trajectory) -> float:  # a user scorer asking for the path
        return float(len(trajectory) != len(set(trajectory)))

    scorers = [builtin("trajectory_match"), builtin("trajectory_match", mode="subset"), loops]
    metrics, errors = score_state(case, state, scorers, graph=toy_thread, thread_id="t")
    assert errors == {}
    assert metrics == {"trajectory_strict": 1.0, "trajectory_subset": 1.0, "loops": 0.0}
    assert toy_thread.reads == 1
    assert thread_path(toy_thread.graph, "t") == ["a", "b", "c"]


def test_a_scorer_that_cannot_get_the_path_is_an_error_not_a_zero(toy_thread):
    case = TestCase(id="k", input={}, expected={"trajectory": ["a"]})
    metrics, errors = score_state(case, {}, [builtin("trajectory_match")])
    assert metrics == {} and "needs the thread's trajectory" in errors["trajectory_strict"]
    metrics, errors = score_state(
        case, {}, [builtin("trajectory_match")], graph=toy_thread, thread_id="nope"
    )
    assert metrics == {} and errors["trajectory_strict"].startswith("ThreadNotFoundError")


def test_a_given_trajectory_is_used_and_a_malformed_expectation_is_an_error():
    scorer = builtin("trajectory_match", mode="superset")
    ok = TestCase(id="k", input={}, expected={"trajectory": ["b"]})
    assert score_state(ok, {}, [scorer], trajectory=["a", "b"]) == (
        {"trajectory_superset": 1.0},
        {},
    )
    bad = TestCase(id="k", input={}, expected={"trajectory": "router"})
    metrics, errors = score_state(bad, {}, [scorer], trajectory=["router"])
    assert (
        metrics == {}
        and "expected.trajectory must be a list of names" in errors["trajectory_superset"]
    )
    # no expectation: the scorer does not apply (no metric, no error)
    none = TestCase(id="k", input={}, expected={"answer": "x"})
    assert score_state(none, {}, [scorer, builtin("tool_called")], trajectory=["a"]) == ({}, {})


def test_matches_is_count_aware_in_every_mode():
    path = ["a", "b", "a"]
    assert matches(path, ["a", "b", "a"], "strict") and not matches(path, ["a", "a", "b"], "strict")
    assert matches(path, ["a", "a", "b"], "unordered") and not matches(
        path, ["a", "b"], "unordered"
    )
    assert matches(path, ["a", "a", "b", "c"], "subset") and not matches(path, ["a", "b"], "subset")
    assert matches(path, ["a", "a"], "superset") and not matches(path, ["a", "a", "a"], "superset")
    with pytest.raises(ValueError, match="unknown trajectory mode"):
        matches(path, path, "sideways")


def test_trajectory_scorers_from_wtb_yaml_and_a_bad_mode(tmp_path):
    entry = {
        "graph": "tests.toy_graphs:linear",
        "scorers": [
            {"use": "trajectory_match", "mode": "unordered", "name": "same_nodes"},
            {"use": "tool_called", "not_called": ["b"]},
        ],
        "dataset": None,
    }
    wf = workflow_from_yaml("ok", entry, tmp_path)
    case = TestCase(id="k", input={}, expected={"trajectory": ["c", "b", "a"]})
    assert score_state(case, {}, wf.scorers, trajectory=["a", "b", "c"]) == (
        {"same_nodes": 1.0, "tool_called": 0.0},
        {},
    )
    entry["scorers"] = [{"use": "trajectory_match", "mode": "sideways"}]
    with pytest.raises(ConfigError, match=r"scorers\[0\].*modes are strict, unordered"):
        workflow_from_yaml("bad", entry, tmp_path)
    entry["scorers"] = [{"use": "tool_called", "called": "b"}]  # one name, as a string
    one = workflow_from_yaml("one", entry, tmp_path)
    assert score_state(case, {}, one.scorers, trajectory=["a", "b"]) == ({"tool_called": 1.0}, {})
    entry["scorers"] = [{"use": "tool_called", "called": {"b": 1}}]
    with pytest.raises(ConfigError, match="called must be a list of names"):
        workflow_from_yaml("bad", entry, tmp_path)
