"""The LLM judge against a real HTTP server on 127.0.0.1 that speaks OpenAI chat completions.

The server replies from a script (status, content, headers) and, when the script is empty,
with a reply computed from the request; it records every request, so the tests count what
the judge paid for.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ray import cloudpickle

from tests.conftest import toy_workflow
from wtb_dagster import judge as judge_module
from wtb_dagster.api import Bench
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError
from wtb_dagster.judge import Judge, judge_usage
from wtb_dagster.pairwise import pairwise_comparison
from wtb_dagster.scoring import builtin, score_state
from wtb_dagster.store import ResultsStore, judge_cache
from wtb_dagster.threads import ThreadResult, thread_id_for
from wtb_dagster.workflows import Registry, Workflow, workflow_from_yaml

KEY = "sk-test-Zq7fW2vTOPSECRET-91"
RUBRIC = "Does the answer state the return window in days?"


class FakeJudgeServer:
    """A ThreadingHTTPServer on a free port: POST /v1/chat/completions."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, Any, dict[str, str]]] = []
        self.reply: Callable[[dict[str, Any]], str] = lambda body: '{"score": 0.75}'
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    scripted = server.script.pop(0) if server.script else None
                if self.path != "/v1/chat/completions":
                    status, payload, headers = 404, {"error": "not found"}, {}
                elif scripted is not None:
                    status, payload, headers = scripted
                else:
                    status, payload, headers = 200, server.reply(body), {}
                if status == 200 and isinstance(payload, str):
                    payload = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": payload}}
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 10},
                    }
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeJudgeServer]:
    fake = FakeJudgeServer()
    yield fake
    fake.close()


@pytest.fixture
def judge_env(monkeypatch, server, sqlite_urls) -> FakeJudgeServer:
    monkeypatch.setenv("WTB_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("WTB_JUDGE_MODEL", "judge-1")
    monkeypatch.setenv("WTB_JUDGE_API_KEY", KEY)
    monkeypatch.setenv("WTB_RESULTS_URL", sqlite_urls[1])
    return server


def case(answer: str = "30 days", case_id: str = "k") -> TestCase:
    return TestCase(id=case_id, input={"question": "How long can I return it?"}, expected=answer)


def judged(scorer, state: dict[str, Any], test_case: TestCase | None = None, **context):
    return score_state(test_case or case(), state, [scorer], **context)


def stored_judgements(url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(judge_cache)).mappings()]
    engine.dispose()
    return rows


# -- one judgement -----------------------------------------------------------------------------


def test_llm_judge_sends_rubric_input_output_and_key_and_parses_the_score(judge_env):
    scorer = builtin("llm_judge", rubric=RUBRIC, field="answer")
    assert judged(scorer, {"answer": "You have 30 days."}) == ({"llm_judge": 0.75}, {})
    (request,) = judge_env.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "judge-1" and body["temperature"] == 0
    user = body["messages"][-1]["content"]
    assert RUBRIC in user and "You have 30 days." in user and "How long can I return it?" in user
    assert "30 days" not in user.replace("You have 30 days.", "")  # no reference unless asked


def test_pass_fail_and_ranged_scales_and_the_reference_when_asked(judge_env):
    pass_fail = builtin("llm_judge", rubric=RUBRIC, scale="pass_fail", name="ok")
    judge_env.script = [
        (200, '{"reasoning": "fine", "verdict": "pass"}', {}),
        (200, '```json\n{"verdict": "FAIL"}\n```', {}),
    ]
    assert judged(pass_fail, {"answer": "30 days"}) == ({"ok": 1.0}, {})
    assert judged(pass_fail, {"answer": "a week"}) == ({"ok": 0.0}, {})
    five = builtin("llm_judge", rubric=RUBRIC, scale="1-5", name="stars", with_reference=True)
    judge_env.script = [(200, '{"score": 4}', {})]
    assert judged(five, {"answer": "thirty days"}, case("30 days")) == ({"stars": 0.75}, {})
    assert "Reference answer:\n30 days" in judge_env.requests[-1]["body"]["messages"][-1]["content"]


