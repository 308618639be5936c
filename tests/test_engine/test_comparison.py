"""Comparison matrices over hand-built results frames: means, CIs, trials, forks, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from wtb_dagster.comparison import compare, markdown_table, scored_threads
from wtb_dagster.errors import ConfigError

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
    diff = np.subtract(better, BASE)
    assert got["delta"] == pytest.approx(np.mean(better) - np.mean(BASE))
    assert got["test"] == "wilcoxon"
    assert got["p_value"] == pytest.approx(stats.wilcoxon(diff, zero_method="pratt").pvalue)
    assert got["p_value"] == pytest.approx(2 / 2**8)  # exact: all eight cases improved
    assert got["n_pairs"] == 8 and got["reference"] == "baseline"
    assert bool(got["significant"]) is True and got["verdict"] == "better"
    assert got["effect_size_kind"] == "cohen_dz"
    assert got["effect_size"] == pytest.approx(np.mean(diff) / np.std(diff, ddof=1))


def test_noisy_combo_is_not_significant():
    noise = [0.1, -0.1, 0.05, -0.05, 0.1, -0.12, 0.03, -0.02]
    noisy = [b + e for b, e in zip(BASE, noise, strict=True)]
    comparison = compare(frame(*series("baseline", BASE), *series("g=noisy", noisy)))
    got = delta_row(comparison, "g=noisy")
    diff = np.subtract(noisy, BASE)
    assert got["p_value"] == pytest.approx(stats.wilcoxon(diff, zero_method="pratt").pvalue)
    assert got["p_value"] > 0.5
    assert bool(got["significant"]) is False and got["verdict"] == "no detectable difference"


def test_consistently_worse_combo_has_a_significant_negative_delta():
    worse = [b - 0.1 for b in BASE]
    worse[0] -= 0.01
    got = delta_row(compare(frame(*series("baseline", BASE), *series("g=bad", worse))), "g=bad")
    assert got["delta"] < 0 and bool(got["significant"]) is True and got["verdict"] == "worse"


def test_identical_combo_has_zero_delta_and_is_not_significant():
    got = delta_row(compare(frame(*series("baseline", BASE), *series("g=same", BASE))), "g=same")
    assert got["delta"] == 0 and got["p_value"] == 1.0 and not got["significant"]
    assert got["ci_low"] == got["ci_high"] == 0.0


def test_zero_one_metric_uses_mcnemars_exact_test_and_needs_enough_cases():
    # four cases all fixed: the exact test cannot go below 2 / 2**4 = 0.125
    four = compare(frame(*series("baseline", [0.0] * 4), *series("g=fix", [1.0] * 4)))
    got = delta_row(four, "g=fix")
    assert got["test"] == "mcnemar_exact" and got["delta"] == 1.0
    assert got["p_value"] == pytest.approx(mcnemar([[0, 0], [4, 0]], exact=True).pvalue)
    assert got["p_value"] == pytest.approx(0.125)
    assert not got["significant"] and got["verdict"] == "no detectable difference"
    assert math.isinf(got["mde"])  # no result over four cases can be significant
    assert "no difference in `m` can be told apart" in four.power_notes()[0]
    # eight cases all fixed: 2 / 2**8
    eight = delta_row(
        compare(frame(*series("baseline", [0.0] * 8), *series("g=fix", [1.0] * 8))), "g=fix"
    )
    assert eight["p_value"] == pytest.approx(2 / 2**8) and bool(eight["significant"]) is True
    assert eight["effect_size_kind"] == "odds_ratio_discordant"
    assert math.isinf(eight["effect_size"])  # the baseline wins no case


def test_one_shared_case_is_never_significant():
    comparison = compare(frame(*series("baseline", [0.0]), *series("g=lucky", [1.0])))
    got = delta_row(comparison, "g=lucky")
    assert got["delta"] == 1.0 and got["n_pairs"] == 1
    assert math.isnan(got["p_value"]) and math.isnan(got["p_adjusted"])
    assert bool(got["significant"]) is False and got["verdict"] == "not tested"


def test_deltas_are_paired_over_shared_cases_only():
    rows = [
        *series("baseline", [0.0, 0.0, 0.0, 0.0]),
        row("g=x", "k0", {"m": 1.0}),
        row("g=x", "k1", {"m": 0.5}),
        row("g=x", "k9", {"m": 0.0}),  # not run on the baseline
    ]
    got = delta_row(compare(frame(*rows)), "g=x")
    assert got["n_pairs"] == 2 and got["delta"] == pytest.approx(0.75)


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


# -- pinned to scipy and statsmodels -------------------------------------------------------------

# 14 cases, with ties and zero differences (scipy's Wilcoxon takes its normal approximation)
PIN_BASE = [0.2, 0.5, 0.4, 0.9, 0.3, 0.6, 0.7, 0.1, 0.8, 0.45, 0.55, 0.35, 0.6, 0.3]
PIN_A = [0.3, 0.7, 0.4, 0.95, 0.5, 0.65, 0.9, 0.2, 0.85, 0.4, 0.8, 0.5, 0.7, 0.4]
PIN_B = [0.25, 0.45, 0.5, 0.8, 0.3, 0.55, 0.75, 0.0, 0.9, 0.5, 0.5, 0.3, 0.65, 0.3]
PIN_ZBASE = [1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0]
PIN_ZA = [1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1]
PIN_ZB = [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0]
PIN_N = len(PIN_BASE)


def pinned_frame() -> pd.DataFrame:
    rows = []
    for combo, m, z in (
        ("baseline", PIN_BASE, PIN_ZBASE),
        ("g=a", PIN_A, PIN_ZA),
        ("g=b", PIN_B, PIN_ZB),
    ):
        rows += [row(combo, f"k{i:02d}", {"m": m[i], "z": float(z[i])}) for i in range(PIN_N)]
    return frame(*rows)


def mcnemar_table(reference, other):
    ref, oth = np.asarray(reference), np.asarray(other)
    return [
        [int(np.sum((ref == 1) & (oth == 1))), int(np.sum((ref == 1) & (oth == 0)))],
        [int(np.sum((ref == 0) & (oth == 1))), int(np.sum((ref == 0) & (oth == 0)))],
    ]


@pytest.mark.parametrize("correction", ["holm", "fdr_bh", "none"])
def test_intervals_and_raw_and_adjusted_p_values_equal_scipys_and_statsmodels(correction):
    seed = 7
    comparison = compare(pinned_frame(), correction=correction, seed=seed)
    expected_raw = {}
    for combo, m, z in (("g=a", PIN_A, PIN_ZA), ("g=b", PIN_B, PIN_ZB)):
        diff = np.subtract(m, PIN_BASE)
        boot = stats.bootstrap(
            (diff,), np.mean, n_resamples=9999, confidence_level=0.95, method="BCa",
            rng=np.random.default_rng(seed),
        )  # fmt: skip
        got = delta_row(comparison, combo, "m")
        assert got["ci_low"] == pytest.approx(boot.confidence_interval.low, abs=1e-12)
        assert got["ci_high"] == pytest.approx(boot.confidence_interval.high, abs=1e-12)
        assert got["test"] == "wilcoxon"
        expected_raw[combo, "m"] = stats.wilcoxon(diff, zero_method="pratt").pvalue
        zdiff = np.subtract(z, PIN_ZBASE).astype(float)
        zboot = stats.bootstrap(
            (zdiff,), np.mean, n_resamples=9999, confidence_level=0.95, method="BCa",
            rng=np.random.default_rng(seed),
        )  # fmt: skip
        zgot = delta_row(comparison, combo, "z")
        assert zgot["test"] == "mcnemar_exact"
        assert zgot["ci_low"] == pytest.approx(zboot.confidence_interval.low, abs=1e-12)
        assert zgot["ci_high"] == pytest.approx(zboot.confidence_interval.high, abs=1e-12)
        expected_raw[combo, "z"] = mcnemar(mcnemar_table(PIN_ZBASE, z), exact=True).pvalue
    keys = list(expected_raw)
    raw = np.array([expected_raw[k] for k in keys])
    adjusted = raw if correction == "none" else multipletests(raw, method=correction)[1]
    for key, p, p_adj in zip(keys, raw, adjusted, strict=True):
        got = delta_row(comparison, *key)
        assert got["p_value"] == pytest.approx(p, rel=1e-12)
        assert got["p_adjusted"] == pytest.approx(p_adj, rel=1e-12)
        assert bool(got["significant"]) is bool(p_adj < 0.05)
    # the fixed table has a result on each side of the line under Holm
    if correction == "holm":
        assert delta_row(comparison, "g=a", "m")["significant"]
        assert not delta_row(comparison, "g=b", "m")["significant"]
    # MDE: the d_z a paired t test detects with 80 % power at alpha / 4, times the SD of Δ
    diff = np.subtract(PIN_B, PIN_BASE)
    level = 0.05 if correction == "none" else 0.05 / 4
    d = TTestPower().solve_power(nobs=PIN_N, alpha=level, power=0.8)
    assert delta_row(comparison, "g=b", "m")["mde"] == pytest.approx(d * np.std(diff, ddof=1))
    assert comparison.detection_alpha == pytest.approx(level)


def test_markdown_shows_raw_and_adjusted_p_verdict_lines_and_power_sentences():
    comparison = compare(pinned_frame())
    text = comparison.to_markdown()
    tests_section = text.split("### Paired tests", 1)[1].split("### Verdicts")[0]
    assert "| combo | vs | metric | n | Δ | 95 % CI | test | p | p_adj |" in tests_section
    a_m = delta_row(comparison, "g=a", "m")
    assert f"| {a_m['p_value']:.3f} | {a_m['p_adjusted']:.3f} |" in tests_section
    lines = comparison.verdicts()
    assert lines["g=a"].startswith(
        f"g=a: better on m ({a_m['delta']:+.3f}, 95 % CI {a_m['ci_low']:+.3f}…"
        f"{a_m['ci_high']:+.3f}, p_adj {a_m['p_adjusted']:.3f})"
    )
    b_m = delta_row(comparison, "g=b", "m")
    assert f"no detectable difference on m (|Δ| {abs(b_m['delta']):.3f} < MDE" in lines["g=b"]
    assert f"- {lines['g=a']}" in text and f"- {lines['g=b']}" in text
    notes = comparison.power_notes()
    mdes = comparison.deltas[comparison.deltas.metric == "m"].mde
    assert notes[0] == (
        f"with {PIN_N} cases, differences below {mdes.min():.3f}–{mdes.max():.3f} (depending on the "
        "combo) in `m` cannot be told apart (80 % power, two-sided α = 0.0125 (Holm))"
    )
    assert "### Power" in text and notes[0] in text


def test_unknown_correction_is_rejected_naming_the_choices():
    with pytest.raises(ConfigError, match="'bonferoni'; use one of holm, fdr_bh, none"):
        compare(pinned_frame(), correction="bonferoni")


# -- trials --------------------------------------------------------------------------------------


def trial_rows(combo: str, values: dict[str, list[float]]) -> list[dict]:
    rows = []
    for case_id, trials in values.items():
        for t, v in enumerate(trials):
            r = row(combo, case_id, {"m": v})
            rows.append({**r, "trial": t, "thread_id": f"{r['thread_id']}#{t}"})
    return rows


def test_a_cases_score_is_the_mean_over_its_trials_and_spreads_are_reported():
    base = {"k0": [0.1, 0.3], "k1": [0.5, 0.5], "k2": [0.9, 0.6], "k3": [0.2]}
    other = {"k0": [0.4, 0.6], "k1": [0.7], "k2": [1.0, 0.9], "k3": [0.3, 0.5]}
    comparison = compare(frame(*trial_rows("baseline", base), *trial_rows("g=x", other)))
    got = summary_row(comparison, "baseline")
    case_means = [np.mean(v) for v in base.values()]
    assert got["n"] == 4 and got["threads"] == 7
    assert got["mean"] == pytest.approx(np.mean(case_means))
    assert got["between_case_sd"] == pytest.approx(np.std(case_means, ddof=1))
    # pooled over cases with two or more trials: k0, k1, k2, one degree of freedom each
    pooled = math.sqrt(np.mean([np.var(base[k], ddof=1) for k in ("k0", "k1", "k2")]))
    assert got["within_case_sd"] == pytest.approx(pooled)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(case_means), scale=stats.sem(case_means))
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    delta = delta_row(comparison, "g=x")
    other_means = [np.mean(v) for v in other.values()]
    assert delta["n_pairs"] == 4
    assert delta["delta"] == pytest.approx(np.mean(other_means) - np.mean(case_means))
    assert comparison.per_case.loc["baseline", "k0"] == pytest.approx(0.2)
    assert "trial-to-trial SD" in comparison.to_markdown()


def test_one_trial_per_case_has_no_within_case_spread():
    got = summary_row(compare(frame(*series("baseline", BASE))), "baseline")
    assert math.isnan(got["within_case_sd"])
    assert got["between_case_sd"] == pytest.approx(np.std(BASE, ddof=1))
    assert "trial-to-trial" not in compare(frame(*series("baseline", BASE))).to_markdown()


def test_trial_averages_of_a_zero_one_metric_are_tested_with_wilcoxon():
    base = {f"k{i}": [1.0, 0.0] for i in range(6)}
    other = {f"k{i}": [1.0, 1.0] for i in range(6)}
    got = delta_row(compare(frame(*trial_rows("baseline", base), *trial_rows("g=x", other))), "g=x")
    assert got["test"] == "wilcoxon" and got["delta"] == pytest.approx(0.5)


# -- forks and interrupted threads ---------------------------------------------------------------


def fork_row(parent: dict, combo: str, scores: dict, change: dict, lineage: str, **kw) -> dict:
    return {
        **row(combo, parent["case_id"], scores, **kw),
        "thread_id": f"w/{combo}/{parent['case_id']}@{lineage}",
        "lineage": lineage,
        "parent_thread_id": parent["thread_id"],
        "change": change,
    }


VARIANT = {"from": "before g", "checkpoint_id": "c1", "variant": "g=template", "state_patch": None}
PATCH = {"from": "checkpoint", "checkpoint_id": "c2", "variant": None, "state_patch": {"q": "?"}}


def forked_frame() -> pd.DataFrame:
    base = series("baseline", BASE)
    other = series("g=x", [v + 0.1 for v in BASE])
    forks = [
        fork_row(p, "g=template", {"m": 1.0}, VARIANT, f"fork-v{i}") for i, p in enumerate(base[:6])
    ]
    forks += [
        fork_row(p, "baseline", {"m": 0.0}, PATCH, f"fork-p{i}") for i, p in enumerate(base[:3])
    ]
    forks += [fork_row(other[0], "g=x", {"m": 0.5}, PATCH, "fork-x0")]
    return frame(*base, *other, *forks)


def test_forks_are_rows_of_their_own_compared_with_their_parents_cases():
    comparison = compare(forked_frame(), include_forks=True)
    assert summary_row(comparison, "baseline")["n"] == len(BASE)  # not pooled with the forks
    assert summary_row(comparison, "baseline")["mean"] == pytest.approx(np.mean(BASE))
    variant = summary_row(comparison, "baseline ⑂ g=template")
    assert variant["n"] == 6 and variant["mean"] == 1.0
    assert summary_row(comparison, "baseline ⑂ patch{q}")["n"] == 3
    got = delta_row(comparison, "baseline ⑂ g=template")
    assert got["reference"] == "baseline" and got["n_pairs"] == 6
    assert got["delta"] == pytest.approx(1.0 - np.mean(BASE[:6]))
    # a fork of another combo is compared with that combo, over the fork's cases
    fork_x = delta_row(comparison, "g=x ⑂ patch{q}")
    assert fork_x["reference"] == "g=x" and fork_x["n_pairs"] == 1
    assert fork_x["delta"] == pytest.approx(0.5 - (BASE[0] + 0.1))
    assert "g=x ⑂ patch{q} (vs g=x): not tested" in comparison.verdicts()["g=x ⑂ patch{q}"]
    assert "| baseline ⑂ g=template | 6 |" in comparison.to_markdown()
    # forks are not part of the power sentence about the combos
    mdes = comparison.deltas[comparison.deltas.combo == "g=x"].mde
    assert f"below {mdes.iloc[0]:.3f} in `m`" in comparison.power_notes()[0]


def test_forks_can_be_left_out_and_are_never_pooled_into_their_combo():
    comparison = compare(forked_frame(), include_forks=False)
    assert sorted(comparison.summary.combo.unique()) == ["baseline", "g=x"]
    assert summary_row(comparison, "baseline")["n"] == len(BASE)


def test_two_forks_of_one_case_with_the_same_change_are_not_averaged():
    base = series("baseline", BASE[:2])
    later = {**VARIANT, "from": "after r"}
    forks = [
        fork_row(base[0], "g=template", {"m": 1.0}, VARIANT, "fork-a"),
        fork_row(base[0], "g=template", {"m": 0.0}, later, "fork-b"),
        fork_row(base[1], "g=template", {"m": 1.0}, VARIANT, "fork-c"),
    ]
    labels = set(compare(frame(*base, *forks)).summary.combo)
    assert labels == {
        "baseline",
        "baseline ⑂ g=template (before g)",
        "baseline ⑂ g=template (after r)",
    }


def test_fork_of_a_fork_and_a_plain_rerun_are_labelled_by_their_chain():
    base = series("baseline", BASE[:2])
    first = fork_row(base[0], "g=template", {"m": 1.0}, VARIANT, "fork-a")
    second = fork_row(first, "g=template", {"m": 0.5}, PATCH, "fork-b")
    rerun = fork_row(base[1], "baseline", {"m": 0.5}, {"from": "before g"}, "fork-c")
    labels = set(compare(frame(*base, first, second, rerun)).summary.combo)
    assert "baseline ⑂ g=template ⑂ patch{q}" in labels
    assert "baseline ⑂ rerun before g" in labels


def test_interrupted_threads_are_counted_and_latency_is_over_the_scored_threads():
    rows = [row("baseline", f"k{i}", {"m": 1.0}, latency=float(i)) for i in range(1, 11)]
    rows += [row("baseline", "k11", {}, status="interrupted", latency=500.0)]
    rows += [row("baseline", "k12", None, status="failed", latency=20.0)]
    got = summary_row(compare(frame(*rows)), "baseline")
    assert got["interrupted"] == 1 and got["failures"] == 1 and got["n"] == 11
    latencies = [*range(1, 11), 20.0]  # the failed thread scored 0 and counts; not the interrupt
    assert got["p50_latency_s"] == pytest.approx(np.quantile(latencies, 0.5))
    assert got["p95_latency_s"] == pytest.approx(np.quantile(latencies, 0.95))
    wide = compare(frame(*rows)).wide()
    assert wide.loc["baseline", "interrupted"] == 1 and wide.loc["baseline", "n"] == 11


def test_scored_threads_is_the_rule_failed_score_zero_everywhere_interrupted_apart():
    rows = [
        row("baseline", "k0", {"m": 0.5, "q": 1.0}),
        row("baseline", "k1", {"m": 0.5}),  # the q scorer raised
        row("baseline", "k2", {"m": 1.0, "q": 1.0}, status="timed_out"),
        row("baseline", "k3", None, status="failed"),
        row("baseline", "k4", {"m": 1.0}, status="interrupted"),
    ]
    scored = scored_threads(frame(*rows))
    assert list(scored.case_id) == ["k0", "k1", "k2", "k3"]
    assert list(scored.scores) == [
        {"m": 0.5, "q": 1.0},
        {"m": 0.5},
        {"m": 0.0, "q": 0.0},
        {"m": 0.0, "q": 0.0},
    ]
    assert list(scored.columns) == list(frame(*rows).columns)


# -- the regression check (assets/comparison.py) -------------------------------------------------


def regression_frame(drop: float, n: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.9, n)
    worse = base - drop + rng.normal(0, 0.02, n)
    same = base + rng.normal(0, 0.02, n)
    return frame(
        *series("baseline", list(base)), *series("g=worse", list(worse)),
        *series("g=same", list(same)),
    )  # fmt: skip


def test_regression_check_fails_naming_a_combo_significantly_worse_beyond_tolerance():
    from assets.comparison import regression_check
    from resources import QualityGates

    comparison = compare(regression_frame(drop=0.2))
    check = regression_check(comparison, QualityGates(regression_tolerance=0.05))
    assert check.check_name == "no_regression_vs_baseline" and check.passed is False
    got = delta_row(comparison, "g=worse")
    regressed = check.metadata["regressed"].value
    assert list(regressed) == ["g=worse"]
    assert regressed["g=worse"]["delta"] == round(got["delta"], 4)
    assert regressed["g=worse"]["ci_low"] == round(got["ci_low"], 4)
    assert regressed["g=worse"]["ci_high"] == round(got["ci_high"], 4)
    assert regressed["g=worse"]["p_adjusted"] == round(got["p_adjusted"], 6)
    table = check.metadata["regressed_table"].value
    assert [r.data["combo"] for r in table.records] == ["g=worse"]
    assert [c.name for c in table.schema.columns][:4] == ["combo", "n_pairs", "delta", "ci_low"]
    assert f"g=worse Δ {got['delta']:+.3f} (95 % CI {got['ci_low']:+.3f}…" in check.description
    assert f"p_adj {regressed['g=worse']['p_adjusted']:.3g})" in check.description


def test_regression_check_passes_when_the_drop_is_within_tolerance_or_not_significant():
    from assets.comparison import regression_check
    from resources import QualityGates

    # a real, significant drop of 0.02 is within a tolerance of 0.05
    small = compare(regression_frame(drop=0.02))
    assert bool(delta_row(small, "g=worse")["significant"]) is True
    assert regression_check(small, QualityGates(regression_tolerance=0.05)).passed is True
    # a large drop over four cases cannot be told from noise: not a regression, but said so
    few = compare(regression_frame(drop=0.2, n=4))
    check = regression_check(few, QualityGates(regression_tolerance=0.05))
    assert check.passed is True and check.metadata["regressed"].value == {}
    assert "cannot be told apart" in check.description or "largest_mde" not in check.metadata


def test_regression_check_fails_without_baseline_results():
    from assets.comparison import regression_check
    from resources import QualityGates

    comparison = compare(frame(*series("g=a", [1.0, 0.0])))
    check = regression_check(comparison, QualityGates())
    assert check.passed is False and "no results for the baseline" in check.description


# -- views ---------------------------------------------------------------------------------------


THREE_BASE = [0.5, 0.5, 0.5, 0.4, 0.6, 0.45, 0.55, 0.5]
THREE_BEST = [0.9, 1.0, 0.95, 0.9, 0.85, 0.92, 0.97, 0.88]


def three_combos():
    return frame(
        *series("baseline", THREE_BASE),
        *series("g=best", THREE_BEST),
        *series("g=worst", [0.1, 0.0, 0.2, 0.1, 0.15, 0.05, 0.12, 0.2]),
        *series("baseline", [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0], metric="z"),
        *series("g=best", [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], metric="z"),
        *series("g=worst", [1.0] * 8, metric="z"),
    )


def test_primary_metric_defaults_to_the_first_and_can_be_chosen():
    assert compare(three_combos()).primary_metric == "m"
    assert compare(three_combos(), primary_metric="z").primary_metric == "z"
    assert compare(three_combos(), primary_metric="nope").primary_metric == "m"


def test_wide_orders_combos_best_first_on_the_primary_metric():
    comparison = compare(three_combos())
    wide = comparison.wide()
    assert list(wide.index) == ["g=best", "baseline", "g=worst"]
    assert list(wide.columns) == [
        "n", "failures", "interrupted", "p50_latency_s", "p95_latency_s", "m", "z",
    ]  # fmt: skip
    best = THREE_BEST
    half = stats.t.ppf(0.975, 7) * stats.sem(best)
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
    assert list(per_case.columns) == [f"k{i}" for i in range(8)]
    assert per_case.loc["g=worst", "k2"] == 0.2


def test_delta_table_is_combos_by_metrics_best_first_with_significant_deltas_starred():
    comparison = compare(three_combos())
    table = comparison.delta_table()
    assert list(table.index) == ["g=best", "g=worst"]
    assert list(table.columns) == ["m", "z"]
    m_delta = np.mean(THREE_BEST) - np.mean(THREE_BASE)
    got = delta_row(comparison, "g=best", "m")
    # eight of eight cases better: exact p 2 / 2**8, times 4 (Holm over 2 combos × 2 metrics)
    assert got["p_adjusted"] == pytest.approx(4 * 2 / 2**8)
    assert got["delta"] == pytest.approx(m_delta) and bool(got["significant"])
    assert table.loc["g=best", "m"] == f"{got['delta']:+.3f}*"
    # z: the baseline wins three cases, best none: McNemar p 0.25, not significant
    assert table.loc["g=best", "z"] == "-0.375"
    assert not bool(delta_row(comparison, "g=best", "z")["significant"])


def test_markdown_lists_combos_best_first_with_deltas_and_cases():
    text = compare(three_combos()).to_markdown(max_cases=2)
    summary, rest = text.split("### Delta", 1)
    assert (
        summary.index("| g=best |") < summary.index("| baseline |") < summary.index("| g=worst |")
    )
    deltas, cases = rest.split("### Combos × cases (m, first 2 cases)")
    delta_cells, tests = deltas.split("### Paired tests")
    assert delta_cells.index("| g=best |") < delta_cells.index("| g=worst |")
    assert "| baseline |" not in delta_cells
    assert tests.index("| g=best | baseline | m |") < tests.index("| g=worst | baseline | m |")
    assert "- g=best: better on m" in tests and "- g=worst: worse on m" in tests
    assert "| combo | k0 | k1 |" in cases and "k2" not in cases
    assert "### Combos × cases" not in compare(three_combos()).to_markdown()


def test_markdown_table_escapes_pipes_and_blanks_nan():
    text = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [math.nan], "c": [0.5]}))
    assert text.splitlines() == ["| a | b | c |", "| --- | --- | --- |", "| x\\|y |  | 0.500 |"]


def test_bootstrap_in_batches_gives_the_interval_of_one_vectorised_call(monkeypatch):
    from wtb_dagster import statistics

    diff = np.random.default_rng(5).normal(0.1, 1.0, 400)
    whole = statistics.bootstrap_ci(diff, n_resamples=999)
    monkeypatch.setattr(statistics, "BOOTSTRAP_BATCH_VALUES", 4_000)  # batches of 10 resamples
    assert statistics.bootstrap_ci(diff, n_resamples=999) == whole
