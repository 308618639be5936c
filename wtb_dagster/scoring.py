"""Scorers: functions `(case, final_state) -> {metric: float}`; built-ins and user functions.

A scorer that raises does not stop the batch: its metrics are missing for that thread and the
error is recorded beside the scores. A scorer that returns `{}` does not apply to the case (a
trajectory scorer on a case with no expected trajectory): its metric is missing, no error.

A scorer may ask for more than the final state by naming keyword parameters (`CONTEXT`):
`trajectory` gets the thread's path of nodes, in execution order, read from its checkpoints
only when some scorer asks for it (`wtb_dagster.trajectory`); `thread_id` gets the thread's id.

>>> def no_loops(case, state, trajectory) -> float:
...     return float(len(trajectory) == len(set(trajectory)))
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wtb_dagster import settings
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError, WTBError
from wtb_dagster.judge import API_KEY_ENV, Judge, cache_for, grade, parse_scale
from wtb_dagster.judge import as_text as judge_text
from wtb_dagster.threads import parse_thread_id
from wtb_dagster.trajectory import MODES, matches, thread_path, tool_calls

Scorer = Callable[..., Mapping[str, float] | float]

# What a scorer can ask for by naming a keyword parameter, besides (case, state).
CONTEXT = ("trajectory", "thread_id")


def value_at(data: Any, field: str | None) -> Any:
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
        return value_at(case.expected, field)
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
        gold, got = _expected(case, field), value_at(state, field)
        return {
            name: float(
                gold is not None and got is not None and _normalise(gold) == _normalise(got)
            )
        }

    return _named(name, score)


def contains(field: str | None = "answer", name: str = "contains") -> Scorer:
    """1.0 when the gold value appears, case-insensitively, inside the field's text."""

    def score(case: TestCase, state: dict[str, Any]) -> dict[str, float]:
        gold, got = _expected(case, field), value_at(state, field)
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
        gold, got = first_number(_expected(case, field)), first_number(value_at(state, field))
        if gold is None or got is None:
            return {name: 0.0}
        allowed = tolerance * abs(gold) if relative else tolerance
        return {name: float(abs(gold - got) <= allowed)}

    return _named(name, score)


def token_f1(field: str | None = "answer", name: str = "token_f1") -> Scorer:
    """SQuAD-style token F1 between the field's text and the gold text."""

    def score(case: TestCase, state: dict[str, Any]) -> dict[str, float]:
        gold, got = _tokens(_expected(case, field) or ""), _tokens(value_at(state, field) or "")
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
            json.dumps(value_at(state, f), sort_keys=True, default=str)
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


def _node_list(value: Any, what: str, case: TestCase) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(n, str) for n in value):
        raise TypeError(f"case {case.id!r}: {what} must be a list of names, got {value!r:.80}")
    return list(value)


def trajectory_match(
    mode: str = "strict", field: str = "trajectory", name: str | None = None
) -> Scorer:
    """1.0 when the thread's path of nodes matches `expected.<field>` in `mode` (strict,
    unordered, subset, superset; see `wtb_dagster.trajectory`). A case without one: no score."""
    if mode not in MODES:
        raise ConfigError(f"trajectory_match mode {mode!r}: modes are {', '.join(MODES)}")
    metric = name or f"trajectory_{mode}"

    def score(case: TestCase, state: dict[str, Any], trajectory: list[str]) -> dict[str, float]:
        if not isinstance(case.expected, Mapping) or value_at(case.expected, field) is None:
            return {}
        expected = _node_list(value_at(case.expected, field), f"expected.{field}", case)
        return {metric: float(matches(trajectory, expected, mode))}

    return _named(metric, score)


def _names(value: Any, option: str) -> list[str]:
    names = [value] if isinstance(value, str) else value  # `called: search` is one name
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"tool_called {option} must be a list of names, got {value!r:.80}")
    return list(names)


def tool_called(
    called: Sequence[str] = (),
    not_called: Sequence[str] = (),
    messages: str | None = "messages",
    name: str = "tool_called",
) -> Scorer:
    """1.0 when every tool in `called` and `expected.tools_called` was called and none in
    `not_called` and `expected.tools_not_called` was. A tool is called when a node of that name
    is on the thread's path, or a tool call of that name is in the state's `messages` (chat
    messages with `tool_calls`, as a LangGraph ToolNode runs them). Nothing to check: no score."""
    fixed_yes, fixed_no = _names(called, "called"), _names(not_called, "not_called")

    def score(case: TestCase, state: dict[str, Any], trajectory: list[str]) -> dict[str, float]:
        expected = case.expected if isinstance(case.expected, Mapping) else {}
        yes = fixed_yes + _node_list(
            expected.get("tools_called", []), "expected.tools_called", case
        )
        no = fixed_no + _node_list(
            expected.get("tools_not_called", []), "expected.tools_not_called", case
        )
        if not yes and not no:
            return {}
        seen = set(trajectory)
        if messages is not None:
            seen.update(tool_calls(value_at(state, messages)))
        return {name: float(all(t in seen for t in yes) and not any(t in seen for t in no))}

    return _named(name, score)


