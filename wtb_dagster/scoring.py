"""Scorers: functions `(case, final_state) -> {metric: float}`; built-ins and user functions.

A scorer that raises does not stop the batch: its metrics are missing for that thread and the
error is recorded beside the scores.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError

Scorer = Callable[[TestCase, dict[str, Any]], Mapping[str, float] | float]


def _get(data: Any, field: str | None) -> Any:
    """The value at a dotted path (`answer`, `result.items.0`), or the whole value for None."""
    if field is None:
        return data
    for part in field.split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list | tuple) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _expected(case: TestCase, field: str | None) -> Any:
    # A scalar `expected` is the gold value of whatever field is scored.
    if isinstance(case.expected, Mapping):
        return _get(case.expected, field)
    return case.expected


def _normalise(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text).strip().lower().rstrip("."))


def _tokens(text: Any) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[.,][0-9]+)?", str(text).lower())


def _named(name: str, fn: Callable[..., Any]) -> Scorer:
    fn.__name__ = name
    fn.__qualname__ = name
    return fn


def exact_match(field: str | None = "answer", name: str = "exact_match") -> Scorer:
    """1.0 when the field equals the gold value, after trimming, lower-casing and a final dot."""

    def score(case: TestCase, state: dict[str, Any]) -> dict[str, float]:
        gold, got = _expected(case, field), _get(state, field)
        return {
            name: float(
                gold is not None and got is not None and _normalise(gold) == _normalise(got)
            )
        }

    return _named(name, score)


def contains(field: str | None = "answer", name: str = "contains") -> Scorer:
    """1.0 when the gold value appears, case-insensitively, inside the field's text."""

    def score(case: TestCase, state: dict[str, Any]) -> dict[str, float]:
        gold, got = _expected(case, field), _get(state, field)
        if gold is None or got is None:
            return {name: 0.0}
        return {name: float(_normalise(gold) in _normalise(got))}

    return _named(name, score)


def numeric_tolerance(
    field: str | None = "answer",
    tolerance: float = 1e-6,
    relative: bool = False,
    name: str = "numeric",
) -> Scorer:
    """1.0 when the first number in the field is within `tolerance` of the gold number."""

    def first_number(value: Any) -> float | None:
        if isinstance(value, int | float):
            return float(value)
        found = re.search(r"-?\d+(?:\.\d+)?", str(value).replace(",", ""))
        return float(found.group()) if found else None

    def score(case: TestCase, state: dict[str, Any]) -> dict[str, float]:
        gold, got = first_number(_expected(case, field)), first_number(_get(state, field))
        if gold is None or got is None:
            return {name: 0.0}
        allowed = tolerance * abs(gold) if relative else tolerance
        return {name: float(abs(gold - got) <= allowed)}

    return _named(name, score)


def token_f1(field: str | None = "answer", name: str = "token_f1") -> Scorer:
    """SQuAD-style token F1 between the field's text and the gold text."""

    def score(case: TestCase, state: dict[str, Any]) -> dict[str, float]:
        gold, got = _tokens(_expected(case, field) or ""), _tokens(_get(state, field) or "")
        if not gold or not got:
            return {name: float(gold == got)}
        common = sum((Counter(gold) & Counter(got)).values())
        if common == 0:
            return {name: 0.0}
        precision, recall = common / len(got), common / len(gold)
        return {name: 2 * precision * recall / (precision + recall)}

    return _named(name, score)


def json_field_match(fields: list[str], name: str = "json_fields") -> Scorer:
    """Share of the listed dotted fields whose value equals the gold value (JSON-equal)."""
    if not fields:
        raise ConfigError("json_field_match needs at least one field")

    def score(case: TestCase, state: dict[str, Any]) -> dict[str, float]:
        hits = sum(
            json.dumps(_get(state, f), sort_keys=True, default=str)
            == json.dumps(_expected(case, f), sort_keys=True, default=str)
            for f in fields
        )
        return {name: hits / len(fields)}

    return _named(name, score)


def latency(budget_s: float = 10.0, name: str = "within_latency") -> Scorer:
    """1.0 when the thread's wall latency is within the budget (the engine passes it in state)."""

    def score(case: TestCase, state: dict[str, Any]) -> dict[str, float]:
        seconds = state.get("__latency_s__")
        return {name: float(seconds is not None and seconds <= budget_s)}

    return _named(name, score)


BUILTINS: dict[str, Callable[..., Scorer]] = {
    "exact_match": exact_match,
    "contains": contains,
    "numeric_tolerance": numeric_tolerance,
    "token_f1": token_f1,
    "json_field_match": json_field_match,
    "latency": latency,
}


def builtin(name: str, /, **options: Any) -> Scorer:
    """A built-in scorer by name, with its options (e.g. `builtin("token_f1", field="answer")`)."""
    if name not in BUILTINS:
        raise ConfigError(f"unknown built-in scorer {name!r}; built-ins: {', '.join(BUILTINS)}")
    try:
        return BUILTINS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"scorer {name!r}: bad options {options}: {exc}") from None


def score_state(
    case: TestCase, state: dict[str, Any], scorers: list[Scorer], latency_s: float | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """Run every scorer; returns (metrics, errors by scorer name). Never raises for a scorer."""
    metrics: dict[str, float] = {}
    errors: dict[str, str] = {}
    view = {**state, "__latency_s__": latency_s}
    for scorer in scorers:
        scorer_name = getattr(scorer, "__name__", repr(scorer))
        try:
            result = scorer(case, view)
            if isinstance(result, Mapping):
                values = {str(k): float(v) for k, v in result.items()}
            else:
                values = {scorer_name: float(result)}
        except Exception as exc:  # a user scorer's bug is data about that thread, not a crash
            errors[scorer_name] = f"{type(exc).__name__}: {exc}"
            continue
        metrics.update(values)
    return metrics, errors
