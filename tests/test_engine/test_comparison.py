"""Comparison matrices over a hand-built results frame: means, CIs, failures, paired deltas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wtb_dagster.comparison import compare, markdown_table

BASE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def row(combo: str, case_id: str, scores: dict | None, status: str = "succeeded", latency=1.0):
    # the columns `ResultsStore.results_frame` returns that the comparison reads, plus a few more
    return {
        "workflow": "w",
        "combo": combo,
        "case_id": case_id,
        "lineage": "",
        "thread_id": f"w/{combo}/{case_id}",
        "status": status,
        "scores": scores if scores is not None else {},
        "score_errors": {},
        "error": None if status == "succeeded" else "boom",
        "latency_s": latency,
    }


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def series(combo: str, values: list[float], metric: str = "m") -> list[dict]:
    return [row(combo, f"k{i}", {metric: v}) for i, v in enumerate(values)]


def summary_row(comparison, combo: str, metric: str = "m") -> pd.Series:
    rows = comparison.summary[
        (comparison.summary.combo == combo) & (comparison.summary.metric == metric)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


def delta_row(comparison, combo: str, metric: str = "m") -> pd.Series:
    rows = comparison.deltas[
        (comparison.deltas.combo == combo) & (comparison.deltas.metric == metric)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


# -- means and confidence intervals --------------------------------------------------------------


def test_mean_and_ci_match_the_t_interval():
    values = [0.2, 0.4, 0.9, 0.5, 0.7]
    comparison = compare(frame(*series("baseline", values)))
    got = summary_row(comparison, "baseline")
    low, high = stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
    )
    assert got["mean"] == pytest.approx(np.mean(values))
    assert got["ci_low"] == pytest.approx(low)
    assert got["ci_high"] == pytest.approx(high)
    assert got["n"] == 5 and got["failures"] == 0


def test_single_value_has_no_ci_and_constant_values_a_zero_width_ci():
    one = summary_row(compare(frame(*series("baseline", [0.5]))), "baseline")
    assert one["mean"] == 0.5 and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    flat = summary_row(compare(frame(*series("baseline", [1.0, 1.0, 1.0]))), "baseline")
    assert flat["ci_low"] == flat["ci_high"] == 1.0


def test_latency_percentiles_per_combo():
    rows = [row("baseline", f"k{i}", {"m": 1.0}, latency=float(i)) for i in range(1, 11)]
    got = summary_row(compare(frame(*rows)), "baseline")
    assert got["p50_latency_s"] == pytest.approx(np.quantile(range(1, 11), 0.5))
    assert got["p95_latency_s"] == pytest.approx(np.quantile(range(1, 11), 0.95))


# -- failures, timeouts, interrupts, scorer errors -----------------------------------------------


def test_failed_and_timed_out_threads_score_zero_on_every_metric_and_count_as_failures():
    rows = [
        row("baseline", "k0", {"m": 1.0, "q": 0.5}),
        row("baseline", "k1", {"m": 1.0, "q": 0.5}),
        row("baseline", "k2", None, status="failed"),
        row("baseline", "k3", {"m": 1.0, "q": 1.0}, status="timed_out"),  # stale scores ignored
    ]
    comparison = compare(frame(*rows))
    for metric, scored in (("m", [1.0, 1.0]), ("q", [0.5, 0.5])):
        got = summary_row(comparison, "baseline", metric)
        assert got["n"] == 4
        assert got["mean"] == pytest.approx(np.mean([*scored, 0.0, 0.0]))
        assert got["failures"] == 2


def test_interrupted_threads_are_left_out_of_scores_but_not_of_the_combo():
    rows = [
        row("baseline", "k0", {"m": 0.0}),
        row("baseline", "k1", {"m": 0.0}),
        row("baseline", "k2", {"m": 1.0}, status="interrupted"),
    ]
    got = summary_row(compare(frame(*rows)), "baseline")
    assert got["n"] == 2 and got["mean"] == 0.0 and got["failures"] == 0


def test_only_interrupted_threads_still_report_the_combo_with_no_scores():
    comparison = compare(frame(row("baseline", "k0", {"m": 1.0}, status="interrupted")))
    assert comparison.metrics == [] and comparison.primary_metric is None
    assert list(comparison.summary.combo) == ["baseline"]
    assert comparison.summary.iloc[0]["n"] == 0
    assert comparison.deltas.empty and comparison.per_case.empty


def test_metric_whose_scorer_raised_is_missing_for_that_thread_only():
    rows = [
        row("baseline", "k0", {"m": 1.0, "q": 1.0}),
        row("baseline", "k1", {"m": 0.0}),  # the q scorer raised here
    ]
    comparison = compare(frame(*rows))
    assert summary_row(comparison, "baseline", "q")["n"] == 1
    assert summary_row(comparison, "baseline", "q")["mean"] == 1.0
    assert summary_row(comparison, "baseline", "m")["n"] == 2


def test_empty_results_give_an_empty_comparison():
    comparison = compare(
        pd.DataFrame(columns=["combo", "case_id", "status", "scores", "latency_s"])
    )
    assert comparison.summary.empty and comparison.deltas.empty
    assert comparison.wide().empty
    assert comparison.best() is None
    assert "_no rows_" in comparison.to_markdown()


# -- deltas against the baseline -----------------------------------------------------------------


def test_consistently_better_combo_has_a_significant_positive_delta():
    noise = [0.01, -0.02, 0.03, 0.0, -0.01, 0.02, 0.01, -0.03]
    better = [b + 0.3 + e for b, e in zip(BASE, noise, strict=True)]
    comparison = compare(frame(*series("baseline", BASE), *series("g=good", better)))
    got = delta_row(comparison, "g=good")
    assert got["delta"] == pytest.approx(np.mean(better) - np.mean(BASE))
    assert got["p_value"] == pytest.approx(stats.ttest_rel(better, BASE).pvalue)
    assert got["p_value"] < 0.001
    assert got["n_shared"] == 8
    assert bool(got["significant"]) is True


def test_noisy_combo_is_not_significant():
    noise = [0.1, -0.1, 0.05, -0.05, 0.1, -0.12, 0.03, -0.02]
    noisy = [b + e for b, e in zip(BASE, noise, strict=True)]
    comparison = compare(frame(*series("baseline", BASE), *series("g=noisy", noisy)))
    got = delta_row(comparison, "g=noisy")
    assert got["p_value"] == pytest.approx(stats.ttest_rel(noisy, BASE).pvalue)
    assert got["p_value"] > 0.5
    assert bool(got["significant"]) is False


def test_consistently_worse_combo_has_a_significant_negative_delta():
    worse = [b - 0.1 for b in BASE]
    worse[0] -= 0.01  # some spread so the t test is defined
    got = delta_row(compare(frame(*series("baseline", BASE), *series("g=bad", worse))), "g=bad")
    assert got["delta"] < 0 and bool(got["significant"]) is True


def test_identical_combo_has_zero_delta_and_is_not_significant():
    got = delta_row(compare(frame(*series("baseline", BASE), *series("g=same", BASE))), "g=same")
    assert got["delta"] == 0 and got["p_value"] == 1.0 and not got["significant"]


def test_constant_shift_on_every_case_is_significant():
    shifted = [1.0] * 4
    comparison = compare(frame(*series("baseline", [0.0] * 4), *series("g=fix", shifted)))
    got = delta_row(comparison, "g=fix")
    assert got["delta"] == 1.0 and got["p_value"] == 0.0 and bool(got["significant"]) is True


def test_one_shared_case_is_never_significant():
    comparison = compare(frame(*series("baseline", [0.0]), *series("g=lucky", [1.0])))
    got = delta_row(comparison, "g=lucky")
    assert got["delta"] == 1.0 and got["n_shared"] == 1
    assert bool(got["significant"]) is False


def test_deltas_are_paired_over_shared_cases_only():
    rows = [
        *series("baseline", [0.0, 0.0, 0.0, 0.0]),
        row("g=x", "k0", {"m": 1.0}),
        row("g=x", "k1", {"m": 0.5}),
        row("g=x", "k9", {"m": 0.0}),  # not run on the baseline
    ]
    got = delta_row(compare(frame(*rows)), "g=x")
    assert got["n_shared"] == 2 and got["delta"] == pytest.approx(0.75)


def test_metric_the_baseline_lacks_gets_no_delta_instead_of_an_error():
    rows = [
        row("baseline", "k0", {"m": 1.0}),
        row("baseline", "k1", {"m": 0.0}),
        row("g=x", "k0", {"m": 1.0, "extra": 1.0}),
        row("g=x", "k1", {"m": 1.0, "extra": 0.0}),
    ]
    comparison = compare(frame(*rows))
    assert set(comparison.deltas.metric) == {"m"}
    assert summary_row(comparison, "g=x", "extra")["mean"] == 0.5


def test_no_deltas_without_a_baseline_combo():
    comparison = compare(frame(*series("g=a", [1.0, 0.0]), *series("g=b", [0.0, 0.0])))
    assert comparison.deltas.empty


def test_other_baseline_can_be_named():
    comparison = compare(
        frame(*series("g=a", [0.0, 0.0]), *series("g=b", [1.0, 1.0])), baseline="g=a"
    )
    assert comparison.baseline == "g=a"
    assert delta_row(comparison, "g=b")["delta"] == 1.0


# -- views ---------------------------------------------------------------------------------------


def three_combos():
    return frame(
        *series("baseline", [0.5, 0.5, 0.5, 0.4]),
        *series("g=best", [0.9, 1.0, 0.95, 0.9]),
        *series("g=worst", [0.1, 0.0, 0.2, 0.1]),
        *series("baseline", [1.0, 0.0, 1.0, 1.0], metric="z"),
        *series("g=best", [0.0, 0.0, 0.0, 1.0], metric="z"),
        *series("g=worst", [1.0, 1.0, 1.0, 1.0], metric="z"),
    )


def test_primary_metric_defaults_to_the_first_and_can_be_chosen():
    assert compare(three_combos()).primary_metric == "m"
    assert compare(three_combos(), primary_metric="z").primary_metric == "z"
    assert compare(three_combos(), primary_metric="nope").primary_metric == "m"


def test_wide_orders_combos_best_first_on_the_primary_metric():
    comparison = compare(three_combos())
    wide = comparison.wide()
    assert list(wide.index) == ["g=best", "baseline", "g=worst"]
    assert list(wide.columns) == ["n", "failures", "p50_latency_s", "p95_latency_s", "m", "z"]
    best = [0.9, 1.0, 0.95, 0.9]
    half = stats.t.ppf(0.975, 3) * stats.sem(best)
    assert wide.loc["g=best", "m"] == f"{np.mean(best):.3f} ± {half:.3f}"
    assert list(compare(three_combos(), primary_metric="z").wide().index) == [
        "g=worst",
        "baseline",
        "g=best",
    ]
    assert comparison.best() == "g=best" and comparison.best("z") == "g=worst"


def test_per_case_is_combos_by_cases_of_the_primary_metric():
    per_case = compare(three_combos()).per_case
    assert list(per_case.index) == ["baseline", "g=best", "g=worst"]
    assert list(per_case.columns) == ["k0", "k1", "k2", "k3"]
    assert per_case.loc["g=worst", "k2"] == 0.2


def test_delta_table_is_combos_by_metrics_best_first_with_significant_deltas_starred():
    comparison = compare(three_combos())
    table = comparison.delta_table()
    assert list(table.index) == ["g=best", "g=worst"]
    assert list(table.columns) == ["m", "z"]
    m_delta = np.mean([0.9, 1.0, 0.95, 0.9]) - np.mean([0.5, 0.5, 0.5, 0.4])
    got = delta_row(comparison, "g=best", "m")
    assert got["delta"] == pytest.approx(m_delta) and bool(got["significant"])
    assert table.loc["g=best", "m"] == f"{got['delta']:+.3f}*"
    # z: baseline [1, 0, 1, 1] vs best [0, 0, 0, 1] is a noisy drop, not significant
    assert table.loc["g=best", "z"] == "-0.500"
    assert not bool(delta_row(comparison, "g=best", "z")["significant"])


def test_markdown_lists_combos_best_first_with_deltas_and_cases():
    text = compare(three_combos()).to_markdown(max_cases=2)
    summary, rest = text.split("### Delta", 1)
    assert (
        summary.index("| g=best |") < summary.index("| baseline |") < summary.index("| g=worst |")
    )
    deltas, cases = rest.split("### Combos × cases (m, first 2 cases)")
    assert deltas.index("| g=best |") < deltas.index("| g=worst |")
    assert "| baseline |" not in deltas
    assert "| combo | k0 | k1 |" in cases and "k2" not in cases
    assert "### Combos × cases" not in compare(three_combos()).to_markdown()


def test_markdown_table_escapes_pipes_and_blanks_nan():
    text = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [math.nan], "c": [0.5]}))
    assert text.splitlines() == ["| a | b | c |", "| --- | --- | --- |", "| x\\|y |  | 0.500 |"]
