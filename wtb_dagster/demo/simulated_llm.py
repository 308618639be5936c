"""`generate=simulated_llm`: the demo's generator as a call to a scripted chat model, offline.

`SimulatedChatModel` is a LangChain chat model (a `BaseChatModel`) that answers by a script
instead of a network call, and behaves like a hosted model where the bench can see it: each
call takes 20–80 ms (deterministic per prompt) and reports token usage in `usage_metadata`
(≈ 4 characters a token, as tokenizers of English text average) and its model name. So the
tokens, cost and the quality-against-cost plot of a comparison mean something without an API
key. The node calls `MODEL.invoke(messages)` with no config, as user code does: the bench's
usage callback reaches it through LangChain's runnable context.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from wtb_dagster.demo.llm import SYSTEM_PROMPT, user_prompt
from wtb_dagster.demo.workflow import NO_ANSWER, DemoState, generate_template

MODEL_NAME = "sim-small"
CHARS_PER_TOKEN = 4


def tokens_of(text: str) -> int:
    """A token count for `text`, the usual ≈ 4 characters per token of English."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


class SimulatedChatModel(BaseChatModel):
    """A chat model whose reply is `script(messages)`, with usage and latency like a real one.

    >>> SimulatedChatModel(script=lambda messages: "42").invoke("What is 6 × 7?").usage_metadata
    {'input_tokens': 4, 'output_tokens': 1, 'total_tokens': 5}
    """

    script: Callable[[list[BaseMessage]], str]
    model_name: str = MODEL_NAME
    min_latency_s: float = Field(default=0.02, ge=0)
    max_latency_s: float = Field(default=0.08, ge=0)

    @property
    def _llm_type(self) -> str:
        return "wtb-simulated"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _latency_s(self, prompt: str) -> float:
        # deterministic per prompt, so two runs of a case take the same time
        fraction = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") / 2**32
        return self.min_latency_s + fraction * (self.max_latency_s - self.min_latency_s)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt = "\n".join(_text(m) for m in messages)
        reply = self.script(messages)
        time.sleep(self._latency_s(prompt))
        tokens_in = sum(tokens_of(_text(m)) for m in messages)
        tokens_out = tokens_of(reply)
        message = AIMessage(
            content=reply,
            usage_metadata={
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
            },
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def answer_from_prompt(messages: list[BaseMessage]) -> str:
    """The script of the demo's model: read the question and passages back out of the user
    prompt (`llm.user_prompt`'s layout) and answer as the template generator would, over every
    passage it was shown."""
    prompt = _text(messages[-1])
    head, _, tail = prompt.rpartition("\n\nQuestion: ")
    question = tail.removesuffix("\nAnswer:")
    context = head.removeprefix("Passages:\n")
    if not question or context == "(none)":
        return NO_ANSWER
    return generate_template({"question": question, "relevant": [{"text": context}]})["answer"]


MODEL = SimulatedChatModel(script=answer_from_prompt)


def generate_simulated_llm(state: DemoState) -> dict:
    """Variant generator: ask the simulated model to answer from the graded passages."""
    passages = state.get("relevant") or state.get("documents") or []
    messages = [
        SystemMessage(SYSTEM_PROMPT),
        HumanMessage(user_prompt(state.get("question", ""), passages)),
    ]
    return {"answer": _text(MODEL.invoke(messages)).strip() or NO_ANSWER}
