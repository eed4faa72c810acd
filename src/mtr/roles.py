"""The three model roles of MTR: ToolMaker writes tools, an agent acts, ToolActor plays the tools.

Agents share one interface, `async next_step(trace, final) -> Step`:
- `AutoAgent`: the synthesis agent; its turns are JSON-schema-constrained (`{"thought", "tool_call"}` or
  `{"thought", "answer"}`, with `arguments` constrained to the tool's own parameter schema).
- `PolicyAgent`: the policy being trained/evaluated; writes Hermes text (`<think>`, `<tool_call>`,
  `<answer>`) through the chat template, parsed by `parse_turn`.
- `ScriptedTeacher`: a deterministic agent that walks a record's supporting facts (DESIGN.md); it teaches
  the tiny CPU policy the trace grammar. Its traces are labelled `teacher: scripted`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from mtr.backends import Backend, BackendError, Completion, attach_json
from mtr.prompts import fill
from mtr.trace import Check, QAExample, Step, ToolCall, ToolSchema, Trace, parse_turn
from mtr.validate import validate_observation, validate_tools

# --------------------------------------------------------------------------------------------------
# Predefined utility tools: MTR's ToolMaker combines these with task-specific tools.

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
        "returns": {"type": "object", "properties": {"results": {
            "type": "array", "minItems": 1, "maxItems": 2,
            "items": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 60},
                                                       "text": {"type": "string", "maxLength": 300}},
                      "required": ["title", "text"], "additionalProperties": False}}},
                    "required": ["results"], "additionalProperties": False},
    },
}


def utility_tools(names: list[str]) -> list[ToolSchema]:
    unknown = [n for n in names if n not in UTILITY_TOOLS]
    if unknown:
        raise ValueError(f"unknown utility tool(s) {unknown}; known: {', '.join(UTILITY_TOOLS)}")
    return [ToolSchema.model_validate(UTILITY_TOOLS[n]) for n in names]


_FIELD = {"type": "object",
          "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,30}$"},
                         "type": {"enum": ["string", "integer", "number", "boolean"]},
                         "description": {"type": "string", "maxLength": 100}},
          "required": ["name", "type", "description"], "additionalProperties": False}


def toolmaker_output_schema(max_tools: int) -> dict[str, Any]:
    """The JSON the ToolMaker writes: a compact interface description (tool name, description, typed
    argument and result fields) that `compile_tool` turns into an OpenAI function schema. Constrained
    decoding makes this shape right by construction, so even a small model writes structurally valid tools;
    what a grammar cannot express (unique names, no leaked answer) is checked by `validate_tools`."""
    tool = {"type": "object",
            "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,40}$"},
                           "description": {"type": "string", "maxLength": 160},
                           "arguments": {"type": "array", "items": _FIELD, "minItems": 1, "maxItems": 3},
                           "returns": {"type": "array", "items": _FIELD, "minItems": 1, "maxItems": 4}},
            "required": ["name", "description", "arguments", "returns"], "additionalProperties": False}
    return {"type": "object",
            "properties": {"domain": {"type": "string", "maxLength": 40},
                           "tools": {"type": "array", "items": tool, "minItems": 1, "maxItems": max_tools}},
            "required": ["domain", "tools"], "additionalProperties": False}


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


@dataclass
class ToolMakerResult:
    tools: list[ToolSchema] = field(default_factory=list)
    domain: str = ""
    attempts: int = 0
    error: str | None = None  # why the question failed, after all retries
    retryable: bool = False  # the failure was the backend's (a timeout, a server down), not the model's
    tokens: int = 0
    rejections: list[str] = field(default_factory=list)


class ToolMaker:
    """Task classification (domain), interface generation (schemas), validation checking; with retries."""

    def __init__(self, backend: Backend, max_tools: int = 2, retries: int = 3, utilities: list[str] | None = None,
                 seed: int = 0):
        self.backend, self.max_tools, self.retries, self.seed = backend, max_tools, retries, seed
        self.utilities = utility_tools(utilities if utilities is not None else ["search"])

    def prompt(self, question: str) -> list[dict]:
        names = ", ".join(f"{t.name} ({t.function.description})" for t in self.utilities) or "none"
        return [{"role": "user", "content": fill("toolmaker", question=question, max_tools=self.max_tools,
                                                 utility_tools=names)}]

    async def make(self, example: QAExample) -> ToolMakerResult:
        res = ToolMakerResult()
        schema = toolmaker_output_schema(self.max_tools)
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
            tools, err = validate_tools([t.as_dict() for t in self.utilities] + generated, example.answers)
            if err is not None:
                res.rejections.append(err)
                continue
            res.tools, res.domain = tools, c.json["domain"]
            return res
        res.error = f"toolmaker failed after {res.attempts} attempts: {res.rejections[-1]}"
        return res


class ToolCache:
    """Tools are made once per question and shared by all its episodes (and concurrent callers)."""

    def __init__(self, toolmaker: ToolMaker):
        self.toolmaker = toolmaker
        self._made: dict[str, asyncio.Future] = {}

    async def get(self, example: QAExample) -> ToolMakerResult:
        if example.id not in self._made:
            self._made[example.id] = asyncio.ensure_future(self.toolmaker.make(example))
        return await self._made[example.id]


# --------------------------------------------------------------------------------------------------


def _grounding_passages(example: QAExample | None, call: ToolCall, k: int = 2) -> list[dict]:
    """The record's context paragraphs that share the most words with the call's arguments."""
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
    """Plays a tool from the model's own knowledge (no live API, never the gold answer).

    Consistency: within an episode, the same tool with the same canonicalised arguments returns the same
    observation (memoised in `memo`), and the actor sees the episode's earlier observations.
    Grounding `context` gives it the record's paragraphs as its knowledge (still simulation; labelled).
    """

    def __init__(self, backend: Backend, grounding: str = "none", retries: int = 1, history: int = 4):
        if grounding not in ("none", "context"):
            raise ValueError(f"toolactor grounding must be none or context, got {grounding!r}")
        self.backend, self.grounding, self.retries, self.history = backend, grounding, retries, history

    def prompt(self, trace: Trace, tool: ToolSchema, call: ToolCall, example: QAExample | None) -> list[dict]:
        earlier = [s for s in trace.steps if s.call is not None and s.observation is not None][-self.history:]
        history = ""
        if earlier:
            history = "Earlier results in this session:\n" + "\n".join(
                f"- {s.call.name}({json.dumps(s.call.arguments, ensure_ascii=False)}) -> {s.observation}"
                for s in earlier) + "\n"
        grounding = ""
        if self.grounding == "context":
            passages = _grounding_passages(example, call)
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
        tokens = 0
        check = Check(code="observation_valid", ok=False, detail="no attempt")
        text = ""
        for attempt in range(self.retries + 1):
            [c] = await self.backend.chat(self.prompt(trace, tool, call, example),
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


# --------------------------------------------------------------------------------------------------
# Agents


def tools_block(tools: list[ToolSchema]) -> str:
    return "\n".join(json.dumps(t.openai()["function"], ensure_ascii=False) for t in tools)


def step_schema(tools: list[ToolSchema], final: bool) -> dict[str, Any]:
    """One AutoAgent turn: a thought and either a call (arguments under the tool's own schema) or an answer."""
    thought = {"type": "string", "maxLength": 400}
    answer = {"type": "object", "properties": {"thought": thought,
                                               "answer": {"type": "string", "minLength": 1, "maxLength": 100}},
              "required": ["thought", "answer"], "additionalProperties": False}
    if final:
        return answer
    calls = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.function.parameters},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    call = {"type": "object", "properties": {"thought": thought, "tool_call": {"anyOf": calls}},
            "required": ["thought", "tool_call"], "additionalProperties": False}
    return {"anyOf": [call, answer]}


