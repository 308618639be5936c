"""Paired statistics for comparing two combos case by case: CI, test, effect size, power.

Everything here works on per-case values (a case's score is the mean over its trials), paired
by case: `reference[i]` and `other[i]` are the same test case under two combos. The choices,
and why:

* **Test.** A metric whose per-case values are all 0 or 1 (in both combos) is compared with
  McNemar's exact test on the discordant pairs (`statsmodels`'s `mcnemar(exact=True)`): the
  binomial test of "combo wins" against "reference wins", exact at any n. Any other metric with
  the Wilcoxon signed-rank test on the paired differences (`scipy.stats.wilcoxon`), not the
  paired t-test: LLM scores are bounded, skewed and often tied, 20–60 cases do not make their
  mean normal, and Wilcoxon keeps its level without that assumption (and loses only ~5 % power
  when the data are normal after all). Zero differences (a case that scored the same under
  both combos) are ranked and then dropped (`zero_method="pratt"`), which keeps their
  information about the ranks of the others — the usual advice when many zeros occur.
* **CI.** The 95 % interval of the mean paired difference is a bootstrap over cases
  (resampling cases keeps each pair together; `scipy.stats.bootstrap` on the differences, BCa,
  9 999 resamples, a fixed seed so a comparison is reproducible). Chosen over the t interval
  for the same reason as Wilcoxon: it does not assume a normal mean and never extends past the
  attainable range of the differences. With fewer than ~10 cases any interval is rough; the
  verdict rests on the test's p value, never on the interval alone.
* **Effect size.** Cohen's d_z (mean difference / SD of the differences) for continuous
  metrics; for 0/1 metrics the odds ratio of the discordant pairs (cases the combo wins /
  cases the reference wins; `inf` when the reference wins none), the quantity McNemar tests.
* **Multiplicity.** p values are adjusted over the whole family of a comparison (every combo ×
  metric) with Holm (default; controls the family-wise error at any dependence),
  Benjamini–Hochberg (`fdr_bh`, controls the false-discovery rate) or not at all (`none`).
* **Power.** The minimum detectable effect (MDE) is the difference a two-sided paired test
  finds with 80 % power for the observed SD of the paired differences and n:
  `TTestPower().solve_power(nobs=n, alpha=α', power=0.8)` (the d_z that is detectable) times
  that SD, in the metric's units — for 0/1 metrics the same normal approximation on the
  differences (each −1, 0 or +1). α' is the level a *single* real difference has to clear in
  the adjusted family: α/m for Holm and Benjamini–Hochberg (their first, strictest step), α
  without correction — so "no detectable difference" and "significant" use the same bar.
  When even a perfect result (every case moves the same way) cannot reach α' — the exact tests
  with n pairs cannot go below p = 2 / 2ⁿ — the MDE is infinite.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from wtb_dagster.errors import ConfigError

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 20_240_612
# Values one vectorised bootstrap (or BCa jackknife) call may hold: scipy's default holds
# n_resamples × n (and n × n for the jackknife), 3 GB at 20 000 cases; batches bound it to
# 16 MB and draw the same resamples, so the interval is the same.
BOOTSTRAP_BATCH_VALUES = 2**21
CORRECTIONS = ("holm", "fdr_bh", "none")

MCNEMAR = "mcnemar_exact"
WILCOXON = "wilcoxon"
COHEN_DZ = "cohen_dz"
ODDS_RATIO = "odds_ratio_discordant"


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison of `other` against `reference` over the same cases."""

    n_pairs: int
    delta: float  # mean of other − reference
    sd_diff: float  # SD of the paired differences (ddof 1)
    ci_low: float
    ci_high: float
    test: str
    p_value: float  # two-sided, unadjusted; NaN when there is nothing to test (n < 2)
    effect_size: float
    effect_size_kind: str


def is_binary(*values: np.ndarray) -> bool:
    """True when every value is exactly 0 or 1 (a pass/fail metric after trial averaging)."""
    return all(np.isin(np.asarray(v, dtype=float), (0.0, 1.0)).all() for v in values)


