"""Tokens from LangChain's callbacks, their cost from the price table, and the comparison of both."""

from __future__ import annotations

import math
import uuid

import pandas as pd
import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langgraph.graph import END, START, StateGraph

from tests import toy_graphs
from tests.conftest import toy_cases
from tests.test_engine.test_telemetry import CountingModel, make_bench
from wtb_dagster.comparison import compare
from wtb_dagster.costs import combo_costs, pareto_front
from wtb_dagster.errors import ConfigError
from wtb_dagster.usage import UsageCallback, cost_usd
from wtb_dagster.workflows import Workflow, load_registry

SMALL = CountingModel(model_name="small")  # 100 in, 20 out per call
BIG = CountingModel(model_name="big")
PRICES = {
    "small": {"input_per_1m": 1.0, "output_per_1m": 4.0},
    "big": {"input_per_1m": 10.0, "output_per_1m": 40.0},
}


def ask_small(state: toy_graphs.State) -> dict:
    SMALL.invoke("question")  # no config: reached through LangChain's runnable context
    return {"answer": "small"}


def ask_big_twice(state: toy_graphs.State) -> dict:
    BIG.invoke("question")
    BIG.invoke("follow-up")
    return {"answer": "big"}


async def ask_small_async(state: toy_graphs.State) -> dict:
    await SMALL.ainvoke("question")
    return {"answer": "small"}


def ask_unpriced(state: toy_graphs.State) -> dict:
    CountingModel(model_name="mystery").invoke("question")
    return {"answer": "?"}


def graph() -> StateGraph:
    """a → ask → c, `ask` one chat-model call."""
    built = StateGraph(toy_graphs.State)
    built.add_node("a", toy_graphs.node_a)
    built.add_node("ask", ask_small)
    built.add_node("c", toy_graphs.node_c)
    built.add_edge(START, "a")
    built.add_edge("a", "ask")
    built.add_edge("ask", "c")
    built.add_edge("c", END)
    return built


def workflow(**kwargs) -> Workflow:
    return Workflow(
        name="priced",
        graph=graph,
        variants={"ask": {"big": ask_big_twice, "aio": ask_small_async, "unpriced": ask_unpriced}},
        dataset=toy_cases(3),
        prices=PRICES,
        **kwargs,
    )


def test_tokens_from_a_fake_chat_model_are_summed_per_combo_and_model(sqlite_urls):
    bench = make_bench(sqlite_urls, workflow())
    bench.run_batch("priced", combos=["baseline", "ask=big", "ask=aio"])
    frame = bench.store.results_frame("priced")
    totals = frame.groupby("combo")[["tokens_in", "tokens_out"]].sum()
    assert totals.loc["baseline"].tolist() == [300, 60]
    assert totals.loc["ask=big"].tolist() == [600, 120]  # two calls per thread
    assert totals.loc["ask=aio"].tolist() == [300, 60]  # an async node's ainvoke too
    events = bench.store.events("priced/ask=big/c0")
    ask = events[events.node == "ask"].iloc[0]
    assert ask.usage == {"big": {"input": 200, "output": 40, "calls": 2, "cost_usd": 0.0036}}
    assert events[events.node != "ask"].tokens_in.sum() == 0  # only the node that called


def test_cost_comes_from_the_price_table_and_an_unknown_model_is_unknown_not_zero(sqlite_urls):
    bench = make_bench(sqlite_urls, workflow())
    bench.run_batch("priced", combos=["baseline", "ask=unpriced"])
    priced = bench.store.get_result("priced/baseline/c0")
    assert priced["cost_usd"] == pytest.approx((100 * 1.0 + 20 * 4.0) / 1e6)
    unpriced = bench.store.get_result("priced/ask=unpriced/c0")
    assert unpriced["tokens_in"] == 100 and unpriced["tokens_out"] == 20
    assert unpriced["cost_usd"] is None
    event = bench.store.events("priced/ask=unpriced/c0").set_index("node").loc["ask"]
    assert event.tokens_in == 100 and (event.cost_usd is None or math.isnan(event.cost_usd))
    costs = compare(bench.store.results_frame("priced")).costs.set_index("combo")
    assert costs.loc["baseline", "cost_total_usd"] == pytest.approx(3 * 180 / 1e6)
    assert math.isnan(costs.loc["ask=unpriced", "cost_total_usd"])
    assert costs.loc["ask=unpriced", "tokens_in_total"] == 300
    assert "unknown" in compare(bench.store.results_frame("priced")).to_markdown()


