"""The judge: a chat model on an OpenAI-compatible endpoint that grades outputs, and its cache.

`Judge` posts to `{base_url}/chat/completions` (`WTB_JUDGE_BASE_URL`, `WTB_JUDGE_MODEL`; the
API key is read from the environment variable `api_key_env`, `WTB_JUDGE_API_KEY` by default,
in the process that makes the call, so it is never pickled into a plan, logged or put in an
error). 429 and 5xx replies and transport errors are retried with exponential backoff, at most
`max_retries` times; other HTTP errors fail at once.

Every judgement goes through the cache, the `wtb_judge_cache` table of the results store: its
key is the SHA-256 of the request (kind, model, messages: so rubric, scale, input and output),
so a rerun on any process that reaches the store pays nothing. A row also accumulates the usage
paid for its request (calls, tokens, cost): `judge_usage` reports it, apart from the workflow's
own. A malformed reply is recorded (its usage counts) but is no judgement: the next run asks
again.

>>> judge = Judge.from_env()
>>> grade(judge, cache_for(settings.results_url()), "Is it polite?", parse_scale("pass_fail"),
...       input_text="Hi", output_text="Hello!")
1.0
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from wtb_dagster.errors import ConfigError, WTBError
from wtb_dagster.store import ResultsStore, judge_cache

log = logging.getLogger(__name__)

BASE_URL_ENV = "WTB_JUDGE_BASE_URL"
MODEL_ENV = "WTB_JUDGE_MODEL"
API_KEY_ENV = "WTB_JUDGE_API_KEY"

GRADE = "llm_judge"
PAIRWISE = "pairwise_judge"

_SHOWN_REPLY = 200  # characters of a bad reply quoted in its error


class JudgeError(WTBError):
    """The judge gave no judgement: an HTTP error (after the retries), or a malformed reply."""


class JudgeReplyError(JudgeError):
    """The judge replied, but not with what was asked for (the reply is quoted, shortened)."""


@dataclass(frozen=True)
class Usage:
    """What one completion cost: tokens as the server reported them, cost when priced."""

    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    cost_usd: float | None = None


@dataclass
class Judge:
    """An OpenAI-compatible chat-completions endpoint and model, with retry and price settings.

    `input_per_1m` / `output_per_1m` are USD per million prompt / completion tokens; without
    them the cost is unknown (NULL), the tokens are still counted.
    """

    base_url: str
    model: str
    api_key_env: str = API_KEY_ENV
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    input_per_1m: float | None = None
    output_per_1m: float | None = None
    _client: httpx.Client | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"judge base URL {self.base_url!r} is not an http(s) URL (setting {BASE_URL_ENV}, "
                "e.g. http://localhost:11434/v1)"
            )
        if not self.model:
            raise ConfigError(f"the judge needs a model (setting {MODEL_ENV})")
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 10:
            raise ConfigError(f"judge max_retries must be 0…10, got {self.max_retries!r}")
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"judge {name} must be ≥ 0, got {getattr(self, name)!r}")

    @classmethod
    def from_env(
        cls, base_url: str | None = None, model: str | None = None, **options: Any
    ) -> Judge:
        """A judge from the arguments, else `WTB_JUDGE_BASE_URL` and `WTB_JUDGE_MODEL`."""
        base_url = base_url or os.environ.get(BASE_URL_ENV, "").strip()
        model = model or os.environ.get(MODEL_ENV, "").strip()
        missing = [n for n, v in ((BASE_URL_ENV, base_url), (MODEL_ENV, model)) if not v]
        if missing:
            raise ConfigError(
                f"the judge is not configured: set {' and '.join(missing)} (an OpenAI-compatible "
                "endpoint such as http://localhost:11434/v1 and a model name), or give "
                "`base_url` and `model` in the scorer's entry"
            )
        return cls(base_url=base_url, model=model, **options)

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to Ray workers with the workflow: settings only, no open connections.
        state = dict(self.__dict__)
        state["_client"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        if self.input_per_1m is None or self.output_per_1m is None:
            return None
        return (tokens_in * self.input_per_1m + tokens_out * self.output_per_1m) / 1e6

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s)
            return self._client

    def complete(self, messages: Sequence[Mapping[str, str]]) -> tuple[str, Usage]:
        """The first choice's text and the usage of one chat completion (temperature 0)."""
        url = f"{self.base_url.rstrip('/')}/chat/completions"
        key = os.environ.get(self.api_key_env, "").strip()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": self.model, "messages": list(messages), "temperature": 0}
        for attempt in range(self.max_retries + 1):
            started = time.perf_counter()
            response: httpx.Response | None = None
            try:
                response = self._http().post(url, json=body, headers=headers)
            except httpx.TransportError as exc:
                problem, retry = f"{type(exc).__name__}: {exc}", True
            else:
                if response.status_code == 200:
                    return self._parse(response, key, time.perf_counter() - started)
                status = response.status_code
                problem = f"HTTP {status}: {_shorten(response.text)}"
                retry = status == 429 or status >= 500
                if status in (401, 403):
                    problem += f" (check the key in {self.api_key_env})"
            problem = _scrub(problem, key)
            if not retry or attempt == self.max_retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise JudgeError(f"judge request to {url} failed{tries}: {problem}")
            delay = self._delay(attempt, response)
            log.warning(
                "judge request to %s: %s; retry %d of %d in %.2f s",
                url, problem, attempt + 1, self.max_retries, delay,
            )  # fmt: skip
            time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Retry-After when the server sends seconds, else exponential with jitter; capped."""
        after = response.headers.get("retry-after") if response is not None else None
        if after is not None:
            try:
                return min(self.max_backoff_s, max(0.0, float(after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return base * (0.5 + random.random() / 2)  # jitter: concurrent threads do not align

    def _parse(self, response: httpx.Response, key: str, seconds: float) -> tuple[str, Usage]:
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            text = f"judge reply is not a chat completion ({exc}): {_shorten(response.text)}"
            raise JudgeReplyError(_scrub(text, key)) from None
        content = _scrub(content, key)  # a reply echoing the key: not into errors or the cache
        usage = payload.get("usage") if isinstance(payload, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        tokens_in = _count(usage.get("prompt_tokens"))
        tokens_out = _count(usage.get("completion_tokens"))
        return content, Usage(tokens_in, tokens_out, seconds, self.cost(tokens_in, tokens_out))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _shorten(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _SHOWN_REPLY else text[: _SHOWN_REPLY - 1] + "…"


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


# -- the cache ---------------------------------------------------------------------------------


class JudgeCache:
    """Judge replies by request key in the results store's `wtb_judge_cache` table."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store

    def lookup(self, key: str) -> str | None:
        """The stored reply of a request, when it was a judgement (not a malformed reply)."""
        self.store.setup()
        query = sa.select(judge_cache.c.reply).where(
            judge_cache.c.cache_key == key, judge_cache.c.error.is_(None)
        )
        with self.store.engine.connect() as conn:
            return conn.execute(query).scalar()

    def record(
        self,
        key: str,
        kind: str,
        model: str,
        request: Any,
        reply: str,
        error: str | None,
        usage: Usage,
        workflow: str | None = None,
        thread_id: str | None = None,
    ) -> None:
        """Store a reply and add its usage to the request's row (one upsert).

        A row holding a judgement keeps it (another process may have asked at the same time);
        a row holding a malformed reply takes the new one.
        """
        self.store.setup()
        now = datetime.now(UTC)
        row = {
            "cache_key": key, "kind": kind, "model": model, "workflow": workflow,
            "thread_id": thread_id, "request": request, "reply": reply.replace("\x00", "\ufffd"),
            "error": error, "calls": 1, "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out, "cost_usd": usage.cost_usd,
            "latency_s": usage.seconds, "created_at": now, "updated_at": now,
        }  # fmt: skip
        with self.store.engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(judge_cache).values(row)
            new, old = insert.excluded, judge_cache.c
            keep = old.error.is_(None)
            insert = insert.on_conflict_do_update(
                index_elements=["cache_key"],
                set_={
                    "reply": sa.case((keep, old.reply), else_=new.reply),
                    "error": sa.case((keep, old.error), else_=new.error),
                    "calls": old.calls + new.calls,
                    "tokens_in": old.tokens_in + new.tokens_in,
                    "tokens_out": old.tokens_out + new.tokens_out,
                    "cost_usd": sa.case(
                        (sa.and_(old.cost_usd.is_(None), new.cost_usd.is_(None)), None),
                        else_=sa.func.coalesce(old.cost_usd, 0.0)
                        + sa.func.coalesce(new.cost_usd, 0.0),
                    ),
                    "latency_s": old.latency_s + new.latency_s,
                    "updated_at": new.updated_at,
                },
            )
            conn.execute(insert)


