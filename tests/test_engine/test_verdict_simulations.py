"""Seeded simulations: the verdicts keep their promised error rates and power.

Results frames are built directly with numpy (no graph runs): 30 cases, 10 metrics (five
continuous scores in [0, 1], five pass/fail), a per-case difficulty shared by every metric and
both combos, as real datasets have.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from wtb_dagster.comparison import compare

N_CASES = 30
N_METRICS = 10
METRICS = [f"m{j}" for j in range(N_METRICS)]
CONTINUOUS = N_METRICS // 2  # m0 … m4 continuous, m5 … m9 pass/fail
RESAMPLES = 999  # the intervals are not what these tests measure; the p values do not use them


def simulate(rng: np.random.Generator, shift: dict[str, float] | None = None) -> pd.DataFrame:
    """Baseline and `g=other`, drawn the same way; `shift` adds a constant to other's metrics."""
    difficulty = rng.normal(0.0, 1.0, N_CASES)
    pass_rate = 1 / (1 + np.exp(-difficulty))
    frames = []
    for combo in ("baseline", "g=other"):
        scores = np.clip(
            0.5 + 0.12 * difficulty[:, None] + rng.normal(0.0, 0.12, (N_CASES, CONTINUOUS)), 0, 1
        )
        passed = rng.random((N_CASES, N_METRICS - CONTINUOUS)) < pass_rate[:, None]
        values = np.hstack([scores, passed.astype(float)])
        if combo != "baseline":
            for metric, amount in (shift or {}).items():
                values[:, METRICS.index(metric)] += amount
        frames.append(
            pd.DataFrame(
                {
                    "combo": combo,
                    "case_id": [f"k{i:02d}" for i in range(N_CASES)],
                    "status": "succeeded",
                    "scores": [dict(zip(METRICS, row, strict=True)) for row in values.tolist()],
                    "latency_s": 1.0,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_identical_variants_are_rarely_called_different_with_holm_and_often_without():
    rng = np.random.default_rng(2024)
    repetitions = 200
    any_holm = any_none = 0
    for _ in range(repetitions):
        results = simulate(rng)
        holm = compare(results, correction="holm", n_resamples=RESAMPLES)
        none = compare(results, correction="none", n_resamples=RESAMPLES)
        assert len(holm.deltas) == N_METRICS  # the whole family is tested
        any_holm += bool(holm.deltas.significant.any())
        any_none += bool(none.deltas.significant.any())
    holm_rate, none_rate = any_holm / repetitions, any_none / repetitions
    message = f"family-wise false positives: holm {holm_rate:.3f}, none {none_rate:.3f}"
    assert holm_rate <= 0.07, message
    assert none_rate >= 0.2 and none_rate >= 3 * max(holm_rate, 0.01), message


def test_a_planted_effect_of_twice_the_reported_mde_is_detected_and_half_of_it_mostly_not():
    pilot = compare(simulate(np.random.default_rng(7)), n_resamples=RESAMPLES)
    mde = float(pilot.deltas.set_index("metric").loc["m0", "mde"])
    assert 0.02 < mde < 0.5  # a real number in the metric's units (0.12·√2 SD of Δ, n = 30)
    assert pilot.detection_alpha == 0.05 / N_METRICS  # Holm's first step over the family

    def detected(effect: float, seed: int, repetitions: int) -> float:
        rng = np.random.default_rng(seed)
        hits = 0
        for _ in range(repetitions):
            comparison = compare(simulate(rng, {"m0": effect}), n_resamples=RESAMPLES)
            row = comparison.deltas.set_index("metric").loc["m0"]
            hits += bool(row.significant) and row.delta > 0
        return hits / repetitions

    strong = detected(2 * mde, seed=11, repetitions=60)
    weak = detected(0.5 * mde, seed=12, repetitions=60)
    message = f"MDE {mde:.3f}: detected at 2×MDE {strong:.2f}, at ½×MDE {weak:.2f}"
    assert strong >= 0.8, message
    assert weak < 0.5, message  # the MDE is not inflated: well below it, most effects are missed
