"""Pairwise judging: the judge says, case by case, whether a combo's answer beats the baseline's.

For every case (and trial) both combos ran, the judge sees the case input and the two answers
as "A" and "B" — which one is shown first is drawn from a RNG seeded by (seed, workflow,
combo, case, trial), so it is random against position bias yet the same on every rerun, and
recorded in `shown_first` — and replies A, B or tie (`judge.prefer`, cached in the results
store like every judgement: a rerun pays nothing).

What counts follows `comparison.scored_threads`: a failed or timed-out thread (or one with no
answer) loses to one that answered, without asking the judge, and two broken ones tie;
interrupted or missing threads leave the pair out (`unpaired`); a judge error (HTTP, a
malformed reply) leaves it out too (`errors`). With trials, a case's outcome is the sign of
its wins minus losses over its trials, so the unit is the case, as in the comparison.

The result: wins, losses and ties of the combo over the cases; the win rate over the decided
cases (ties excluded, and counted) with a Wilson interval, and the two-sided sign test
(exact binomial, p = 0.5) of "the combo wins as often as it loses".

>>> result = pairwise_comparison(store, "demo", "generate=template", Judge.from_env())
>>> print(result.to_markdown())
"""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

from wtb_dagster.comparison import markdown_table
from wtb_dagster.judge import (
    DEFAULT_PAIRWISE_RUBRIC,
    FIRST,
    SECOND,
    Judge,
    JudgeCache,
    JudgeError,
    as_text,
    prefer,
)
from wtb_dagster.matrix import BASELINE
from wtb_dagster.scoring import value_at
from wtb_dagster.statistics import ALPHA, SEED
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import INTERRUPTED, SUCCEEDED

WIN, LOSS, TIE, ERROR, UNPAIRED = "win", "loss", "tie", "error", "unpaired"
PAIRED_COLUMNS = ["combo", "case_id", "trial", "thread_id", "status", "final_values", "input"]

PAIR_COLUMNS = [
    "case_id", "trial", "outcome", "judged", "shown_first", "judge_said", "error",
    "baseline_thread_id", "combo_thread_id",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "combo", "baseline", "cases", "wins", "losses", "ties", "errors", "unpaired", "n",
    "win_rate", "ci_low", "ci_high", "p_value", "judge_model", "seed",
]  # fmt: skip


@dataclass
class PairwiseComparison:
    """The judge's verdicts on a combo against the baseline: per pair, per case, summed up."""

    pairs: pd.DataFrame  # one row per (case, trial): outcome, order shown, judge's reply
    cases: pd.DataFrame  # one row per case: its outcome (win / loss / tie / error / unpaired)
    summary: pd.DataFrame  # one row: counts, win rate with its Wilson CI, sign-test p value

    def to_markdown(self) -> str:
        row = self.summary.iloc[0]
        if row.n:
            rate = (
                f"win rate {row.win_rate:.3f} (95 % CI {row.ci_low:.3f}…{row.ci_high:.3f}, "
                f"Wilson), sign test p = {row.p_value:.3g}"
            )
        else:
            rate = "no decided case: no win rate"
        return "\n".join(
            [
                f"### `{row.combo}` vs `{row.baseline}`, judged pairwise by {row.judge_model}",
                "",
                f"{row.wins} wins, {row.losses} losses, {row.ties} ties (excluded) over "
                f"{row.cases} cases; {row.errors} judge errors, {row.unpaired} unpaired; {rate}.",
                "",
                markdown_table(self.summary[SUMMARY_COLUMNS[:-2]]),
            ]
        )


def _answer(row: dict[str, Any] | None, field: str | None) -> Any:
    if row is None or row["status"] != SUCCEEDED:
        return None
    return value_at(row.get("final_values") or {}, field)


def _shown_first(seed: int, workflow: str, combo: str, case_id: str, trial: int) -> str:
    # A str seed is hashed (SHA-512) by `random`: stable across processes and Python versions.
    rng = random.Random(f"{seed}:{workflow}:{combo}:{case_id}:{trial}")
    return "combo" if rng.random() < 0.5 else "baseline"