_caches: dict[str, JudgeCache] = {}
_caches_lock = threading.Lock()


def cache_for(url: str) -> JudgeCache:
    """This process's cache on the results store at `url` (one engine per URL and process)."""
    with _caches_lock:
        if url not in _caches:
            _caches[url] = JudgeCache(ResultsStore(url, pool_size=2))
        return _caches[url]


def judge_usage(store: ResultsStore, workflow: str | None = None) -> pd.DataFrame:
    """What the judge cost, apart from the workflow's own usage: one row per (kind, model).

    `judgements`: distinct requests judged; `calls`: completions paid for (cache hits are
    free and not counted; a malformed reply is paid); tokens as the server reported them;
    `cost_usd` NaN when no price was given for the model. Usage is reported under the workflow
    of the first thread that asked (an identical request from another workflow is a hit).
    """
    store.setup()
    c = judge_cache.c
    query = sa.select(
        c.kind, c.model,
        sa.func.count().label("judgements"),
        sa.func.sum(c.calls).label("calls"),
        sa.func.sum(c.tokens_in).label("tokens_in"),
        sa.func.sum(c.tokens_out).label("tokens_out"),
        sa.func.sum(c.cost_usd).label("cost_usd"),
        sa.func.sum(c.latency_s).label("latency_s"),
    ).group_by(c.kind, c.model).order_by(c.kind, c.model)  # fmt: skip
    if workflow is not None:
        query = query.where(c.workflow == workflow)
    columns = ["kind", "model", "judgements", "calls", "tokens_in", "tokens_out", "cost_usd",
               "latency_s"]  # fmt: skip
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(query)]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"cost_usd": float, "latency_s": float})


