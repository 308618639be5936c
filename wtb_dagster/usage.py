"""Token usage of chat-model calls, collected through LangChain's callbacks, and its cost.

`UsageCallback` is a LangChain callback handler. The engine passes it in the `callbacks` of
the config a thread's graph streams with; LangGraph hands that config to every node, and
LangChain's own context variable (`var_child_runnable_config`) carries it into any chat model
a node invokes, even one called as `model.invoke(messages)` without a config. So usage is
read from what LangChain reports (`AIMessage.usage_metadata`, else the provider's
`llm_output["token_usage"]`) and user code is not patched. A model called outside that
context (in a thread the node starts itself, say) is not seen.

Cost is `tokens × price per million` from the `prices` of `wtb.yaml`; a model without a price
has its tokens counted and its cost unknown (`None`), never 0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from wtb_dagster.config import ModelPrice

UNKNOWN_MODEL = "unknown"
UNREPORTED = " (usage not reported)"  # suffix of a model whose call reported no usage

# model → {"input": tokens, "output": tokens, "calls": n}
Usage = dict[str, dict[str, int]]
UsageSink = Callable[[str, int, int], None]


def add_usage(usage: Usage, model: str, tokens_in: int, tokens_out: int, calls: int = 1) -> None:
    """Add one call's tokens to a per-model usage mapping, in place."""
    entry = usage.setdefault(model, {"input": 0, "output": 0, "calls": 0})
    entry["input"] += tokens_in
    entry["output"] += tokens_out
    entry["calls"] += calls


def merge_usage(*usages: Mapping[str, Mapping[str, int]]) -> Usage:
    """The per-model sum of several usage mappings."""
    total: Usage = {}
    for usage in usages:
        for model, entry in usage.items():
            add_usage(
                total, model, entry.get("input", 0), entry.get("output", 0), entry.get("calls", 0)
            )
    return total


def token_totals(usage: Mapping[str, Mapping[str, int]]) -> tuple[int, int]:
    """(input tokens, output tokens) over every model."""
    return (
        sum(e.get("input", 0) for e in usage.values()),
        sum(e.get("output", 0) for e in usage.values()),
    )


def cost_usd(
    usage: Mapping[str, Mapping[str, int]], prices: Mapping[str, ModelPrice]
) -> float | None:
    """USD for `usage` at `prices`: None when a model that used tokens has no price."""
    total = 0.0
    for model, entry in usage.items():
        if model.endswith(UNREPORTED):
            return None
        tokens_in, tokens_out = entry.get("input", 0), entry.get("output", 0)
        if not tokens_in and not tokens_out:
            continue
        price = prices.get(model)
        if price is None:
            return None
        total += (tokens_in * price.input_per_1m + tokens_out * price.output_per_1m) / 1e6
    return total


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _model_of(message: Any, llm_output: Mapping[str, Any], started: str | None) -> str:
    metadata = getattr(message, "response_metadata", None) or {}
    for name in (
        metadata.get("model_name"),
        metadata.get("model"),
        llm_output.get("model_name"),
        llm_output.get("model"),
        started,
    ):
        if isinstance(name, str) and name:
            return name
    return UNKNOWN_MODEL


class UsageCallback(BaseCallbackHandler):
    """Reports the tokens of every finished chat-model (or LLM) call to `sink(model, in, out)`.

    The model's name is the one its response reports, else the one LangChain knew when the
    call started (`ls_model_name`, the invocation's `model` / `model_name`), else "unknown".
    """

    # Only model calls matter: the callback manager then skips this handler for the chain
    # events LangGraph raises around every node, which keeps it cheap.
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True
    # Called where the model call runs (not in an executor thread for async calls), so the
    # sink sees the context of the node that made the call.
    run_inline = True

    def __init__(self, sink: UsageSink) -> None:
        super().__init__()
        self._sink = sink
        self._lock = threading.Lock()
        self._started: dict[UUID, str] = {}

    def _remember(self, run_id: UUID, metadata: Mapping[str, Any] | None, kwargs: Any) -> None:
        params = kwargs.get("invocation_params") or {}
        name = (
            (metadata or {}).get("ls_model_name") or params.get("model") or params.get("model_name")
        )
        if isinstance(name, str) and name:
            with self._lock:
                self._started[run_id] = name

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._remember(run_id, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._remember(run_id, metadata, kwargs)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._started.pop(run_id, None)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            started = self._started.pop(run_id, None)
        llm_output = response.llm_output or {}
        reported = False
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                usage = getattr(message, "usage_metadata", None)
                if usage:
                    self._sink(
                        _model_of(message, llm_output, started),
                        _count(usage.get("input_tokens")),
                        _count(usage.get("output_tokens")),
                    )
                    reported = True
        if not reported:
            # providers that put the usage on the whole response (OpenAI-style token_usage)
            tokens = llm_output.get("token_usage") or llm_output.get("usage") or {}
            first = (
                response.generations[0][0]
                if response.generations and response.generations[0]
                else None
            )
            model = _model_of(getattr(first, "message", None), llm_output, started)
            if not isinstance(tokens, Mapping) or not tokens:
                # a call whose usage nobody reported: counted under a name no price matches,
                # so its cost is unknown rather than a silent 0
                self._sink(f"{model}{UNREPORTED}", 0, 0)
                return
            self._sink(
                model,
                _count(tokens.get("prompt_tokens") or tokens.get("input_tokens")),
                _count(tokens.get("completion_tokens") or tokens.get("output_tokens")),
            )
