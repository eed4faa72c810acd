"""Live tool players: a real backend answers a tool call instead of the ToolActor.

Today the one live tool is `search`, answered by a retriever (`mtr.retrieval`): the call's query goes to the
retriever, and its top passages come back as the observation, in the shape the `search` tool declares
(`{"results": [{"title", "text"}, ...]}`). A retrieval that fails after its retries is an observation that
says so and a failed `observation_valid` check: the episode goes on, and the failure is counted.

Every player has the ToolActor's method, `observe(trace, tool, call, memo, example, seed)`, and a `name`
that the step records (`player`), so a reader knows a simulated observation from a live one.
"""

from __future__ import annotations

import json
from typing import Any

from mtr.retrieval import Retriever, RetrieverError
from mtr.trace import Check, QAExample, ToolCall, ToolSchema, Trace

LIVE_TOOLS = ("search",)  # the utility tools a live backend can answer


def call_query(call: ToolCall) -> str:
    """A tool call as a retrieval query: its string and number argument values, in order."""
    values: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, (str, int, float)) and not isinstance(v, bool):
            values.append(str(v))

    walk(call.arguments)
    return " ".join(values)


class LiveSearch:
    """`search` answered by a retriever: the top `top_k` passages, each cut to `max_chars`."""

    def __init__(self, retriever: Retriever, top_k: int = 3, max_chars: int = 600):
        self.retriever, self.top_k, self.max_chars = retriever, top_k, max_chars
        self.name = f"live:{retriever.name}"

    async def passages(self, query: str) -> list[dict[str, str]]:
        [found] = await self.retriever.search([query], self.top_k)
        return [p.brief(self.max_chars) for p in found]

    async def observe(self, trace: Trace, tool: ToolSchema, call: ToolCall, memo: dict[str, str],
                      example: QAExample | None = None, seed: int = 0) -> tuple[str, Check, int]:
        key = call.canonical_key()
        if key in memo:
            return memo[key], Check(code="observation_valid", ok=True, detail=f"{self.name}, memoised"), 0
        try:
            results = await self.passages(call_query(call))
        except RetrieverError as e:
            return (json.dumps({"error": "the search failed"}),
                    Check(code="observation_valid", ok=False, detail=f"{self.name}: {e}"), 0)
        text = json.dumps({"results": results}, ensure_ascii=False)
        memo[key] = text
        return text, Check(code="observation_valid", ok=True, detail=self.name), 0