# -- asking ------------------------------------------------------------------------------------

T = TypeVar("T")


class _KeyLock:
    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


_inflight: weakref.WeakValueDictionary[str, _KeyLock] = weakref.WeakValueDictionary()
_inflight_guard = threading.Lock()


def request_key(kind: str, model: str, messages: Sequence[Mapping[str, str]]) -> str:
    """The cache key of a request: SHA-256 of its kind, model and messages (canonical JSON)."""
    text = json.dumps(
        {"kind": kind, "model": model, "messages": list(messages)},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def ask(
    judge: Judge,
    cache: JudgeCache | None,
    kind: str,
    messages: list[dict[str, str]],
    parse: Callable[[str], T],
    workflow: str | None = None,
    thread_id: str | None = None,
) -> T:
    """The parsed judgement of a request: from the cache, else from the judge (then cached).

    Raises `JudgeError` (HTTP) or `JudgeReplyError` (malformed reply, recorded but not reused).
    Identical requests in flight in this process wait for the first rather than pay twice.
    """
    key = request_key(kind, judge.model, messages)
    with _inflight_guard:
        holder = _inflight.get(key)
        if holder is None:
            holder = _inflight[key] = _KeyLock()
    with holder.lock:
        reply = cache.lookup(key) if cache is not None else None
        if reply is not None:
            return parse(reply)
        content, usage = judge.complete(messages)

        def record(error: str | None) -> None:
            if cache is not None:
                cache.record(
                    key, kind, judge.model, messages, content, error, usage, workflow, thread_id
                )

        try:
            value = parse(content)
        except Exception as exc:  # paid for, but no judgement: recorded, asked again next time
            record(str(exc) or type(exc).__name__)
            raise
        record(None)
        return value


# -- grading: the llm_judge scorer's request and reply ------------------------------------------


@dataclass(frozen=True)
class Scale:
    """What the judge answers: a number in [low, high] (scored normalised to 0…1), or pass/fail."""

    low: float = 0.0
    high: float = 1.0
    pass_fail: bool = False

    def describe(self) -> str:
        if self.pass_fail:
            return '"verdict": "pass" or "fail"'
        return f'"score": a number from {self.low:g} (worst) to {self.high:g} (best)'


def parse_scale(text: Any) -> Scale:
    """`0-1` (default), another range such as `1-5`, or `pass_fail`."""
    value = str(text).strip().lower()
    if value in ("pass_fail", "pass/fail", "passfail"):
        return Scale(pass_fail=True)
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)", value)
    if match and float(match[1]) < float(match[2]):
        return Scale(float(match[1]), float(match[2]))
    raise ConfigError(f"llm_judge scale {text!r}: use 0-1, another range such as 1-5, or pass_fail")


_GRADER = (
    "You are a strict, impartial evaluator of the output of an AI workflow. Apply the rubric "
    "to the output and to nothing else. Reply with one JSON object and nothing else: "
    '{{"reasoning": "<at most two sentences>", {scale}}}'
)


