"""The paired statistics, each pinned to scipy's or statsmodels' own result."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from wtb_dagster import statistics
from wtb_dagster.errors import ConfigError

REF = np.array([0.2, 0.5, 0.4, 0.9, 0.3, 0.6, 0.7, 0.1, 0.8, 0.45])
OTHER = np.array([0.3, 0.7, 0.35, 0.95, 0.5, 0.65, 0.9, 0.2, 0.85, 0.4])


def test_bootstrap_ci_is_scipys_bca_interval_of_the_paired_differences_with_the_seed():
    diff = OTHER - REF
    expected = stats.bootstrap(
        (diff,), np.mean, n_resamples=9999, method="BCa", rng=np.random.default_rng(99)
    ).confidence_interval
    assert statistics.bootstrap_ci(diff, seed=99) == (
        pytest.approx(expected.low, abs=1e-12),
        pytest.approx(expected.high, abs=1e-12),
    )
    assert statistics.bootstrap_ci(diff, seed=99) == statistics.bootstrap_ci(diff, seed=99)
    assert statistics.bootstrap_ci(diff, seed=1) != statistics.bootstrap_ci(diff, seed=99)


def test_bootstrap_ci_degenerate_cases():
    assert all(math.isnan(v) for v in statistics.bootstrap_ci(np.array([0.3])))
    assert statistics.bootstrap_ci(np.array([0.2, 0.2, 0.2])) == (0.2, 0.2)
    # one nonzero difference among zeros: skewed, and the interval stays inside [0, 1]
    diff = np.array([0.0] * 9 + [1.0])
    low, high = statistics.bootstrap_ci(diff, seed=5)
    expected = stats.bootstrap((diff,), np.mean, rng=np.random.default_rng(5)).confidence_interval
    assert (low, high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert 0.0 <= low < high <= 1.0


def test_zero_one_values_are_tested_with_mcnemars_exact_test():
    ref = np.array([1, 0, 0, 1, 0, 1, 0, 0, 1, 0], dtype=float)
    other = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 1], dtype=float)
    result = statistics.paired_comparison(ref, other)
    assert result.test == "mcnemar_exact"
    assert result.p_value == pytest.approx(mcnemar([[3, 1], [5, 1]], exact=True).pvalue)
    assert result.effect_size_kind == "odds_ratio_discordant" and result.effect_size == 5.0
    assert result.delta == pytest.approx(0.4) and result.n_pairs == 10


def test_continuous_values_are_tested_with_wilcoxon_pratt_and_cohens_dz():
    result = statistics.paired_comparison(REF, OTHER)
    diff = OTHER - REF
    assert result.test == "wilcoxon"
    assert result.p_value == pytest.approx(stats.wilcoxon(diff, zero_method="pratt").pvalue)
    assert result.effect_size_kind == "cohen_dz"
    assert result.effect_size == pytest.approx(np.mean(diff) / np.std(diff, ddof=1))
    assert result.sd_diff == pytest.approx(np.std(diff, ddof=1))


def test_no_differences_give_p_one_and_fewer_than_two_pairs_no_test():
    same = statistics.paired_comparison(REF, REF)
    assert same.p_value == 1.0 and same.delta == 0.0 and math.isnan(same.effect_size)
    ties = statistics.paired_comparison(np.ones(5), np.ones(5))
    assert ties.test == "mcnemar_exact" and ties.p_value == 1.0 and math.isnan(ties.effect_size)
    one = statistics.paired_comparison(np.array([0.1]), np.array([0.9]))
    assert math.isnan(one.p_value) and math.isnan(one.ci_low) and one.delta == pytest.approx(0.8)


def test_paired_values_must_have_the_same_shape():
    with pytest.raises(ValueError, match="same length"):
        statistics.paired_comparison(np.ones(3), np.ones(4))


@pytest.mark.parametrize("correction", ["holm", "fdr_bh"])
def test_adjust_is_multipletests_over_the_tested_entries_only(correction):
    raw = np.array([0.01, math.nan, 0.04, 0.03, 0.5])
    got = statistics.adjust(raw, correction)
    expected = multipletests(raw[~np.isnan(raw)], method=correction)[1]
    assert math.isnan(got[1])
    assert np.allclose(got[~np.isnan(raw)], expected)
    assert np.array_equal(statistics.adjust(raw, "none"), raw, equal_nan=True)
    assert gc.get_freeze_count() == 0  # the heap freeze around statsmodels' gc.collect is undone


def test_unknown_correction_is_a_config_error():
    with pytest.raises(ConfigError, match="use one of holm, fdr_bh, none"):
        statistics.adjust(np.array([0.1]), "bonferroni")


def test_detection_alpha_is_the_strictest_step_of_the_family():
    assert statistics.detection_alpha("holm", 0.05, 10) == pytest.approx(0.005)
    assert statistics.detection_alpha("fdr_bh", 0.05, 10) == pytest.approx(0.005)
    assert statistics.detection_alpha("none", 0.05, 10) == 0.05
    assert statistics.detection_alpha("holm", 0.05, 1) == 0.05


def test_minimum_detectable_effect_is_ttestpowers_dz_times_the_sd_of_the_differences():
    d = TTestPower().solve_power(nobs=30, alpha=0.005, power=0.8, alternative="two-sided")
    assert statistics.minimum_detectable_effect(0.2, 30, 0.005) == pytest.approx(0.2 * d)
    # solving the other way round: at that effect the t test has 80 % power
    power = TTestPower().power(effect_size=d, nobs=30, alpha=0.005)
    assert power == pytest.approx(0.8, abs=1e-6)


def test_minimum_detectable_effect_is_infinite_when_no_result_can_be_significant():
    # 2 / 2**5 = 0.0625: five pairs can never reach p < 0.05 with an exact test
    assert math.isinf(statistics.minimum_detectable_effect(0.3, 5, 0.05))
    assert math.isfinite(statistics.minimum_detectable_effect(0.3, 6, 0.05))
    assert math.isinf(statistics.minimum_detectable_effect(0.3, 6, 0.01))
    assert math.isnan(statistics.minimum_detectable_effect(0.0, 30, 0.05))


def test_t_intervals_match_scipys_t_interval():
    values = np.array([0.2, 0.4, 0.9, 0.5, 0.7])
    low, high = statistics.t_intervals(
        np.array([values.mean(), 0.5, 0.3]),
        np.array([values.std(ddof=1), 0.0, math.nan]),
        np.array([5, 3, 1]),
    )
    expected = stats.t.interval(0.95, 4, loc=values.mean(), scale=stats.sem(values))
    assert (low[0], high[0]) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    assert low[1] == high[1] == 0.5  # no spread: zero width
    assert math.isnan(low[2]) and math.isnan(high[2])  # one value: no interval


def test_is_binary():
    assert statistics.is_binary(np.array([0.0, 1.0]), np.array([1, 1]))
    assert not statistics.is_binary(np.array([0.0, 1.0]), np.array([0.5, 1]))