def pairwise_comparison(
    store: ResultsStore,
    workflow: str,
    combo: str,
    judge: Judge,
    *,
    baseline: str = BASELINE,
    field: str | None = "answer",
    input_field: str | None = None,
    rubric: str = DEFAULT_PAIRWISE_RUBRIC,
    seed: int = SEED,
    alpha: float = ALPHA,
    max_concurrency: int = 8,
) -> PairwiseComparison:
    """Judge the stored answers (`field` of the final state) of `combo` against `baseline`'s,
    case by case, over the main-lineage threads of `workflow` in `store` (see the module doc).

    The judge's replies are cached in `store`, and its usage reported by `judge.judge_usage`.
    """
    if combo == baseline:
        raise ValueError(f"pairwise_comparison compares a combo with {baseline!r}: got it twice")
    # what a pair reads: the answers and inputs of two combos, not the paths or timings
    frame = store.results_frame(workflow, combos=[baseline, combo], columns=PAIRED_COLUMNS)
    rows: dict[tuple[str, str, int], dict[str, Any]] = {
        (r["combo"], r["case_id"], int(r.get("trial") or 0)): r for r in frame.to_dict("records")
    }
    keys = sorted({(case_id, trial) for _, case_id, trial in rows})
    cache = JudgeCache(store)
    pairs: list[dict[str, Any]] = []
    to_judge: list[tuple[dict[str, Any], str, str, str]] = []
    for case_id, trial in keys:
        ours, theirs = rows.get((combo, case_id, trial)), rows.get((baseline, case_id, trial))
        pair = dict.fromkeys(PAIR_COLUMNS)
        pair.update(case_id=case_id, trial=trial, judged=False)
        pair["baseline_thread_id"] = theirs["thread_id"] if theirs else None
        pair["combo_thread_id"] = ours["thread_id"] if ours else None
        pairs.append(pair)
        statuses = {r["status"] if r else None for r in (ours, theirs)}
        if None in statuses or INTERRUPTED in statuses:
            pair["outcome"] = UNPAIRED
            continue
        ours_answer, theirs_answer = _answer(ours, field), _answer(theirs, field)
        if ours_answer is None or theirs_answer is None:  # broken or no answer: loses
            pair["outcome"] = {(True, True): TIE, (True, False): LOSS, (False, True): WIN}[
                ours_answer is None, theirs_answer is None
            ]
            continue
        shown = _shown_first(seed, workflow, combo, case_id, trial)
        pair.update(shown_first=shown, judged=True)
        texts = (as_text(ours_answer), as_text(theirs_answer))
        first, second = texts if shown == "combo" else texts[::-1]
        question = as_text(value_at(ours.get("input") or {}, input_field))
        to_judge.append((pair, question, first, second))

    def judge_one(item: tuple[dict[str, Any], str, str, str]) -> None:
        pair, question, first, second = item
        try:
            said = prefer(
                judge, cache, rubric, question, first, second, workflow, pair["combo_thread_id"]
            )
        except JudgeError as exc:
            pair.update(outcome=ERROR, error=str(exc))
            return
        pair["judge_said"] = said
        combo_first = pair["shown_first"] == "combo"
        if said == FIRST:
            pair["outcome"] = WIN if combo_first else LOSS
        elif said == SECOND:
            pair["outcome"] = LOSS if combo_first else WIN
        else:
            pair["outcome"] = TIE

    if to_judge:
        with ThreadPoolExecutor(max(1, min(max_concurrency, len(to_judge)))) as pool:
            list(pool.map(judge_one, to_judge))
    pair_frame = pd.DataFrame(pairs, columns=PAIR_COLUMNS)
    cases = _case_outcomes(pair_frame)
    return PairwiseComparison(
        pair_frame, cases, _summary(cases, combo, baseline, judge.model, seed, alpha)
    )


def _case_outcomes(pairs: pd.DataFrame) -> pd.DataFrame:
    """A case's outcome: the sign of its wins minus losses over its decided trials."""
    outcomes = []
    for case_id, group in pairs.groupby("case_id", sort=True):
        counted = group[group.outcome.isin([WIN, LOSS, TIE])]
        if counted.empty:
            outcome = ERROR if (group.outcome == ERROR).any() else UNPAIRED
        else:
            balance = int((counted.outcome == WIN).sum() - (counted.outcome == LOSS).sum())
            outcome = WIN if balance > 0 else LOSS if balance < 0 else TIE
        outcomes.append({"case_id": case_id, "outcome": outcome, "trials": len(group)})
    return pd.DataFrame(outcomes, columns=["case_id", "outcome", "trials"])


def _summary(
    cases: pd.DataFrame, combo: str, baseline: str, model: str, seed: int, alpha: float
) -> pd.DataFrame:
    counts = cases.outcome.value_counts()
    wins, losses = int(counts.get(WIN, 0)), int(counts.get(LOSS, 0))
    n = wins + losses
    if n:
        low, high = proportion_confint(wins, n, alpha=alpha, method="wilson")
        p_value = float(binomtest(wins, n, 0.5, alternative="two-sided").pvalue)
        rate = wins / n
    else:
        low = high = p_value = rate = math.nan
    row = {
        "combo": combo, "baseline": baseline, "cases": len(cases), "wins": wins,
        "losses": losses, "ties": int(counts.get(TIE, 0)), "errors": int(counts.get(ERROR, 0)),
        "unpaired": int(counts.get(UNPAIRED, 0)), "n": n, "win_rate": rate,
        "ci_low": float(low), "ci_high": float(high), "p_value": p_value,
        "judge_model": model, "seed": seed,
    }  # fmt: skip
    return pd.DataFrame([row], columns=SUMMARY_COLUMNS)
