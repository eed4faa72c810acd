"""ToolActor: plays a tool from a model's knowledge (no live API): given the schema and the call, it returns an
observation that must match the tool's `returns` schema (checked by V)."""

from __future__ import annotations

import json

from mtr.backends import Backend
from mtr.livetools import call_query
from mtr.prompts import fill
from mtr.retrieval import Retriever, RetrieverError
from mtr.trace import Check, QAExample, ToolCall, ToolSchema, Trace
from mtr.validate import validate_observation


def oracle_passages(example: QAExample | None, call: ToolCall, k: int = 2) -> list[dict]:
    """The record's own context paragraphs (gold ones included) that share the most words with the call's
    arguments: the `oracle` grounding."""
    if example is None or not example.context:
        return []
    words = {w.lower() for w in json.dumps(call.arguments, ensure_ascii=False).split() if len(w) > 2}
    words = {w.strip('"{}[],:.') for w in words}

    def score(p: dict) -> int:
        text = (p.get("title", "") + " " + p.get("text", "")).lower()
        return sum(1 for w in words if w and w in text)

    ranked = sorted(example.context, key=score, reverse=True)
    return [{"title": p.get("title", ""), "text": p.get("text", "")[:600]} for p in ranked[:k] if score(p) > 0]


class ToolActor:
    """Plays a tool from a model's knowledge (no live API, never the gold answer).

    Consistency: within an episode, the same tool with the same canonicalised arguments returns the same
    observation (memoised in `memo`), and the actor sees the episode's earlier observations.
    Grounding adds knowledge to its prompt: `retrieval`, the passages a retriever finds for the call's
    arguments; `oracle`, the record's own paragraphs, gold ones included (training only; labelled).
    """

    name = "toolactor"

    def __init__(self, backend: Backend, grounding: str = "none", retries: int = 1, history: int = 4,
                 retriever: Retriever | None = None, top_k: int = 2, max_chars: int = 600):
        if grounding not in ("none", "retrieval", "oracle"):
            raise ValueError(f"toolactor grounding must be none, retrieval or oracle, got {grounding!r}")
        if grounding == "retrieval" and retriever is None:
            raise ValueError("toolactor grounding retrieval needs a retriever")
        self.backend, self.grounding, self.retries, self.history = backend, grounding, retries, history
        self.retriever, self.top_k, self.max_chars = retriever, top_k, max_chars

    async def grounding_passages(self, call: ToolCall, example: QAExample | None) -> list[dict]:
        if self.grounding == "oracle":
            return oracle_passages(example, call)
        if self.grounding == "retrieval":
            try:
                [found] = await self.retriever.search([call_query(call)], self.top_k)
            except RetrieverError:
                return []  # a simulation without reference passages, rather than no observation at all
            return [p.brief(self.max_chars) for p in found]
        return []

    def prompt(self, trace: Trace, tool: ToolSchema, call: ToolCall, passages: list[dict]) -> list[dict]:
        earlier = [s for s in trace.steps if s.call is not None and s.observation is not None][-self.history:]
        history = ""
        if earlier:
            history = "Earlier results in this session:\n" + "\n".join(
                f"- {s.call.name}({json.dumps(s.call.arguments, ensure_ascii=False)}) -> {s.observation}"
                for s in earlier) + "\n"
        grounding = ""
        if passages:
            grounding = "Reference passages (your knowledge):\n" + "\n".join(
                f"- {p['title']}: {p['text']}" for p in passages) + "\n"
        content = fill("toolactor", name=tool.name, description=tool.function.description,
                       parameters=json.dumps(tool.function.parameters, ensure_ascii=False),
                       returns=json.dumps(tool.returns or {"type": "object"}, ensure_ascii=False),
                       grounding=grounding, history=history,
                       arguments=json.dumps(call.arguments, ensure_ascii=False))
        return [{"role": "user", "content": content}]

    async def observe(self, trace: Trace, tool: ToolSchema, call: ToolCall, memo: dict[str, str],
                      example: QAExample | None = None, seed: int = 0) -> tuple[str, Check, int]:
        """(observation text, observation_valid check, tokens). Memo hits cost nothing."""
        key = call.canonical_key()
        if key in memo:
            return memo[key], Check(code="observation_valid", ok=True, detail="memoised"), 0
        schema = tool.returns or {"type": "object"}
        prompt = self.prompt(trace, tool, call, await self.grounding_passages(call, example))
        tokens = 0
        check = Check(code="observation_valid", ok=False, detail="no attempt")
        text = ""
        for attempt in range(self.retries + 1):
            [c] = await self.backend.chat(prompt,
                                          self.backend.params(json_schema=schema, seed=seed + attempt))
            tokens += c.completion_tokens
            text = json.dumps(c.json, ensure_ascii=False) if c.json is not None else c.text.strip()
            check = validate_observation(text, tool)
            if check.ok:
                memo[key] = text
                break
        if not check.ok:
            # The agent still gets an observation: the tool "failed", as real tools do.
            text = json.dumps({"error": "the tool returned a malformed result"})
        return text, check, tokens