def test_a_resumed_thread_adds_its_usage_and_a_forced_rerun_replaces_it(sqlite_urls):
    def asks_then_waits() -> StateGraph:
        built = StateGraph(toy_graphs.State)
        built.add_node("ask", ask_small)
        built.add_node("approve", toy_graphs._approve)
        built.add_node("c", toy_graphs.node_c)
        built.add_edge(START, "ask")
        built.add_edge("ask", "approve")
        built.add_edge("approve", "c")
        built.add_edge("c", END)
        return built

    review = Workflow(name="review", graph=asks_then_waits, dataset=toy_cases(1), prices=PRICES)
    bench = make_bench(sqlite_urls, review)
    first = bench.run("review", "c0")
    assert first.status == "interrupted" and first.tokens_in == 100
    bench.resume(first.thread_id, "yes")
    row = bench.store.get_result(first.thread_id)
    assert row["status"] == "succeeded" and row["tokens_in"] == 100  # paid before the interrupt
    assert row["cost_usd"] == pytest.approx(180 / 1e6)
    bench.run_batch("review", force=True)  # from scratch: its usage is the new run's only
    again = bench.store.get_result(first.thread_id)
    assert again["tokens_in"] == 100 and again["status"] == "interrupted"


def test_cost_of_usage_at_prices():
    from wtb_dagster.config import ModelPrice

    prices = {"m": ModelPrice(input_per_1m=2.0, output_per_1m=8.0)}
    assert cost_usd({"m": {"input": 1_000_000, "output": 500_000}}, prices) == 6.0
    assert cost_usd({}, prices) == 0.0
    assert cost_usd({"other": {"input": 1, "output": 0}}, prices) is None
    assert cost_usd({"other": {"input": 0, "output": 0}}, prices) == 0.0  # no tokens, no cost


def test_usage_on_the_response_instead_of_the_message_is_counted():
    seen = []
    handler = UsageCallback(lambda model, i, o: seen.append((model, i, o)))
    run_id = uuid.uuid4()
    handler.on_chat_model_start({}, [[]], run_id=run_id, metadata={"ls_model_name": "gpt-x"})
    response = LLMResult(
        generations=[[ChatGeneration(message=AIMessage("hi"))]],
        llm_output={"token_usage": {"prompt_tokens": 7, "completion_tokens": 3}},
    )
    handler.on_llm_end(response, run_id=run_id)
    assert seen == [("gpt-x", 7, 3)]


def test_a_call_that_reports_no_usage_makes_the_cost_unknown_not_zero():
    from wtb_dagster.config import ModelPrice
    from wtb_dagster.usage import add_usage

    seen = []
    handler = UsageCallback(lambda model, i, o: seen.append((model, i, o)))
    run_id = uuid.uuid4()
    handler.on_chat_model_start({}, [[]], run_id=run_id, metadata={"ls_model_name": "gpt-x"})
    handler.on_llm_end(
        LLMResult(generations=[[ChatGeneration(message=AIMessage("hi"))]]), run_id=run_id
    )
    assert seen == [("gpt-x (usage not reported)", 0, 0)]
    usage = {}
    add_usage(usage, *seen[0])
    assert cost_usd(usage, {"gpt-x": ModelPrice(input_per_1m=1, output_per_1m=1)}) is None


def test_prices_in_wtb_yaml_merge_top_level_and_workflow_entries(tmp_path):
    (tmp_path / "cases.jsonl").write_text('{"id": "c0", "input": {"x": 1}}\n')
    (tmp_path / "wtb.yaml").write_text(
        "prices:\n"
        "  small: {input_per_1m: 1, output_per_1m: 2}\n"
        "  big: {input_per_1m: 5, output_per_1m: 10}\n"
        "workflows:\n"
        "  w:\n"
        "    graph: tests.toy_graphs:linear\n"
        "    dataset: cases.jsonl\n"
        "    prices:\n"
        "      big: {input_per_1m: 3, output_per_1m: 6}\n"
    )
    prices = load_registry(tmp_path / "wtb.yaml").get("w").prices
    assert {m: (p.input_per_1m, p.output_per_1m) for m, p in prices.items()} == {
        "small": (1.0, 2.0),
        "big": (3.0, 6.0),
    }


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ("{input_per_1m: 1}", "prices.small: 'output_per_1m'"),
        ("{input_per_1m: -1, output_per_1m: 2}", "greater than or equal to 0"),
        ("{input_per_1m: 1, output_per_1m: 2, per_call: 3}", "unknown key 'per_call'"),
    ],
)
def test_a_malformed_price_is_a_config_error_naming_it(tmp_path, price, message):
    (tmp_path / "wtb.yaml").write_text(
        f"prices:\n  small: {price}\nworkflows:\n  w:\n    graph: tests.toy_graphs:linear\n"
    )
    with pytest.raises(ConfigError, match=message):
        load_registry(tmp_path / "wtb.yaml")
    with pytest.raises(ConfigError, match=r"workflow 'w': prices\.small"):
        Workflow(name="w", graph=toy_graphs.linear, prices={"small": {"input_per_1m": "x"}})