def grade_messages(
    rubric: str, scale: Scale, input_text: str, output_text: str, reference: str | None = None
) -> list[dict[str, str]]:
    """The chat messages that ask the judge to grade one output against a rubric."""
    parts = [f"Rubric:\n{rubric.strip()}", f"Input:\n{input_text}"]
    if reference is not None:
        parts.append(f"Reference answer:\n{reference}")
    parts.append(f"Output to grade:\n{output_text}")
    return [
        {"role": "system", "content": _GRADER.format(scale=scale.describe())},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def _reply_object(reply: str) -> dict[str, Any]:
    """The JSON object a reply consists of (one ```json fence around it is allowed)."""
    body = reply.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.DOTALL)
    if fenced:
        body = fenced[1]
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise JudgeReplyError(f"judge reply is not one JSON object: {_shorten(reply)!r}")
    return value


def parse_grade(reply: str, scale: Scale) -> float:
    """The score in a grading reply, normalised to 0…1; anything else is a `JudgeReplyError`."""
    value = _reply_object(reply)
    if scale.pass_fail:
        verdict = value.get("verdict")
        if not isinstance(verdict, str) or verdict.strip().lower() not in ("pass", "fail"):
            raise JudgeReplyError(
                f'judge reply has no "verdict" of "pass" or "fail": {_shorten(reply)!r}'
            )
        return float(verdict.strip().lower() == "pass")
    score = value.get("score")
    if (
        not isinstance(score, int | float)
        or isinstance(score, bool)
        or not math.isfinite(score)
        or not scale.low <= score <= scale.high
    ):
        raise JudgeReplyError(
            f'judge reply has no "score" from {scale.low:g} to {scale.high:g}: {_shorten(reply)!r}'
        )
    return (float(score) - scale.low) / (scale.high - scale.low)


def grade(
    judge: Judge,
    cache: JudgeCache | None,
    rubric: str,
    scale: Scale,
    input_text: str,
    output_text: str,
    reference: str | None = None,
    workflow: str | None = None,
    thread_id: str | None = None,
) -> float:
    """The judge's score (0…1) of one output against a rubric, cached."""
    messages = grade_messages(rubric, scale, input_text, output_text, reference)
    return ask(judge, cache, GRADE, messages, lambda r: parse_grade(r, scale), workflow, thread_id)


# -- preference: the pairwise judge's request and reply -----------------------------------------

FIRST, SECOND, TIE = "first", "second", "tie"

DEFAULT_PAIRWISE_RUBRIC = (
    "Which answer serves the user better: correct, complete for the question, and concise? "
    "Ignore the answers' order and length as such."
)

_PREFERRER = (
    "You are a strict, impartial evaluator. Two AI workflows answered the same input; compare "
    "answer A and answer B by the criteria and say which is better. Reply with one JSON object "
    'and nothing else: {"reasoning": "<at most two sentences>", "winner": "A" or "B" or "tie"}'
)


def preference_messages(
    rubric: str, input_text: str, answer_a: str, answer_b: str
) -> list[dict[str, str]]:
    """The chat messages that ask the judge which of two answers is better."""
    user = (
        f"Criteria:\n{rubric.strip()}\n\nInput:\n{input_text}\n\n"
        f"Answer A:\n{answer_a}\n\nAnswer B:\n{answer_b}"
    )
    return [{"role": "system", "content": _PREFERRER}, {"role": "user", "content": user}]


def parse_preference(reply: str) -> str:
    """`first` (A), `second` (B) or `tie`; anything else is a `JudgeReplyError`."""
    winner = _reply_object(reply).get("winner")
    choice = winner.strip().lower() if isinstance(winner, str) else None
    if choice not in ("a", "b", "tie"):
        raise JudgeReplyError(f'judge reply has no "winner" of A, B or tie: {_shorten(reply)!r}')
    return {"a": FIRST, "b": SECOND, "tie": TIE}[choice]


def prefer(
    judge: Judge,
    cache: JudgeCache | None,
    rubric: str,
    input_text: str,
    first: str,
    second: str,
    workflow: str | None = None,
    thread_id: str | None = None,
) -> str:
    """Which of two answers the judge prefers as shown (`first`, `second`, `tie`), cached."""
    messages = preference_messages(rubric, input_text, first, second)
    return ask(judge, cache, PAIRWISE, messages, parse_preference, workflow, thread_id)


def as_text(value: Any) -> str:
    """A value as the judge reads it: text as is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
