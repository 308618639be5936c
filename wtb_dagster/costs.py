"""Tokens and cost per combo, cost per point of quality, and the Pareto front of the two.

Every thread counts, whatever its status: a failed or interrupted thread was paid for too. A
case's figures are the mean over its trials; a combo's mean is over its cases and its total
over its threads. A thread's cost is unknown (NaN) when a model it called has no price or its
usage was not collected (telemetry off, or stored before usage was); then the cost of its
case and its combo is unknown too — never 0 — while the tokens still count.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

COST_COLUMNS = [
    "combo", "threads", "tokens_in_mean", "tokens_out_mean", "tokens_in_total",
    "tokens_out_total", "cost_mean_usd", "cost_total_usd", "quality", "usd_per_point", "pareto",
]  # fmt: skip


def has_usage(results: pd.DataFrame) -> bool:
    """Whether any thread of `results` used chat-model tokens (else there is nothing to show)."""
    if "tokens_in" not in results or results.empty:
        return False
    tokens = results.tokens_in.fillna(0) + results.tokens_out.fillna(0)
    return bool((tokens > 0).any())


def per_case_costs(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (combo, case): mean tokens in / out and cost over its trials (NaN cost:
    unknown for some trial)."""
    frame = pd.DataFrame(
        {
            "combo": results.combo,
            "case_id": results.case_id,
            "tokens_in": results.tokens_in.fillna(0).astype(float),
            "tokens_out": results.tokens_out.fillna(0).astype(float),
            "cost_usd": pd.to_numeric(results.cost_usd, errors="coerce").astype(float),
        }
    )
    grouped = frame.groupby(["combo", "case_id"], sort=True)
    cases = grouped[["tokens_in", "tokens_out"]].mean()
    # mean of costs, but NaN as soon as one trial's cost is unknown (pandas would skip it)
    cases["cost_usd"] = grouped.cost_usd.apply(lambda s: s.mean() if s.notna().all() else math.nan)
    return cases.reset_index()


def pareto_front(cost: pd.Series, quality: pd.Series) -> pd.Series:
    """Per combo, whether no other combo is at least as good for at most the cost (and better
    on one of the two). Combos with an unknown cost or quality are not on the front."""
    known = cost.notna() & quality.notna()
    front = pd.Series(False, index=cost.index)
    for combo in cost.index[known]:
        c, q = cost[combo], quality[combo]
        others = known & (cost.index != combo)
        dominated = others & (cost <= c) & (quality >= q) & ((cost < c) | (quality > q))
        front[combo] = not bool(dominated.any())
    return front


def combo_costs(results: pd.DataFrame, quality: pd.Series) -> pd.DataFrame:
    """Per combo: threads, tokens (mean per case, total), cost (mean per case, total),
    `quality` (the primary metric's mean, by combo), USD per point of it, and `pareto`."""
    if not has_usage(results):
        return pd.DataFrame(columns=COST_COLUMNS)
    cases = per_case_costs(results)
    by_combo = cases.groupby("combo", sort=True)
    threads = results.groupby("combo", sort=True)
    table = pd.DataFrame(
        {
            "threads": threads.size(),
            "tokens_in_mean": by_combo.tokens_in.mean(),
            "tokens_out_mean": by_combo.tokens_out.mean(),
            "tokens_in_total": threads.tokens_in.sum().astype(int),
            "tokens_out_total": threads.tokens_out.sum().astype(int),
            "cost_mean_usd": by_combo.cost_usd.apply(
                lambda s: s.mean() if s.notna().all() else math.nan
            ),
            "cost_total_usd": threads.cost_usd.apply(
                lambda s: float(pd.to_numeric(s).sum()) if s.notna().all() else math.nan
            ),
        }
    )
    table["quality"] = quality.reindex(table.index).astype(float)
    # USD per point: what one unit of the primary metric costs, per case, for this combo
    positive = table.quality.where(table.quality > 0)
    table["usd_per_point"] = table.cost_mean_usd / positive
    table["pareto"] = pareto_front(table.cost_mean_usd, table.quality)
    return table.reset_index().rename(columns={"index": "combo"})[COST_COLUMNS]


def usd(value: float) -> str:
    """A cost for a table: 'unknown' when it is, enough digits for fractions of a cent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return f"{value:.6f}" if abs(value) < 0.01 else f"{value:.4f}"


def cost_table(costs: pd.DataFrame, metric: str | None) -> pd.DataFrame:
    """`combo_costs` as printable strings, cheapest first."""
    if costs.empty:
        return pd.DataFrame()
    rows = costs.sort_values(["cost_mean_usd", "combo"], na_position="last", kind="stable")
    per_point = f"usd_per_point ({metric})" if metric else "usd_per_point"
    return pd.DataFrame(
        {
            "combo": rows.combo,
            "tokens in (mean / total)": [
                f"{m:.0f} / {t}"
                for m, t in zip(rows.tokens_in_mean, rows.tokens_in_total, strict=True)
            ],
            "tokens out (mean / total)": [
                f"{m:.0f} / {t}"
                for m, t in zip(rows.tokens_out_mean, rows.tokens_out_total, strict=True)
            ],
            "cost per case, USD": [usd(v) for v in rows.cost_mean_usd],
            "cost total, USD": [usd(v) for v in rows.cost_total_usd],
            per_point: [usd(v) for v in rows.usd_per_point],
            "Pareto front": np.where(rows.pareto, "yes", ""),
        }
    )


def batch_usage(results: pd.DataFrame) -> dict[str, int | str]:
    """Tokens and cost of one combo's threads, for a batch's metadata (empty: no usage)."""
    costs = combo_costs(results, pd.Series(dtype=float))
    if costs.empty:
        return {}
    known = bool(costs.cost_total_usd.notna().all())
    figures: dict[str, int | str] = {
        "tokens_in": int(costs.tokens_in_total.sum()),
        "tokens_out": int(costs.tokens_out_total.sum()),
        "cost_usd": usd(float(costs.cost_total_usd.sum())) if known else usd(math.nan),
    }
    if len(costs) == 1:
        figures["cost_per_case_usd"] = usd(float(costs.cost_mean_usd.iloc[0]))
    return figures
