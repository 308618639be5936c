"""Optional `generate` variant backed by an OpenAI-compatible chat completions endpoint.

Configured only through environment variables, read at call time:

- ``WTB_LLM_BASE_URL`` (required), e.g. ``http://localhost:11434/v1``
- ``WTB_LLM_MODEL`` (required)
- ``WTB_LLM_API_KEY`` (optional; sent as a bearer token)

The call goes through a LangChain chat model (`OpenAICompatibleChat`) that reports the
server's token counts as `usage_metadata`, so the bench's usage callback counts real usage.
Never used by the offline tests; it exists to compare a real model against the offline variants.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from wtb_dagster.demo.workflow import NO_ANSWER, DemoState

TIMEOUT_SECONDS = 60.0

SYSTEM_PROMPT = (
    "You answer customer questions for Northwind Gadgets using only the given passages. "
    "Reply with the shortest exact answer (a number with its unit, an amount, a name or a "
    f"short phrase), not a full sentence. If the passages do not contain it, reply "
    f"'{NO_ANSWER}'"
)


def _require_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(
            f"generate_llm is not configured: environment variable {name} is not set "
            "(needs WTB_LLM_BASE_URL and WTB_LLM_MODEL; WTB_LLM_API_KEY is optional)"
        )
    return value


def user_prompt(question: str, passages: list[dict[str, Any]]) -> str:
    """The user message: the passages, then the question."""
    context = "\n\n".join(f"[{p['id']}] {p['title']}\n{p['text']}" for p in passages)
    return f"Passages:\n{context or '(none)'}\n\nQuestion: {question}\nAnswer:"


_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def _post(base_url: str, model: str, api_key: str, messages: list[dict[str, str]]) -> dict:
    """POST to `{base_url}/chat/completions`; the response's JSON."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    # temperature 0 keeps repeated runs as comparable as the server allows.
    body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode()
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")[:500]
        raise RuntimeError(f"LLM request failed with HTTP {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise RuntimeError(f"LLM endpoint {base_url} is unreachable: {exc.reason}") from exc


class OpenAICompatibleChat(BaseChatModel):
    """A chat model on any OpenAI-compatible chat-completions endpoint, reporting the
    server's `usage` (prompt / completion tokens) and the model that answered."""

    base_url: str
    model_name: str
    api_key: str = ""

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "base_url": self.base_url}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        wire = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        payload = _post(self.base_url.rstrip("/"), self.model_name, self.api_key, wire)
        try:
            content = str(payload["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError) as exc:
            raise RuntimeError(f"unexpected chat completions response: {payload!r:.500}") from exc
        usage = payload.get("usage") or {}
        tokens_in = int(usage.get("prompt_tokens") or 0)
        tokens_out = int(usage.get("completion_tokens") or 0)
        message = AIMessage(
            content=content,
            usage_metadata={
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
            },
            # priced by the name configured (WTB_LLM_MODEL): servers report dated variants
            response_metadata={"model_name": self.model_name, "served_model": payload.get("model")},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def generate_llm(state: DemoState) -> dict:
    """Variant generator: ask an LLM to answer from the graded passages."""
    model = OpenAICompatibleChat(
        base_url=_require_env("WTB_LLM_BASE_URL"),
        model_name=_require_env("WTB_LLM_MODEL"),
        api_key=os.environ.get("WTB_LLM_API_KEY", "").strip(),
    )
    passages = state.get("relevant") or state.get("documents") or []
    messages = [
        ("system", SYSTEM_PROMPT),
        ("human", user_prompt(state.get("question", ""), passages)),
    ]
    return {"answer": str(model.invoke(messages).content) or NO_ANSWER}
