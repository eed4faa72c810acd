"""ToolMaker: reads a question and writes task-specific tools (OpenAI function schemas) beside the
predefined utility tools, checked by the validation checks V; `ToolStore` keeps each question's tools in
tools.jsonl, made once for every stage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mtr.backends import Backend, BackendError
from mtr.jsonl import JsonlAppender, is_retryable, read_jsonl
from mtr.prompts import fill
from mtr.trace import QAExample, ToolSchema
from mtr.validate import validate_tools

# Predefined utility tools: MTR's ToolMaker combines these with task-specific tools. `search` is always
# offered (when configured); the ToolMaker chooses the others for a question from its domain.
_PASSAGES = {"type": "object", "properties": {"results": {
    "type": "array", "minItems": 1, "maxItems": 3,
    "items": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 80},
                                               "text": {"type": "string", "maxLength": 600}},
              "required": ["title", "text"], "additionalProperties": False}}},
    "required": ["results"], "additionalProperties": False}
UTILITY_TOOLS: dict[str, dict[str, Any]] = {
    "search": {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search an encyclopedia and return the most relevant passages.",
            "parameters": {"type": "object",
                           "properties": {"query": {"type": "string", "description": "what to look up"}},
                           "required": ["query"]},
        },
        "returns": _PASSAGES,
    },
    "lookup": {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Return the encyclopedia article with exactly this title.",
            "parameters": {"type": "object",
                           "properties": {"title": {"type": "string", "description": "the article's exact title"}},
                           "required": ["title"]},
        },
        "returns": {**_PASSAGES, "properties": {"results": {**_PASSAGES["properties"]["results"], "minItems": 0}}},
    },
    "calculate": {
        "type": "function",
        "function": {
            "name": "calculate",
            "description": "Compute an arithmetic expression, e.g. a difference of years: 2021 - 1755.",
            "parameters": {"type": "object",
                           "properties": {"expression": {"type": "string",
                                                         "description": "numbers with + - * / ** % ( )"}},
                           "required": ["expression"]},
        },
        "returns": {"type": "object", "properties": {"value": {"type": "number"}}, "required": ["value"],
                    "additionalProperties": False},
    },
}
BASE_UTILITIES = ("search",)  # offered with every question; the rest are the ToolMaker's choice


def utility_tools(names: list[str]) -> list[ToolSchema]:
    unknown = [n for n in names if n not in UTILITY_TOOLS]
    if unknown:
        raise ValueError(f"unknown utility tool(s) {unknown}; known: {', '.join(UTILITY_TOOLS)}")
    return [ToolSchema.model_validate(UTILITY_TOOLS[n]) for n in names]


_FIELD = {"type": "object",
          "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,30}$"},
                         "type": {"enum": ["string", "integer", "number", "boolean"]},
                         "description": {"type": "string", "maxLength": 60}},
          "required": ["name", "type", "description"], "additionalProperties": False}


def toolmaker_output_schema(max_tools: int, optional: list[str] | None = None) -> dict[str, Any]:
    """The JSON the ToolMaker writes: a compact interface description (tool name, description, typed
    argument and result fields) that `compile_tool` turns into an OpenAI function schema. Constrained
    decoding makes this shape right by construction, so even a small model writes structurally valid tools;
    what a grammar cannot express (unique names, no leaked answer) is checked by `validate_tools`."""
    tool = {"type": "object",
            "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,40}$"},
                           "description": {"type": "string", "maxLength": 120},
                           "arguments": {"type": "array", "items": _FIELD, "minItems": 1, "maxItems": 3},
                           "returns": {"type": "array", "items": _FIELD, "minItems": 1, "maxItems": 4}},
            "required": ["name", "description", "arguments", "returns"], "additionalProperties": False}
    properties: dict[str, Any] = {"domain": {"type": "string", "maxLength": 40}}
    if optional:  # the utility tools the question's domain calls for, chosen from those offered
        properties["utilities"] = {"type": "array", "items": {"enum": list(optional)}, "maxItems": len(optional)}
    properties["tools"] = {"type": "array", "items": tool, "minItems": 1, "maxItems": max_tools}
    return {"type": "object", "properties": properties, "required": ["domain", "tools"], "additionalProperties": False}


def _object_schema(fields: list[dict[str, str]]) -> dict[str, Any]:
    return {"type": "object",
            "properties": {f["name"]: {"type": f["type"], "description": f["description"]} for f in fields},
            "required": list(dict.fromkeys(f["name"] for f in fields))}


def compile_tool(spec: dict[str, Any]) -> dict[str, Any]:
    """A compact ToolMaker tool -> an OpenAI function tool with `returns`. Every argument is required
    (lookup tools take what they look up); a repeated field name is kept once and caught by validation
    only if it makes the schema invalid."""
    return {"type": "function",
            "function": {"name": spec["name"], "description": spec["description"],
                         "parameters": _object_schema(spec["arguments"])},
            "returns": _object_schema(spec["returns"])}


class QuestionTools(BaseModel):
    """A question's tools as every stage reads them: one record of tools.jsonl."""

    id: str
    tools: list[ToolSchema] = Field(default_factory=list)
    domain: str = ""
    attempts: int = 0
    error: str | None = None  # why the question failed, after all retries
    retryable: bool = False  # the failure was the backend's (a timeout, a server down), not the model's
    tokens: int = 0
    rejections: list[str] = Field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False) | {"tools": [t.as_dict() for t in self.tools]}