def test_the_pareto_front_keeps_combos_no_other_beats_on_cost_and_quality():
    cost = pd.Series({"cheap": 1.0, "best": 2.0, "worse": 3.0, "tie": 2.0, "unpriced": math.nan})
    quality = pd.Series({"cheap": 0.5, "best": 0.9, "worse": 0.8, "tie": 0.7, "unpriced": 1.0})
    front = pareto_front(cost, quality)
    assert front[front].index.tolist() == ["cheap", "best"]


def test_cost_per_point_of_the_primary_metric_and_means_over_cases():
    rows = [
        # combo, case, trial, tokens in, out, cost, score
        ("baseline", "c0", 0, 0, 0, 0.0, 0.5),
        ("baseline", "c1", 0, 0, 0, 0.0, 0.5),
        ("llm", "c0", 0, 100, 10, 0.2, 1.0),
        ("llm", "c0", 1, 100, 10, 0.4, 1.0),  # a second trial: the case's mean is 0.3
        ("llm", "c1", 0, 300, 30, 0.1, 0.6),
    ]
    frame = pd.DataFrame(
        {
            "combo": [r[0] for r in rows],
            "case_id": [r[1] for r in rows],
            "trial": [r[2] for r in rows],
            "tokens_in": [r[3] for r in rows],
            "tokens_out": [r[4] for r in rows],
            "cost_usd": [r[5] for r in rows],
            "status": "succeeded",
            "scores": [{"m": r[6]} for r in rows],
            "latency_s": 0.1,
            "lineage": "",
        }
    )
    costs = compare(frame).costs.set_index("combo")
    llm = costs.loc["llm"]
    assert llm.cost_mean_usd == pytest.approx((0.3 + 0.1) / 2)
    assert llm.cost_total_usd == pytest.approx(0.7)
    assert llm.tokens_in_mean == pytest.approx(200) and llm.tokens_in_total == 500
    assert llm.quality == pytest.approx(0.8)
    assert llm.usd_per_point == pytest.approx(0.2 / 0.8)
    assert costs.pareto.tolist() == [True, True]  # free and worse, or better and paid
    assert combo_costs(frame.assign(tokens_in=0, tokens_out=0), llm).empty  # no usage at all


def test_the_demo_simulated_llm_reports_priced_usage_and_latency(sqlite_urls):
    registry = load_registry("wtb.yaml")
    demo = registry.get("demo")
    assert "simulated_llm" in demo.variant_names()["generate"]
    bench = make_bench(sqlite_urls, demo)
    result = bench.run("demo", "docs-001", combo="generate=simulated_llm")
    assert result.status == "succeeded", result.error
    generate = next(e for e in result.events if e["node"] == "generate")
    assert set(generate["usage"]) == {"sim-small"}
    assert generate["tokens_in"] > 50 and generate["tokens_out"] >= 1
    assert 0.02 <= generate["duration_s"] < 0.5
    assert result.cost_usd == pytest.approx(
        (generate["tokens_in"] * 0.15 + generate["tokens_out"] * 0.60) / 1e6
    )


def test_a_thread_sharing_a_prefix_counts_the_shared_nodes_usage_as_its_own(tmp_path):
    # ask is upstream of the varied node c: c=double starts after it, from the baseline's thread
    def run(share: bool, name: str):
        bench = make_bench(
            (f"sqlite:///{tmp_path}/{name}-c.db", f"sqlite:///{tmp_path}/{name}-r.db"),
            Workflow(
                name="priced",
                graph=graph,
                variants={"c": {"double": toy_graphs.node_b_double}},
                dataset=toy_cases(3),
                prices=PRICES,
                share_prefix=share,
            ),
        )
        bench.run_batch("priced")
        return bench

    shared, alone = run(True, "shared"), run(False, "alone")
    columns = ["thread_id", "tokens_in", "tokens_out", "cost_usd", "shared_from"]
    frame = shared.store.results_frame("priced")[columns].set_index("thread_id")
    reference = alone.store.results_frame("priced")[columns].set_index("thread_id")
    pd.testing.assert_frame_equal(
        frame[["tokens_in", "tokens_out", "cost_usd"]],
        reference[["tokens_in", "tokens_out", "cost_usd"]],
    )
    assert frame.loc["priced/c=double/c1", "shared_from"] == "priced/baseline/c1"
    assert frame.loc["priced/c=double/c1", "tokens_in"] == 100
    # what was paid is in the events: the sharing thread did not call the model itself
    events = shared.store.events("priced/c=double/c1")
    assert "ask" not in set(events.node)
    row = shared.store.get_result("priced/c=double/c1")
    assert row["node_usage"]["ask"] == [{"small": {"input": 100, "output": 20, "calls": 1}}]