def paired_comparison(
    reference: np.ndarray,
    other: np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> PairedResult:
    """Delta, bootstrap CI, the test that fits the metric and its effect size (see module doc)."""
    reference = np.asarray(reference, dtype=float)
    other = np.asarray(other, dtype=float)
    if reference.shape != other.shape or reference.ndim != 1:
        raise ValueError("paired values must be two 1-d arrays of the same length")
    diff = other - reference
    n = len(diff)
    delta = float(np.mean(diff)) if n else math.nan
    sd = float(np.std(diff, ddof=1)) if n >= 2 else math.nan
    low, high = bootstrap_ci(diff, confidence, n_resamples, seed)
    if is_binary(reference, other):
        wins = int(np.sum(diff > 0))
        losses = int(np.sum(diff < 0))
        p_value = mcnemar_p(reference, other) if n >= 2 else math.nan
        return PairedResult(
            n, delta, sd, low, high, MCNEMAR, p_value, odds_ratio(wins, losses), ODDS_RATIO
        )
    p_value = wilcoxon_p(diff) if n >= 2 else math.nan
    return PairedResult(n, delta, sd, low, high, WILCOXON, p_value, cohen_dz(diff), COHEN_DZ)


def bootstrap_ci(
    diff: np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """BCa bootstrap interval of the mean difference, resampling cases; seeded.

    No interval from fewer than two cases; a zero-width one when every difference is the same
    (nothing to resample, and BCa's acceleration is undefined).
    """
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2:
        return math.nan, math.nan
    if np.ptp(diff) == 0:
        return float(diff[0]), float(diff[0])
    interval = stats.bootstrap(
        (diff,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="BCa",
        rng=np.random.default_rng(seed),
        batch=max(1, BOOTSTRAP_BATCH_VALUES // len(diff)),
    ).confidence_interval
    return float(interval.low), float(interval.high)


def mcnemar_p(reference: np.ndarray, other: np.ndarray) -> float:
    """McNemar's exact test of 0/1 outcomes on the same cases; 1.0 without discordant pairs."""
    reference = np.asarray(reference, dtype=float)
    other = np.asarray(other, dtype=float)
    table = [
        [
            int(np.sum((reference == 1) & (other == 1))),
            int(np.sum((reference == 1) & (other == 0))),
        ],
        [
            int(np.sum((reference == 0) & (other == 1))),
            int(np.sum((reference == 0) & (other == 0))),
        ],
    ]
    if table[0][1] + table[1][0] == 0:
        return 1.0
    return float(mcnemar(table, exact=True).pvalue)


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (Pratt zeros); 1.0 if all zero."""
    diff = np.asarray(diff, dtype=float)
    if not np.any(diff != 0):
        return 1.0
    return float(stats.wilcoxon(diff, zero_method="pratt").pvalue)


def cohen_dz(diff: np.ndarray) -> float:
    """Mean / SD of the paired differences; NaN when they have no spread (or n < 2)."""
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2:
        return math.nan
    sd = float(np.std(diff, ddof=1))
    return float(np.mean(diff)) / sd if sd > 0 else math.nan


def odds_ratio(wins: int, losses: int) -> float:
    """Discordant-pair odds ratio: cases only the combo passes / cases only the reference does."""
    if wins == losses == 0:
        return math.nan
    return math.inf if losses == 0 else wins / losses


def adjust(p_values: np.ndarray, correction: str = "holm") -> np.ndarray:
    """Adjusted p values of one family; NaN entries (untested) stay NaN and are not counted."""
    check_correction(correction)
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p_values, math.nan)
    tested = ~np.isnan(p_values)
    if not tested.any():
        return adjusted
    if correction == "none":
        adjusted[tested] = p_values[tested]
    else:
        with _heap_frozen():
            adjusted[tested] = multipletests(p_values[tested], method=correction)[1]
    return adjusted


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """statsmodels' Holm branch calls `gc.collect()`: a full collection, ~0.2 s per call in a
    process with Dagster loaded. Frozen objects are skipped by it, so freeze the heap for the
    call (unless someone else froze it: their freeze is theirs to undo)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def check_correction(correction: str) -> None:
    if correction not in CORRECTIONS:
        raise ConfigError(
            f"unknown multiple-comparison correction {correction!r}; use one of "
            + ", ".join(CORRECTIONS)
        )


def detection_alpha(correction: str, alpha: float, family_size: int) -> float:
    """The level one real difference has to clear in an adjusted family of `family_size`."""
    check_correction(correction)
    if correction == "none" or family_size <= 1:
        return alpha
    return alpha / family_size


def minimum_detectable_effect(
    sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Smallest mean paired difference found with `power` by a two-sided test at `alpha`.

    `inf` when no result over n pairs can reach `alpha` (2 / 2ⁿ ≥ alpha for the exact tests);
    NaN when the paired differences have no spread to base it on.
    """
    if n < 2 or 2 * 0.5**n >= alpha:
        return math.inf
    if math.isnan(sd_diff) or sd_diff == 0:
        return math.nan
    return detectable_dz(int(n), float(alpha), float(power)) * sd_diff


@lru_cache(maxsize=1024)
def detectable_dz(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The standardized paired effect (d_z) a two-sided t test finds with `power` at n, alpha."""
    d = TTestPower().solve_power(
        effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided"
    )
    return float(np.asarray(d).item())


def t_intervals(
    means: np.ndarray, sds: np.ndarray, ns: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """t intervals of means from their SDs (ddof 1) and sizes — the level of a combo, not a
    decision; NaN below two values, zero width without spread."""
    means = np.asarray(means, dtype=float)
    ns = np.asarray(ns, dtype=float)
    sds = np.asarray(sds, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        quantile = stats.t.ppf(1 - (1 - confidence) / 2, np.where(ns >= 2, ns - 1, np.nan))
        half = np.where(sds == 0, 0.0, quantile * sds / np.sqrt(ns))
    half = np.where(ns >= 2, half, np.nan)
    return means - half, means + half
