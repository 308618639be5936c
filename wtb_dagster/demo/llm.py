"""Optional `generate` variant backed by an OpenAI-compatible chat completions endpoint.

Configured only through environment variables, read at call time:

- ``WTB_LLM_BASE_URL`` (required), e.g. ``http://localhost:11434/v1``
- ``WTB_LLM_MODEL`` (required)
- ``WTB_LLM_API_KEY`` (optional; sent as a bearer token)

Never used by the offline tests; it exists to compare a real model against the offline variants.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

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


def _user_prompt(question: str, passages: list[dict[str, Any]]) -> str:
    context = "\n\n".join(f"[{p['id']}] {p['title']}\n{p['text']}" for p in passages)
    return f"Passages:\n{context or '(none)'}\n\nQuestion: {question}\nAnswer:"


def chat_completion(messages: list[dict[str, str]]) -> str:
    """POST to `{WTB_LLM_BASE_URL}/chat/completions` and return the first choice's text."""
    base_url = _require_env("WTB_LLM_BASE_URL").rstrip("/")
    model = _require_env("WTB_LLM_MODEL")
    headers = {"Content-Type": "application/json"}
    api_key = os.environ.get("WTB_LLM_API_KEY", "").strip()
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    # temperature 0 keeps repeated runs as comparable as the server allows.
    body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode()
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")[:500]
        raise RuntimeError(f"LLM request failed with HTTP {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise RuntimeError(f"LLM endpoint {base_url} is unreachable: {exc.reason}") from exc
    try:
        return str(payload["choices"][0]["message"]["content"]).strip()
    except (KeyError, IndexError, TypeError) as exc:
        raise RuntimeError(f"unexpected chat completions response: {payload!r:.500}") from exc


def generate_llm(state: DemoState) -> dict:
    """Variant generator: ask an LLM to answer from the graded passages."""
    passages = state.get("relevant") or state.get("documents") or []
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": _user_prompt(state.get("question", ""), passages)},
    ]
    return {"answer": chat_completion(messages) or NO_ANSWER}
