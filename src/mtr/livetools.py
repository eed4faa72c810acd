"""Live tool players: a real backend answers a tool call instead of the ToolActor.

The utility tools have real players: `search` and `lookup` are answered by a retriever (`mtr.retrieval`):
the query (or the title) goes to the retriever, and its passages come back as the observation, in the
shape the tool declares (`{"results": [{"title", "text"}, ...]}`); `calculate` is computed
(simpleeval: arithmetic only, no names, no functions). A retrieval that fails after its retries is an
observation that says so and a failed `observation_valid` check: the episode goes on, and the failure is
counted. The ToolMaker's own tools have no real backend: they are always simulated.

Every player has the ToolActor's method, `observe(trace, tool, call, memo, example, seed)`, and a `name`
that the step records (`player`), so a reader knows a simulated observation from a live one.
"""

from __future__ import annotations

import json
from typing import Any

from mtr.retrieval import Retriever, RetrieverError
from mtr.trace import Check, QAExample, ToolCall, ToolSchema, Trace

LIVE_TOOLS = ("search", "lookup", "calculate")  # the utility tools a live backend can answer


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


class LiveLookup(LiveSearch):
    """`lookup` answered by the corpus: the passages with exactly that title (none if there is no such one)."""

    async def passages(self, query: str) -> list[dict[str, str]]:
        return [p.brief(self.max_chars) for p in await self.retriever.lookup(query, self.top_k)]


class Calculator:
    """`calculate` computed, not simulated: simpleeval with no names and no functions, so an expression is
    arithmetic and nothing else (model output is data)."""

    name = "live:calculator"

    async def observe(self, trace: Trace, tool: ToolSchema, call: ToolCall, memo: dict[str, str],
                      example: QAExample | None = None, seed: int = 0) -> tuple[str, Check, int]:
        from simpleeval import SimpleEval

        expression = str(call.arguments.get("expression", ""))
        try:
            value = SimpleEval(functions={}, names={}).eval(expression[:200])
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError("not a number")
        except Exception as e:  # noqa: BLE001 - any failure of the expression is the agent's, reported to it
            return (json.dumps({"error": f"cannot compute {expression[:80]!r}"}),
                    Check(code="observation_valid", ok=False, detail=f"{self.name}: {type(e).__name__}"), 0)
        value = round(value, 6) if isinstance(value, float) else value
        return json.dumps({"value": value}), Check(code="observation_valid", ok=True, detail=self.name), 0


def live_players(retriever: Retriever | None, top_k: int = 3, max_chars: int = 600) -> dict[str, Any]:
    """The real players of the utility tools: the calculator always, the retrieval tools with a retriever."""
    players: dict[str, Any] = {"calculate": Calculator()}
    if retriever is not None:
        players.update(search=LiveSearch(retriever, top_k, max_chars), lookup=LiveLookup(retriever, top_k, max_chars))
    return players
