"""Node telemetry: the event trail in the results store, OpenTelemetry spans, Prometheus metrics."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from tests import toy_graphs
from tests.conftest import toy_cases, toy_workflow
from wtb_dagster import metrics, tracing
from wtb_dagster.api import Bench
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.store import ResultsStore
from wtb_dagster.workflows import Registry, Workflow


class CountingModel(BaseChatModel):
    """A chat model that always reports 100 input and 20 output tokens."""

    model_name: str = "fake-model"

    @property
    def _llm_type(self) -> str:
        return "fake"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message = AIMessage(
            "ok",
            usage_metadata={"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


MODEL = CountingModel()


def _ask(state: toy_graphs.State) -> dict:
    MODEL.invoke("hello")  # no config passed: LangChain's context carries the callbacks
    return {"answer": "asked", "x": state.get("x", 0)}


def llm_graph() -> StateGraph:
    """a → ask (one chat-model call) → c."""
    graph = StateGraph(toy_graphs.State)
    graph.add_node("a", toy_graphs.node_a)
    graph.add_node("ask", _ask)
    graph.add_node("c", toy_graphs.node_c)
    graph.add_edge(START, "a")
    graph.add_edge("a", "ask")
    graph.add_edge("ask", "c")
    graph.add_edge("c", END)
    return graph


def make_bench(urls: tuple[str, str], *workflows: Workflow) -> Bench:
    return Bench(
        Registry(workflows or [toy_workflow()]),
        checkpoint_url=urls[0],
        results_url=urls[1],
        executor=LocalExecutor(max_concurrency=4),
    )


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    yield exporter
    tracing.set_tracer_provider(None)


# -- node events ---------------------------------------------------------------------------------


def test_a_batch_stores_one_event_per_node_execution_with_the_rows(store_urls):
    bench = make_bench(store_urls)
    summary = bench.run_batch("toy", combos=["baseline", "b=double"])
    assert summary.statuses == {"succeeded": 8}
    events = bench.store.events("toy/baseline/c1")
    assert list(events.node) == ["a", "b", "c"]
    assert list(events.step) == [1, 2, 3]
    assert set(events.status) == {"ok"} and set(events.attempt) == {1}
    assert (events.duration_s > 0).all() and events.error.isna().all()
    assert (events.finished_at >= events.started_at).all()
    # one event per node a thread executed (a combo sharing a prefix runs fewer)
    doubled = [r for r in summary.results if r.combo == "b=double"]
    frame = bench.store.events_frame("toy", combos=["b=double"])
    assert len(frame) == sum(r.nodes_executed for r in doubled) >= 4 * 2
    assert set(frame.combo) == {"b=double"} and "b" in set(frame.node)
    assert len(bench.store.events_frame("toy")) == sum(r.nodes_executed for r in summary.results)


def test_a_failing_node_is_an_error_event_and_nothing_after_it(sqlite_urls):
    cases = [TestCase(id="boom", input={"x": 1, "fail_at": "b"})]
    bench = make_bench(sqlite_urls, toy_workflow(cases=cases))
    bench.run_batch("toy", combos=["baseline"])
    events = bench.store.events("toy/baseline/boom")
    assert list(zip(events.node, events.status, strict=True)) == [("a", "ok"), ("b", "error")]
    assert "ValueError: node b was told to fail" in events.error.iloc[1]


def test_a_fork_records_only_the_nodes_downstream_of_its_fork_point(store_urls):
    bench = make_bench(store_urls)
    bench.run("toy", "c0")
    fork = bench.fork("toy/baseline/c0", before_node="c", variant="b=double")
    assert list(bench.store.events(fork.thread_id).node) == ["c"]
    assert [e["node"] for e in fork.events] == ["c"]
    assert list(bench.store.events("toy/baseline/c0").node) == ["a", "b", "c"]  # parent kept


def test_a_resumed_interrupt_records_its_nodes_as_the_next_attempt(store_urls):
    review = Workflow(name="review", graph=toy_graphs.with_interrupt, dataset=toy_cases(1))
    bench = make_bench(store_urls, review)
    first = bench.run("review", "c0")
    assert first.status == "interrupted"
    resumed = bench.resume(first.thread_id, "approved")
    assert resumed.status == "succeeded", resumed.error
    events = bench.store.events(first.thread_id)
    assert list(zip(events.attempt, events.node, events.status, strict=True)) == [
        (1, "a", "ok"),
        (1, "approve", "interrupted"),
        (2, "approve", "ok"),  # the interrupted node runs again with the answer
        (2, "c", "ok"),
    ]
    assert "approve?" in events.error.iloc[1]


FLAKY = {"failures_left": 0}


def _flaky_c(state: toy_graphs.State) -> dict:
    if FLAKY["failures_left"]:
        FLAKY["failures_left"] -= 1
        raise RuntimeError("transient")
    return toy_graphs.node_c(state)


def flaky_graph() -> StateGraph:
    """a → b → c, where c fails as often as FLAKY says."""
    graph = toy_graphs.linear()
    graph.nodes.pop("c")
    graph.add_node("c", _flaky_c)
    return graph


def test_a_retried_failed_thread_resumes_as_attempt_2(sqlite_urls, monkeypatch):
    monkeypatch.setitem(FLAKY, "failures_left", 1)
    workflow = Workflow(name="flaky", graph=flaky_graph, dataset=toy_cases(1))
    bench = make_bench(sqlite_urls, workflow)
    assert bench.run_batch("flaky").statuses == {"failed": 1}
    assert bench.run_batch("flaky", retry_failed=True).statuses == {"succeeded": 1}
    events = bench.store.events("flaky/baseline/c0")
    assert list(zip(events.attempt, events.node, events.status, strict=True)) == [
        (1, "a", "ok"),
        (1, "b", "ok"),
        (1, "c", "error"),
        (2, "c", "ok"),  # resumed from its last checkpoint: a and b did not run again
    ]


def test_events_and_rows_are_written_in_one_transaction(sqlite_urls, monkeypatch):
    bench = make_bench(sqlite_urls)
    bench.store.setup()

    def broken(*args, **kwargs):
        raise RuntimeError("event insert failed")

    monkeypatch.setattr("wtb_dagster.store._event_row", broken)
    with pytest.raises(RuntimeError, match="event insert failed"):
        bench.run("toy", "c0")
    assert bench.store.count("toy") == 0  # no row stored without its events
    assert bench.store.events("toy/baseline/c0").empty


def test_a_run_that_lost_its_lease_writes_neither_row_nor_events(sqlite_urls):
    bench = make_bench(sqlite_urls)
    first = bench.run("toy", "c0")
    store = ResultsStore(sqlite_urls[1])
    stale = first.__class__(**{**first.__dict__, "status": "failed"})
    # a lease held by another owner: this writer's row and events are fenced off
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO wtb_thread_leases VALUES ('toy/baseline/c0', 'other', 'h', 1, 1e12)"
        )
    store.upsert_results([stale], lease_owner="me")
    assert store.get_result("toy/baseline/c0")["status"] == "succeeded"
    assert set(store.events("toy/baseline/c0").attempt) == {1}
    store.close()


def test_telemetry_off_records_no_events_usage_or_spans(sqlite_urls, monkeypatch, spans):
    monkeypatch.setenv("WTB_TELEMETRY", "off")
    bench = make_bench(sqlite_urls, Workflow(name="llm", graph=llm_graph, dataset=toy_cases(2)))
    result = bench.run("llm", "c0")
    assert result.status == "succeeded"
    assert result.events == [] and result.tokens_in == 0 and result.cost_usd is None
    assert bench.store.events(result.thread_id).empty
    assert spans.get_finished_spans() == ()


def test_an_unknown_telemetry_switch_is_refused(sqlite_urls, monkeypatch):
    monkeypatch.setenv("WTB_TELEMETRY", "maybe")
    bench = make_bench(sqlite_urls)
    with pytest.raises(ConfigError, match="WTB_TELEMETRY='maybe'"):
        bench.run("toy", "c0")


# -- OpenTelemetry -------------------------------------------------------------------------------


def test_one_span_per_thread_with_a_child_span_per_node(sqlite_urls, spans):
    workflow = Workflow(
        name="llm",
        graph=llm_graph,
        dataset=toy_cases(2),
        prices={"fake-model": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
    )
    bench = make_bench(sqlite_urls, workflow)
    bench.run_batch("llm")
    finished = spans.get_finished_spans()
    threads = [s for s in finished if s.name == "wtb.thread"]
    assert len(threads) == 2
    for thread in threads:
        children = [s for s in finished if s.parent and s.parent.span_id == thread.context.span_id]
        assert [s.name for s in sorted(children, key=lambda s: s.start_time)] == ["a", "ask", "c"]
        assert thread.parent is None
        assert thread.attributes["wtb.workflow"] == "llm"
        assert thread.attributes["wtb.combo"] == "baseline"
        assert thread.attributes["wtb.status"] == "succeeded"
        assert thread.attributes["gen_ai.usage.input_tokens"] == 100
        ask = next(s for s in children if s.name == "ask")
        assert ask.attributes["wtb.node"] == "ask"
        assert ask.attributes["wtb.case"] == thread.attributes["wtb.case"]
        assert ask.attributes["gen_ai.usage.output_tokens"] == 20
        assert ask.attributes["wtb.cost_usd"] == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
        assert ask.attributes["wtb.status"] == "ok"


def test_a_failed_node_span_has_error_status_and_the_exception(sqlite_urls, spans):
    cases = [TestCase(id="boom", input={"x": 1, "fail_at": "b"})]
    bench = make_bench(sqlite_urls, toy_workflow(cases=cases))
    bench.run("toy", "boom")
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["b"].status.status_code.name == "ERROR"
    assert by_name["b"].events[0].name == "exception"
    assert by_name["wtb.thread"].status.status_code.name == "ERROR"


def test_no_spans_without_a_provider_or_an_otlp_endpoint(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    tracing.set_tracer_provider(None)
    assert tracing.tracer() is None


def test_the_otlp_exporter_is_used_when_its_endpoint_is_set(monkeypatch):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    tracing.set_tracer_provider(None)
    try:
        assert tracing.tracer() is not None
        processors = tracing._provider._active_span_processor._span_processors
        assert any(isinstance(p.span_exporter, OTLPSpanExporter) for p in processors)
    finally:
        tracing.set_tracer_provider(None)


# -- Prometheus ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(address: tuple[str, int]) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_are_served_over_http_and_count_threads_nodes_tokens_and_cost(
    sqlite_urls, monkeypatch
):
    monkeypatch.setattr(metrics, "_served", None)
    address = metrics.serve(_free_port(), "127.0.0.1")
    workflow = Workflow(
        name="metered",
        graph=llm_graph,
        dataset=[*toy_cases(3), TestCase(id="boom", input={"fail_at": "a"})],
        prices={"fake-model": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
    )
    make_bench(sqlite_urls, workflow).run_batch("metered")
    samples = _scrape(address)
    base = (("combo", "baseline"), ("workflow", "metered"))

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({**dict(base), **labels}.items())))]

    assert value("wtb_threads_total", status="succeeded") == 3
    assert value("wtb_threads_total", status="failed") == 1
    assert value("wtb_node_duration_seconds_count", node="ask", status="ok") == 3
    assert value("wtb_node_duration_seconds_count", node="a", status="error") == 1
    assert value("wtb_tokens_total", model="fake-model", kind="input") == 300
    assert value("wtb_tokens_total", model="fake-model", kind="output") == 60
    assert value("wtb_llm_calls_total", model="fake-model", priced="true") == 3
    assert value("wtb_cost_usd_total", model="fake-model") == pytest.approx(3 * 140 / 1e6)


def test_a_metrics_port_in_use_is_a_config_error(monkeypatch):
    monkeypatch.setattr(metrics, "_served", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="WTB_METRICS_PORT"):
            metrics.serve(taken.getsockname()[1], "127.0.0.1")
    monkeypatch.setenv("WTB_METRICS_PORT", "nine")
    with pytest.raises(ConfigError, match="not a port number"):
        metrics.record([])


# -- wtb events ----------------------------------------------------------------------------------


def test_wtb_events_prints_a_threads_node_events_and_refuses_an_unknown_thread(tmp_path, capsys):
    from tests.dagster_fixtures import write_toy_registry
    from wtb_dagster.cli import main

    config = write_toy_registry(tmp_path, n_cases=1)
    urls = [
        "--checkpointer",
        f"sqlite:///{tmp_path}/cp.db",
        "--results",
        f"sqlite:///{tmp_path}/r.db",
    ]
    assert main(["--config", str(config), "run", "toy", "--combo", "baseline", *urls]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "events", "toy/baseline/c0", *urls]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:5] for line in out.splitlines()[2:5]]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["1", "1", "a", "ok"],
        ["1", "2", "b", "ok"],
        ["1", "3", "c", "ok"],
    ]
    assert "3 node executions in 1 attempt(s); tokens 0 in, 0 out" in out
    assert main(["--config", str(config), "events", "toy/baseline/nope", *urls]) == 2
    assert "has no stored result" in capsys.readouterr().err


@pytest.mark.ray
def test_events_and_usage_of_threads_on_ray_workers_come_back_with_their_rows(sqlite_urls):
    ray = pytest.importorskip("ray")
    from wtb_dagster.ray_execution import RayExecutor

    workflow = Workflow(
        name="on_ray",
        graph=llm_graph,
        dataset=toy_cases(3),
        prices={"fake-model": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        store = ResultsStore(sqlite_urls[1])
        from wtb_dagster.batches import run_batch

        summary = run_batch(workflow, store, sqlite_urls[0], executor=RayExecutor(num_workers=1))
        assert summary.statuses == {"succeeded": 3}
        frame = store.events_frame("on_ray")
        assert len(frame) == 9 and set(frame.node) == {"a", "ask", "c"}
        rows = store.results_frame("on_ray")
        assert set(rows.executor) == {"ray"} and rows.tokens_in.sum() == 300
        assert rows.cost_usd.sum() == pytest.approx(3 * 140 / 1e6)
        store.close()
    finally:
        ray.shutdown()


def test_a_missing_otlp_exporter_is_a_config_error_naming_the_setting(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    tracing.set_tracer_provider(None)
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT is set, but the OTLP"):
        tracing.tracer()


def test_wtb_metrics_serves_the_sum_over_batch_processes_in_multiprocess_mode(tmp_path):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.dagster_fixtures import write_toy_registry

    config = write_toy_registry(tmp_path, n_cases=2)
    folder = tmp_path / "prom"
    folder.mkdir()
    wtb = str(Path(sys.executable).parent / "wtb")
    env = {
        **os.environ,
        "WTB_CONFIG": str(config),
        "WTB_DATA_DIR": str(tmp_path / "data"),
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    for combo in ("baseline", "b=double"):  # two batch processes, one after the other
        done = subprocess.run(
            [wtb, "run", "toy", "--combo", combo, "--executor", "local"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    port = _free_port()
    server = subprocess.Popen(
        [wtb, "metrics", "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                samples = _scrape(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline, "wtb metrics did not start serving"
                time.sleep(0.2)
        threads = {
            dict(labels)["combo"]: value
            for (name, labels), value in samples.items()
            if name == "wtb_threads_total" and dict(labels)["workflow"] == "toy"
        }
        assert threads == {"baseline": 2.0, "b=double": 2.0}
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_wtb_metrics_without_a_multiprocess_folder_is_refused(monkeypatch, capsys):
    from wtb_dagster.cli import main

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert main(["metrics", "--port", "0"]) == 2
    assert "PROMETHEUS_MULTIPROC_DIR is not set" in capsys.readouterr().err