class AutoAgent:
    """The synthesis agent: JSON-constrained turns. It never sees the gold answer."""

    def __init__(self, backend: Backend, seed: int = 0):
        self.backend, self.seed = backend, seed

    def messages(self, trace: Trace) -> list[dict]:
        msgs = [{"role": "system", "content": fill("autoagent", tools=tools_block(trace.tools))},
                {"role": "user", "content": f"Question: {trace.question}"}]
        for s in trace.steps:
            msgs.append({"role": "assistant", "content": s.raw or ""})
            if s.observation is not None:
                msgs.append({"role": "user", "content": f"Result of {s.call.name}: {s.observation}"})
        return msgs

    async def next_step(self, trace: Trace, final: bool) -> Step:
        schema = step_schema(trace.tools, final)
        [c] = await self.backend.chat(self.messages(trace),
                                      self.backend.params(json_schema=schema,
                                                          seed=trace.meta.get("seed", self.seed) + len(trace.steps)))
        return step_from_json(c)


# What an AutoAgent turn must be to count as parsed. The decoding schema is stricter (arguments under the
# tool's own schema); a server that does not enforce it may still send a well-shaped turn with bad
# arguments, which must reach the pre-check as `args_valid`, not be lost as a parse error.
LOOSE_STEP_SCHEMA = {"anyOf": [
    {"type": "object", "properties": {"thought": {"type": "string"}, "tool_call": {
        "type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}},
        "required": ["name"]}}, "required": ["tool_call"]},
    {"type": "object", "properties": {"thought": {"type": "string"}, "answer": {"type": "string"}},
     "required": ["answer"]}]}