def test_a_429_then_success_is_retried_and_logged_without_the_key(judge_env, caplog):
    caplog.set_level(logging.DEBUG)
    judge_env.script = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})]
    scorer = builtin("llm_judge", rubric=RUBRIC)
    assert judged(scorer, {"answer": "30 days"}) == ({"llm_judge": 0.75}, {})
    assert judge_env.calls == 2
    assert "HTTP 429" in caplog.text and "retry 1 of 4" in caplog.text
    assert KEY not in caplog.text


def test_5xx_is_retried_with_backoff_and_gives_up_after_max_retries(judge_env):
    scorer = builtin("llm_judge", rubric=RUBRIC, max_retries=2, backoff_s=0.01)
    judge_env.script = [(503, "busy", {}), (500, "oops", {})]
    assert judged(scorer, {"answer": "a"}) == ({"llm_judge": 0.75}, {})
    assert judge_env.calls == 3
    judge_env.script = [(502, "down", {})] * 3
    metrics, errors = judged(scorer, {"answer": "b"})
    assert metrics == {} and judge_env.calls == 6  # 1 + 2 retries, then the thread's error
    assert errors["llm_judge"].startswith("JudgeError: judge request to http://127.0.0.1:")
    assert "after 3 attempts: HTTP 502: down" in errors["llm_judge"]
    judge_env.script = [(400, {"error": "bad request"}, {})]
    metrics, errors = judged(scorer, {"answer": "c"})
    assert metrics == {} and judge_env.calls == 7 and "HTTP 400" in errors["llm_judge"]


@pytest.mark.parametrize(
    "reply",
    [
        "I would say 0.8",  # not JSON
        '{"score": 1.5}',  # out of range
        '{"score": "0.8"}',  # a string, not a number
        '{"score": true}',  # a bool is not a score
        '{"reasoning": "fine"}',  # no score
        '[{"score": 0.8}]',  # not an object
        '{"score": 0.8} and more',  # trailing text
    ],
)
def test_a_malformed_reply_is_a_scorer_error_not_a_zero(judge_env, reply):
    scorer = builtin("llm_judge", rubric=RUBRIC)
    judge_env.script = [(200, reply, {})]
    metrics, errors = judged(scorer, {"answer": "30 days"}, exact := case())
    assert metrics == {}
    assert errors["llm_judge"].startswith("JudgeReplyError")
    # paid for and recorded, but no judgement: the next run asks again (and gets a good reply)
    assert judged(scorer, {"answer": "30 days"}, exact) == ({"llm_judge": 0.75}, {})
    assert judge_env.calls == 2
    store = ResultsStore(os.environ["WTB_RESULTS_URL"])
    usage = judge_usage(store)
    assert usage.calls.tolist() == [2] and usage.judgements.tolist() == [1]
    store.close()


def test_a_reply_that_is_not_a_chat_completion_is_an_error(judge_env):
    judge_env.script = [(200, {"choices": []}, {})]
    metrics, errors = judged(builtin("llm_judge", rubric=RUBRIC), {"answer": "x"})
    assert metrics == {} and "not a chat completion" in errors["llm_judge"]


def test_a_state_without_the_field_scores_zero_without_asking(judge_env):
    assert judged(builtin("llm_judge", rubric=RUBRIC), {"other": 1}) == ({"llm_judge": 0.0}, {})
    assert judge_env.calls == 0


# -- the key -----------------------------------------------------------------------------------


