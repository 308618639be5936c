"""batch_report and case_coverage: what one combo's stored threads sum up to (pure logic)."""

from __future__ import annotations

import pandas as pd
import pytest

from wtb_dagster.batch_report import batch_report, case_coverage, node_latencies


def _frame(*rows: dict) -> pd.DataFrame:
    defaults = {
        "combo": "baseline",
        "scores": {},
        "final_values": None,
        "error": None,
        "latency_s": 1.0,
        "node_timings": {},
        "code_version": "v1",
    }
    return pd.DataFrame([{**defaults, **row} for row in rows])


def _thread(case_id: str, status: str, score: float | None = None, **fields) -> dict:
    scores = {} if score is None else {"exact_match": score}
    return {"case_id": case_id, "status": status, "scores": scores, **fields}


def test_failed_and_timed_out_threads_count_as_failures_and_score_zero():
    frame = _frame(
        _thread("c0", "succeeded", 1.0, final_values={"answer": "yes"}),
        _thread("c1", "succeeded", 0.5, final_values={"answer": "half"}),
        # a broken thread scores 0 whatever its scorer said
        _thread("c2", "failed", 1.0, error="ValueError: boom"),
        _thread("c3", "timed_out", error="timed out after 5 s"),
    )
    report = batch_report(frame)
    assert report.threads == 4 and report.failures == 2 and report.interrupted == 0
    assert report.failure_rate == 0.5
    assert report.statuses == {"succeeded": 2, "failed": 1, "timed_out": 1}
    assert report.primary_metric == "exact_match"
    assert report.means == {"exact_match": pytest.approx((1.0 + 0.5 + 0 + 0) / 4)}
    assert list(report.bottom_cases.case) == ["c2", "c3", "c1", "c0"]
    assert list(report.bottom_cases.exact_match) == [0.0, 0.0, 0.5, 1.0]
    assert list(report.top_cases.case) == ["c0", "c1", "c2", "c3"]
    assert list(report.bottom_cases.answer[:2]) == ["ValueError: boom", "timed out after 5 s"]
    assert report.top_cases.answer[0] == "yes"


def test_interrupted_threads_are_counted_apart_neither_failed_nor_scored():
    frame = _frame(
        _thread("c0", "succeeded", 1.0),
        _thread("c1", "failed"),
        _thread("c2", "interrupted"),
        _thread("c3", "interrupted"),
    )
    report = batch_report(frame)
    assert report.threads == 4
    assert report.interrupted == 2 and report.failures == 1
    assert report.failure_rate == 0.5  # 1 of the 2 finished threads, not 1 of 4
    assert report.statuses["interrupted"] == 2
    assert report.means == {"exact_match": 0.5}  # c0 and c1 only
    assert set(report.bottom_cases.case) == {"c0", "c1"}
    assert set(report.top_cases.case) == {"c0", "c1"}


def test_only_interrupted_threads_give_no_failure_rate_and_no_cases():
    report = batch_report(_frame(_thread("c0", "interrupted")))
    assert report.failure_rate == 0.0 and report.interrupted == 1
    assert report.means == {} and report.primary_metric is None
    assert report.top_cases.empty and report.bottom_cases.empty


def test_top_and_bottom_are_capped_and_ties_ordered_by_case_id():
    frame = _frame(*[_thread(f"c{i}", "succeeded", float(i % 2)) for i in range(8)])
    report = batch_report(frame, count=3)
    assert list(report.bottom_cases.case) == ["c0", "c2", "c4"]
    assert list(report.top_cases.case) == ["c1", "c3", "c5"]


def test_primary_metric_chooses_the_ranking_and_defaults_to_the_first_metric():
    frame = _frame(
        {"case_id": "c0", "status": "succeeded", "scores": {"b": 0.0, "a": 1.0}},
        {"case_id": "c1", "status": "succeeded", "scores": {"b": 1.0, "a": 0.0}},
    )
    assert batch_report(frame).primary_metric == "a"
    assert list(batch_report(frame).top_cases.case) == ["c0", "c1"]
    by_b = batch_report(frame, primary_metric="b")
    assert by_b.primary_metric == "b" and list(by_b.top_cases.case) == ["c1", "c0"]
    assert batch_report(frame, primary_metric="nope").primary_metric == "a"


def test_a_metric_whose_scorer_raised_is_missing_not_zero():
    frame = _frame(
        _thread("c0", "succeeded", 1.0),
        _thread("c1", "succeeded"),  # scorer raised: no exact_match for c1
    )
    report = batch_report(frame)
    assert report.means == {"exact_match": 1.0}
    assert list(report.bottom_cases.case) == ["c0"]


def test_latencies_overall_and_per_node_over_every_execution():
    frame = _frame(
        _thread("c0", "succeeded", 1.0, latency_s=1.0, node_timings={"a": [0.1], "b": [0.2]}),
        _thread("c1", "succeeded", 1.0, latency_s=3.0, node_timings={"a": [0.3, 0.5]}),
    )
    report = batch_report(frame)
    assert report.p50_latency_s == 2.0
    assert report.p95_latency_s == pytest.approx(2.9)
    assert report.node_latency_s["a"]["p50"] == pytest.approx(0.3)
    assert report.node_latency_s["a"]["p95"] == pytest.approx(0.48)
    assert report.node_latency_s["b"] == {"p50": 0.2, "p95": 0.2}
    assert node_latencies([None, {"a": []}]) == {}


def test_an_empty_frame_reports_zeros():
    report = batch_report(_frame().reindex(columns=["case_id", "status", "scores", "latency_s"]))
    assert (report.threads, report.failures, report.failure_rate) == (0, 0, 0.0)
    assert report.means == {} and report.node_latency_s == {} and report.top_cases.empty


def test_case_coverage_counts_threads_only_under_the_current_code():
    frame = _frame(
        _thread("c0", "succeeded", code_version="v2"),
        _thread("c1", "failed", code_version="v2"),  # any status counts as ran
        _thread("c2", "succeeded", code_version="v1"),  # only under older code
        _thread("gone", "succeeded", code_version="v2"),  # left the dataset
    )
    coverage = case_coverage(["c0", "c1", "c2", "c3", "c0"], frame, "v2")
    assert coverage.cases == 4
    assert coverage.missing == ["c2", "c3"]
    assert coverage.stale == ["c2"]
    assert coverage.stored_not_in_dataset == 1
    assert not coverage.complete
    assert case_coverage(["c0", "c1"], frame, "v2").complete


def test_case_coverage_needs_every_trial_of_a_case():
    frame = _frame(
        _thread("c0", "succeeded", code_version="v2", trial=0),
        _thread("c0", "succeeded", code_version="v2", trial=1),
        _thread("c1", "succeeded", code_version="v2", trial=0),  # its second trial never ran
    )
    coverage = case_coverage(["c0", "c1"], frame, "v2", trials=2)
    assert coverage.missing == ["c1"] and not coverage.complete
    assert case_coverage(["c0", "c1"], frame, "v2", trials=1).complete