def step_from_json(c: Completion) -> Step:
    c = attach_json(Completion(text=c.text, completion_tokens=c.completion_tokens), LOOSE_STEP_SCHEMA)
    if c.json_error is not None:
        return Step(raw=c.text, parse_error=f"bad_json: {c.json_error}", tokens=c.completion_tokens)
    obj = c.json
    if "answer" in obj and "tool_call" in obj:
        return Step(raw=c.text, parse_error="multiple_actions: both tool_call and answer",
                    tokens=c.completion_tokens)
    if "answer" in obj and not obj["answer"].strip():
        return Step(raw=c.text, parse_error="empty_answer: the answer is empty", tokens=c.completion_tokens)
    step = Step(thought=obj.get("thought", ""), raw=c.text, tokens=c.completion_tokens)
    if "answer" in obj:
        step.answer = obj["answer"].strip()
    else:
        tc = obj["tool_call"]
        step.call = ToolCall(name=tc["name"], arguments=tc.get("arguments") or {})
    return step


STOP_AFTER_ACTION = ("</tool_call>", "</answer>")


class PolicyAgent:
    """The policy: Hermes text through the chat template, with the tools in the system prompt."""

    def __init__(self, backend: Backend, seed: int = 0, tools_on: bool = True):
        self.backend, self.seed, self.tools_on = backend, seed, tools_on

    def system_prompt(self) -> str:
        return fill("policy" if self.tools_on else "policy-no-tools")

    async def next_step(self, trace: Trace, final: bool) -> Step:
        conv = trace.to_conversation()
        messages = conv["messages"]
        if final and self.tools_on:
            messages = messages + [{"role": "user", "content": "No more tool calls: give your final answer now."}]
        seed = trace.meta.get("seed", self.seed) + len(trace.steps)
        [c] = await self.backend.chat(messages, self.backend.params(stop=STOP_AFTER_ACTION, seed=seed),
                                      tools=conv["tools"] if self.tools_on else None)
        text = c.text
        # Stop strings are cut off by every backend; put the closing tag back so the turn reads whole.
        if "<tool_call>" in text and "</tool_call>" not in text and c.finish_reason == "stop":
            text += "</tool_call>"
        elif "<answer>" in text and "</answer>" not in text and c.finish_reason == "stop":
            text += "</answer>"
        parsed = parse_turn(text)
        return Step(thought=parsed.thought, call=parsed.call, answer=parsed.answer, raw=text,
                    parse_error=parsed.error, tokens=c.completion_tokens)


class ScriptedTeacher:
    """Builds a correct-by-construction trace from a record's supporting facts: search each supporting
    title in turn, then answer the gold answer. Needs the `search` utility tool and `supporting_facts`
    (HotpotQA, 2Wiki) or supporting paragraphs (MuSiQue with context)."""

    def __init__(self, example_by_id: dict[str, QAExample]):
        self.examples = example_by_id

    @staticmethod
    def titles(example: QAExample) -> list[str]:
        titles: list[str] = []
        for fact in example.supporting_facts or []:
            if isinstance(fact, (list, tuple)) and fact and fact[0] not in titles:
                titles.append(fact[0])
        if not titles:
            titles = [p["title"] for p in example.context or [] if p.get("is_supporting") and p.get("title")]
        return titles

    async def next_step(self, trace: Trace, final: bool) -> Step:
        ex = self.examples[trace.meta.get("question_id", trace.id)]
        titles = self.titles(ex)
        done = len(trace.steps)
        if not final and done < len(titles) and any(t.name == "search" for t in trace.tools):
            title = titles[done]
            thought = (f"I need to find out about {title} first." if done == 0
                       else f"Next I need the facts about {title}.")
            return Step(thought=thought, call=ToolCall(name="search", arguments={"query": title}))
        return Step(thought=f"From these results, the answer is {ex.answers[0]}.", answer=ex.answers[0])