def test_the_key_is_in_no_error_log_row_or_pickled_plan(judge_env, caplog, sqlite_urls):
    caplog.set_level(logging.DEBUG)
    # a server that echoes the Authorization header back in its 401 body
    judge_env.script = [(401, {"error": f"bad key Bearer {KEY}"}, {})]
    scorer = builtin("llm_judge", rubric=RUBRIC)
    _, errors = judged(scorer, {"answer": "x"})
    assert "HTTP 401" in errors["llm_judge"] and "WTB_JUDGE_API_KEY" in errors["llm_judge"]
    assert KEY not in errors["llm_judge"] and "***" in errors["llm_judge"]
    # a malformed reply echoing it
    judge_env.script = [(200, f"my key is {KEY}", {})]
    _, errors = judged(scorer, {"answer": "y"})
    assert errors["llm_judge"].startswith("JudgeReplyError") and KEY not in errors["llm_judge"]
    # an endpoint that is not there
    dead = Judge(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0)
    with pytest.raises(Exception) as raised:
        dead.complete([{"role": "user", "content": "hi"}])
    assert "failed after 2 attempts" in str(raised.value) and KEY not in str(raised.value)
    assert KEY not in caplog.text
    # the workflow shipped to Ray workers carries the variable's name, never its value
    wf = toy_workflow()
    wf.scorers = [scorer]
    assert KEY.encode() not in cloudpickle.dumps(wf)
    assert KEY not in json.dumps(stored_judgements(sqlite_urls[1]), default=str)


# -- settings ------------------------------------------------------------------------------------