class ToolMaker:
    """Task classification (domain), interface generation (schemas), validation checking; with retries."""

    def __init__(self, backend: Backend, max_tools: int = 2, retries: int = 3, utilities: list[str] | None = None,
                 seed: int = 0, enabled: bool = True):
        self.backend, self.max_tools, self.retries, self.seed, self.enabled = backend, max_tools, retries, seed, enabled
        self.utilities = utility_tools(utilities if utilities is not None else ["search"])

    def _split_utilities(self) -> tuple[list[ToolSchema], list[ToolSchema]]:
        base = [t for t in self.utilities if t.name in BASE_UTILITIES]
        return base, [t for t in self.utilities if t.name not in BASE_UTILITIES]

    def prompt(self, question: str) -> list[dict]:
        base, optional = self._split_utilities()

        def listing(tools: list[ToolSchema]) -> str:
            return ", ".join(f"{t.name} ({t.function.description})" for t in tools) or "none"

        return [{"role": "user", "content": fill("toolmaker", question=question, max_tools=self.max_tools,
                                                 utility_tools=listing(base), optional_tools=listing(optional))}]

    async def make(self, example: QAExample) -> QuestionTools:
        res = QuestionTools(id=example.id)
        if not self.enabled:  # the ToolMaker ablation: the utility tools alone, no model call
            res.tools = list(self.utilities)
            return res
        base, optional = self._split_utilities()
        schema = toolmaker_output_schema(self.max_tools, [t.name for t in optional])
        for attempt in range(self.retries + 1):
            res.attempts = attempt + 1
            try:
                [c] = await self.backend.chat(self.prompt(example.question),
                                              self.backend.params(json_schema=schema, seed=self.seed + attempt))
            except BackendError as e:
                res.error, res.retryable = f"toolmaker: {e}", True
                return res
            res.tokens += c.completion_tokens
            if c.json_error is not None:
                res.rejections.append(f"output: {c.json_error}")
                continue
            generated = [compile_tool(t) for t in c.json["tools"]]
            chosen = [t for t in optional if t.name in (c.json.get("utilities") or [])]
            tools, err = validate_tools([t.as_dict() for t in base + chosen] + generated, example.answers,
                                        fixed=frozenset(t.name for t in self.utilities))
            if err is not None:
                res.rejections.append(err)
                continue
            res.tools, res.domain = tools, c.json["domain"]
            return res
        res.error = f"toolmaker failed after {res.attempts} attempts: {res.rejections[-1]}"
        return res


class ToolStore:
    """The tools of each question, made once by the ToolMaker and kept in a tools.jsonl file that every stage
    (synthesis, GRPO, evaluation) reads: a question whose record is there is not made again, one asked for
    by several episodes at once is made once, and a new one is appended as soon as it is made. A failure of
    the backend (timeout, server down) is recorded as retryable: the next run makes it again.

    What a stage gets for a question the ToolMaker failed on is `usable`: the utility tools alone (the
    failure recorded), or nothing (skip), by `on_failure`."""

    def __init__(self, toolmaker: ToolMaker | None, path: Path | None = None, on_failure: str = "utilities"):
        self.toolmaker, self.path, self.on_failure = toolmaker, path, on_failure
        self.made: dict[str, QuestionTools] = {}
        self._pending: dict[str, asyncio.Future] = {}
        self._out: JsonlAppender | None = None
        if path is not None and path.is_file():
            for rec in read_jsonl(path, latest_by="id"):
                if not is_retryable(rec):
                    self.made[str(rec["id"])] = QuestionTools.model_validate(rec)

    @classmethod
    def from_config(cls, cfg: Any, pool: Any, path: Path | None = None) -> "ToolStore":
        t = cfg.tools
        maker = ToolMaker(pool.get("toolmaker"), max_tools=t.max_tools, retries=t.toolmaker_retries,
                          utilities=t.utility_tools, seed=cfg.seed, enabled=t.toolmaker)
        return cls(maker, path, t.on_failure)

    async def get(self, example: QAExample) -> QuestionTools:
        if example.id in self.made:
            return self.made[example.id]
        if example.id not in self._pending:
            if self.toolmaker is None:
                raise ValueError(f"{self.path}: no tools for question {example.id!r} and no ToolMaker to make them")
            self._pending[example.id] = asyncio.ensure_future(self._make(example))
        return await self._pending[example.id]

    async def _make(self, example: QAExample) -> QuestionTools:
        res = await self.toolmaker.make(example)
        if self.path is not None:
            if self._out is None:
                self._out = JsonlAppender(self.path)
            self._out.write(res.record())
        if not res.retryable:
            self.made[example.id] = res
        return res

    def usable(self, res: QuestionTools, evaluation: bool = False) -> list[ToolSchema] | None:
        """The tools an episode of this question gets: its own; after a ToolMaker failure the utility tools
        (always in evaluation, so that every question is scored), or None (skip the question)."""
        if res.error is None:
            return res.tools
        if res.retryable:
            return None
        if evaluation or self.on_failure == "utilities":
            return list(self.toolmaker.utilities) if self.toolmaker else []
        return None

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