class _LLMJudge:
    """The `llm_judge` scorer: the judge's grade of one field of the final state."""

    def __init__(
        self,
        rubric: str,
        judge: Judge,
        scale: str,
        field: str | None,
        input_field: str | None,
        with_reference: bool,
        cache_url: str | None,
        name: str,
    ) -> None:
        if not isinstance(rubric, str) or not rubric.strip():
            raise ConfigError("llm_judge needs a rubric: the criteria the judge grades by")
        self.rubric, self.judge, self.scale = rubric, judge, parse_scale(scale)
        self.field, self.input_field, self.with_reference = field, input_field, with_reference
        self.cache_url, self.__name__ = cache_url, name

    def __call__(
        self, case: TestCase, state: dict[str, Any], thread_id: str | None = None
    ) -> dict[str, float]:
        output = value_at({k: v for k, v in state.items() if k != "__latency_s__"}, self.field)
        if output is None:
            return {self.__name__: 0.0}  # nothing to grade: no answer is a wrong answer
        reference = None
        if self.with_reference:
            gold = _expected(case, self.field)
            if gold is None:
                raise ValueError(f"case {case.id!r} has no expected {self.field!r} to show")
            reference = judge_text(gold)
        try:
            workflow = parse_thread_id(thread_id).workflow if thread_id else None
        except WTBError:
            workflow = None
        value = grade(
            self.judge,
            cache_for(self.cache_url) if self.cache_url else None,
            self.rubric,
            self.scale,
            judge_text(value_at(case.input, self.input_field)),
            judge_text(output),
            reference,
            workflow,
            thread_id,
        )
        return {self.__name__: value}


def llm_judge(
    rubric: str,
    field: str | None = "answer",
    scale: str = "0-1",
    name: str = "llm_judge",
    input_field: str | None = None,
    with_reference: bool = False,
    model: str | None = None,
    base_url: str | None = None,
    api_key_env: str = API_KEY_ENV,
    timeout_s: float = 60.0,
    max_retries: int = 4,
    backoff_s: float = 0.5,
    input_per_1m: float | None = None,
    output_per_1m: float | None = None,
    cache_url: str | None = None,
) -> Scorer:
    """The judge's grade (0…1) of the state's `field` by `rubric`, on `scale` (`0-1`, a range
    such as `1-5` normalised to 0…1, or `pass_fail`). The judge sees the case input (or its
    `input_field`), the output, and with `with_reference` the expected value of `field`.

    The endpoint and model are `base_url` / `model`, else `WTB_JUDGE_BASE_URL` /
    `WTB_JUDGE_MODEL`, read when the scorer is built; the key comes from `api_key_env` when a
    call is made. Replies are cached in the results store at `cache_url` (default
    `WTB_RESULTS_URL`). A malformed reply or an HTTP failure is this scorer's error for the
    thread, not a 0; a state without `field` scores 0 without asking.
    """
    judge = Judge.from_env(
        base_url, model, api_key_env=api_key_env, timeout_s=timeout_s, max_retries=max_retries,
        backoff_s=backoff_s, input_per_1m=input_per_1m, output_per_1m=output_per_1m,
    )  # fmt: skip
    return _LLMJudge(
        rubric, judge, scale, field, input_field, with_reference,
        cache_url or settings.results_url(), name,
    )  # fmt: skip


BUILTINS: dict[str, Callable[..., Scorer]] = {
    "exact_match": exact_match,
    "contains": contains,
    "numeric_tolerance": numeric_tolerance,
    "token_f1": token_f1,
    "json_field_match": json_field_match,
    "latency": latency,
    "trajectory_match": trajectory_match,
    "tool_called": tool_called,
    "llm_judge": llm_judge,
}


def builtin(name: str, /, **options: Any) -> Scorer:
    """A built-in scorer by name, with its options (e.g. `builtin("token_f1", field="answer")`)."""
    if name not in BUILTINS:
        raise ConfigError(f"unknown built-in scorer {name!r}; built-ins: {', '.join(BUILTINS)}")
    try:
        return BUILTINS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"scorer {name!r}: bad options {options}: {exc}") from None


def wants(scorer: Scorer) -> set[str]:
    """The `CONTEXT` a scorer asks for: the keyword parameters of its signature by those names."""
    try:
        parameters = inspect.signature(scorer).parameters
    except (TypeError, ValueError):  # a builtin or C callable: (case, state) only
        return set()
    return {
        name
        for name in CONTEXT
        if name in parameters and parameters[name].kind is not inspect.Parameter.POSITIONAL_ONLY
    }


def score_state(
    case: TestCase,
    state: dict[str, Any],
    scorers: list[Scorer],
    latency_s: float | None = None,
    *,
    trajectory: Sequence[str] | None = None,
    graph: Any = None,
    thread_id: str | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Run every scorer; returns (metrics, errors by scorer name). Never raises for a scorer.

    A scorer asking for `trajectory` gets the given one, else the path of `thread_id` read
    from `graph`'s checkpointer (once, and only when some scorer asks); without either, that
    scorer's error says so.
    """
    metrics: dict[str, float] = {}
    errors: dict[str, str] = {}
    view = {**state, "__latency_s__": latency_s}
    path: list[str] | BaseException | None = list(trajectory) if trajectory is not None else None

    def context(names: set[str]) -> dict[str, Any]:
        nonlocal path
        given: dict[str, Any] = {}
        if "thread_id" in names:
            given["thread_id"] = thread_id
        if "trajectory" in names:
            if path is None:
                if graph is None or thread_id is None:
                    raise WTBError(
                        "this scorer needs the thread's trajectory: pass `trajectory`, or "
                        "`graph` and `thread_id`, to score_state"
                    )
                try:
                    path = thread_path(graph, thread_id)
                except Exception as exc:  # every scorer that needs it reports it
                    path = exc
            if isinstance(path, BaseException):
                raise path
            given["trajectory"] = list(path)
        return given

    for scorer in scorers:
        scorer_name = getattr(scorer, "__name__", repr(scorer))
        try:
            result = scorer(case, view, **context(wants(scorer)))
            if isinstance(result, Mapping):
                values = {str(k): float(v) for k, v in result.items()}
            else:
                values = {scorer_name: float(result)}
        except Exception as exc:  # a user scorer's bug is data about that thread, not a crash
            errors[scorer_name] = f"{type(exc).__name__}: {exc}"
            continue
        metrics.update(values)
    return metrics, errors