def test_an_unconfigured_or_misconfigured_judge_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.delenv("WTB_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("WTB_JUDGE_MODEL", raising=False)
    entry = {"graph": "tests.toy_graphs:linear", "scorers": [{"use": "llm_judge", "rubric": "x"}]}
    with pytest.raises(
        ConfigError, match=r"scorers\[0\].*set WTB_JUDGE_BASE_URL and WTB_JUDGE_MODEL"
    ):
        workflow_from_yaml("qa", entry, tmp_path)
    monkeypatch.setenv("WTB_JUDGE_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("WTB_JUDGE_MODEL", "m")
    bad = [
        ({"use": "llm_judge", "rubric": " "}, "needs a rubric"),
        ({"use": "llm_judge", "rubric": "x", "scale": "1-10-100"}, "scale '1-10-100'"),
        ({"use": "llm_judge", "rubric": "x", "temprature": 0}, "temprature"),
        ({"use": "llm_judge", "rubric": "x", "base_url": "localhost:8000"}, "not an http"),
    ]
    for scorer, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            workflow_from_yaml("qa", {**entry, "scorers": [scorer]}, tmp_path)
    ok = workflow_from_yaml(
        "qa", {**entry, "scorers": [{"use": "llm_judge", "rubric": "x", "scale": "pass_fail"}]},
        tmp_path,
    )  # fmt: skip
    assert ok.scorers[0].judge.model == "m"


# -- the cache, through the bench ------------------------------------------------------------------

DEMO_QUESTIONS = {
    "docs-001": "How many days do I have to return a product after delivery?",
    "docs-002": "What restocking fee applies to opened products?",
    "sql-001": "What is the price of the Aurora Lamp?",
}


def judged_demo(url: str) -> Workflow:
    judge = builtin("llm_judge", rubric=RUBRIC, cache_url=url, input_per_1m=2.0, output_per_1m=8.0)
    cases = [
        TestCase(id=i, input={"question": q}, expected={"answer": "x"})
        for i, q in DEMO_QUESTIONS.items()
    ]
    return Workflow(
        name="judged",
        graph="wtb_dagster.demo.workflow:build_graph",
        variants={"generate": {"template": "wtb_dagster.demo.workflow:generate_template"}},
        scorers=[builtin("contains", field="answer"), judge],
        dataset=cases,
    )


def test_a_second_run_and_another_process_make_no_judge_call(judge_env, store_urls):
    checkpoints, results = store_urls
    bench = Bench(Registry([judged_demo(results)]), checkpoints, results)
    bench.run_batch("judged")
    first = bench.threads("judged")
    assert first.status.tolist() == ["succeeded"] * 6
    assert all(s["llm_judge"] == 0.75 for s in first.scores)
    # one call per distinct (input, output): combos that answer alike share a judgement
    answers = bench.store.results_frame("judged")
    distinct = {(r["case_id"], r["final_values"]["answer"]) for r in answers.to_dict("records")}
    assert judge_env.calls == len(distinct) < 6  # sql-001 is answered alike by both combos

    bench.run_batch("judged", force=True)  # every thread executed and scored again
    assert judge_env.calls == len(distinct)
    assert bench.threads("judged").scores.tolist() == first.scores.tolist()

    # a process of its own, with no memory of this one: the cache is in the results store
    row = answers.to_dict("records")[0]
    script = (
        "import sys, json\n"
        "from wtb_dagster.scoring import builtin, score_state\n"
        "from wtb_dagster.datasets import TestCase\n"
        f"scorer = builtin('llm_judge', rubric={RUBRIC!r}, cache_url={results!r})\n"
        f"case = TestCase(id={row['case_id']!r}, input={row['input']!r})\n"
        f"print(json.dumps(score_state(case, {row['final_values']!r}, [scorer])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [{"llm_judge": 0.75}, {}]
    assert judge_env.calls == len(distinct)

    # the judge's usage, apart from the workflow's scores
    usage = judge_usage(bench.store, "judged")
    (record,) = usage.to_dict("records")
    assert record.pop("latency_s") > 0
    n = len(distinct)
    assert record == {
        "kind": "llm_judge", "model": "judge-1", "judgements": n, "calls": n,
        "tokens_in": 100 * n, "tokens_out": 10 * n,
        "cost_usd": pytest.approx(n * (100 * 2.0 + 10 * 8.0) / 1e6),
    }  # fmt: skip
    assert judge_usage(bench.store, "other").empty
    assert bench.compare("judged").metrics == ["contains", "llm_judge"]
    bench.close()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = threading.Event()
    timer = threading.Timer(timeout_s, deadline.set)
    timer.start()
    try:
        while not condition():
            if deadline.wait(0.005):
                raise AssertionError(f"timed out waiting for {what}")
    finally:
        timer.cancel()


class CountingLock:
    """A lock that counts the threads waiting for it."""

    def __init__(self) -> None:
        self._lock, self._guard, self.waiting = threading.Lock(), threading.Lock(), 0

    def __enter__(self) -> None:
        with self._guard:
            self.waiting += 1
        self._lock.acquire()
        with self._guard:
            self.waiting -= 1

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


def test_identical_requests_in_flight_at_once_pay_once(judge_env, monkeypatch, sqlite_urls):
    locks: list[CountingLock] = []

    class KeyLock:
        def __init__(self) -> None:
            self.lock = CountingLock()
            locks.append(self.lock)

    monkeypatch.setattr(judge_module, "_KeyLock", KeyLock)
    release = threading.Event()
    judge_env.reply = lambda body: (release.wait(20), '{"score": 1}')[1]
    scorer = builtin("llm_judge", rubric=RUBRIC, cache_url=sqlite_urls[1])
    results: list[Any] = []

    def score() -> None:
        results.append(judged(scorer, {"answer": "same"}))

    threads = [threading.Thread(target=score) for _ in range(4)]
    threads[0].start()
    wait_for(lambda: judge_env.calls == 1, "the first request")
    for t in threads[1:]:
        t.start()
    wait_for(lambda: len(locks) == 1 and locks[0].waiting == 3, "the others to wait for it")
    release.set()
    for t in threads:
        t.join(20)
    assert results == [({"llm_judge": 1.0}, {})] * 4
    assert judge_env.calls == 1


# -- pairwise ------------------------------------------------------------------------------------


def stored(store: ResultsStore, combo: str, case_id: str, answer: Any, status="succeeded"):
    store.upsert_results(
        [
            ThreadResult(
                workflow="pw", combo=combo, case_id=case_id,
                thread_id=thread_id_for("pw", combo, case_id), status=status,
                input={"question": f"question {case_id}"},
                final_values=None if answer is None else {"answer": answer},
            )
        ]
    )  # fmt: skip


def prefers_good(body: dict[str, Any]) -> str:
    """A judge that prefers the answer with GOOD in it (and ties when both or neither have)."""
    user = body["messages"][-1]["content"]
    a = user.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)[0]
    b = user.split("Answer B:\n", 1)[1]
    winner = "tie" if ("GOOD" in a) == ("GOOD" in b) else ("A" if "GOOD" in a else "B")
    return json.dumps({"reasoning": "…", "winner": winner})


@pytest.fixture
def pairwise_store(sqlite_urls) -> Iterator[ResultsStore]:
    store = ResultsStore(sqlite_urls[1])
    # 8 cases the combo wins, 2 it loses, 2 ties, one where it failed (a loss without a
    # call), one it has not run (unpaired), one where the judge's reply is malformed
    for i in range(8):
        stored(store, "baseline", f"w{i}", "meh")
        stored(store, "template", f"w{i}", f"GOOD {i}")
    for i in range(2):
        stored(store, "baseline", f"l{i}", f"GOOD {i}")
        stored(store, "template", f"l{i}", "meh")
    for i in range(2):
        stored(store, "baseline", f"t{i}", f"GOOD {i}")
        stored(store, "template", f"t{i}", f"GOOD too {i}")
    stored(store, "baseline", "broken", "fine")
    stored(store, "template", "broken", None, status="failed")
    stored(store, "baseline", "lonely", "fine")
    stored(store, "baseline", "garbled", "GARBLE")
    stored(store, "template", "garbled", "GARBLE too")
    yield store
    store.close()


def test_pairwise_win_rate_wilson_ci_and_sign_test_with_ties_excluded(server, pairwise_store):
    def reply(body: dict[str, Any]) -> str:
        return "A is better" if "GARBLE" in body["messages"][-1]["content"] else prefers_good(body)

    server.reply = reply
    judge = Judge(base_url=server.url, model="judge-2")
    result = pairwise_comparison(pairwise_store, "pw", "template", judge)
    summary = result.summary.iloc[0]
    assert (summary.wins, summary.losses, summary.ties) == (8, 3, 2)  # the failed one is a loss
    assert (summary.errors, summary.unpaired, summary.n, summary.cases) == (1, 1, 11, 15)
    assert summary.win_rate == pytest.approx(8 / 11)
    # Wilson 95 % for 8/11 and the exact two-sided sign test, by hand
    assert (summary.ci_low, summary.ci_high) == (
        pytest.approx(0.4344, abs=1e-4),
        pytest.approx(0.9025, abs=1e-4),
    )
    assert summary.p_value == pytest.approx(0.2265625)  # 2 · P(X ≤ 3), X ~ Bin(11, 1/2)
    pairs = result.pairs.set_index("case_id")
    assert pairs.loc["broken", "outcome"] == "loss" and not pairs.loc["broken", "judged"]
    assert pairs.loc["garbled", "outcome"] == "error"
    assert "not one JSON object" in pairs.loc["garbled", "error"]
    assert server.calls == 13  # every pair both answered: 8 + 2 + 2 + garbled
    # the order was drawn, recorded, and applied: both orders occur, and the judge never
    # saw which side was the baseline
    assert set(pairs.shown_first.dropna()) == {"baseline", "combo"}
    for request in server.requests:
        sent = json.dumps(request["body"])
        assert "baseline" not in sent and "template" not in sent
    # a rerun pays nothing but the malformed reply, and finds the same verdicts
    again = pairwise_comparison(pairwise_store, "pw", "template", judge)
    assert server.calls == 14
    assert again.pairs.equals(result.pairs)
    usage = judge_usage(pairwise_store, "pw")
    assert usage.kind.tolist() == ["pairwise_judge"] and usage.calls.tolist() == [14]
    assert "8 wins, 3 losses, 2 ties" in result.to_markdown()


def test_pairwise_order_randomisation_cancels_a_judge_that_always_says_a(server, pairwise_store):
    server.reply = lambda body: '{"winner": "A"}'
    judge = Judge(base_url=server.url, model="always-a")
    result = pairwise_comparison(pairwise_store, "pw", "template", judge, seed=7)
    pairs = result.pairs[result.pairs.judged]
    # the combo wins exactly where it was shown first, whatever its answer
    assert (pairs.outcome == "win").tolist() == (pairs.shown_first == "combo").tolist()
    assert 0 < (pairs.shown_first == "combo").sum() < len(pairs)
    other = pairwise_comparison(pairwise_store, "pw", "template", judge, seed=8)
    assert not other.pairs.shown_first.equals(result.pairs.shown_first)  # the seed matters
    same = pairwise_comparison(pairwise_store, "pw", "template", judge, seed=7)
    assert same.pairs.shown_first.equals(result.pairs.shown_first)  # and only the seed
