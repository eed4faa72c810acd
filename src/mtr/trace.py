"""The trace format: typed records for QA examples, tools, calls, steps and whole episodes.

A `Trace` converts losslessly to and from the conversational format that `datasets` and TRL read
(`messages` with assistant `tool_calls` and `tool` messages, plus a `tools` column). In model text an
assistant turn is

    <think>
    reasoning
    </think>
    <tool_call>
    {"name": "search", "arguments": {"query": "..."}}
    </tool_call>

or `<think>...</think>` followed by `<answer>...</answer>`: the Hermes tool-call convention, so the same
traces parse in verl (`format=hermes`) and under Qwen-family templates. `parse_turn` reads such text back
and never raises: garbage becomes a `ParsedTurn` with an `error` that later stages count as malformed.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mtr.prompts import FINAL_NUDGE


class QAExample(BaseModel):
    """One question with its gold answers (`answers[0]` is the official one, the rest aliases)."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answers: list[str] = Field(min_length=1)
    context: list[dict[str, Any]] | None = None
    supporting_facts: list[Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("question")
    @classmethod
    def _question_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question is blank")
        return v

    @field_validator("answers")
    @classmethod
    def _answers_not_blank(cls, v: list[str]) -> list[str]:
        if not any(a.strip() for a in v):
            raise ValueError("answers are all blank")
        return v


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSchema(BaseModel):
    """An OpenAI function tool, plus `returns`: the JSON Schema the ToolActor's observation must satisfy.

    `returns` is ours, not OpenAI's; `openai()` drops it for servers that reject unknown keys.
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: FunctionSpec
    returns: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.function.name

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": self.function.model_dump()}

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ToolCall(BaseModel):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    def canonical_key(self) -> str:
        """Identity of a call for memoisation: the name plus arguments with sorted keys."""
        return self.name + ":" + json.dumps(self.arguments, sort_keys=True, ensure_ascii=False)

    def hermes(self) -> str:
        return "<tool_call>\n" + json.dumps({"name": self.name, "arguments": self.arguments},
                                            ensure_ascii=False) + "\n</tool_call>"


class Check(BaseModel):
    """One validation check V on a step; `code` is machine-readable (see mtr.validate)."""

    code: str
    ok: bool
    detail: str = ""


class Step(BaseModel):
    """One assistant turn: a thought, then a tool call (with its observation) or a final answer."""

    thought: str = ""
    call: ToolCall | None = None
    observation: str | None = None
    answer: str | None = None
    raw: str | None = None  # the model's own text for this turn, when it came from a model
    player: str | None = None  # who answered the call: `toolactor` (simulated) or `live:<retriever>`
    parse_error: str | None = None
    checks: list[Check] = Field(default_factory=list)
    tokens: int = 0
    # The environment asked for the final answer before this turn (the call budget was spent): the agent saw
    # FINAL_NUDGE as a user message, so the conversation (and the SFT data made from it) shows it too. Left
    # out, the policy met at evaluation a message its training never showed it, and stopped after its thought.
    nudged: bool = False

    @property
    def ok(self) -> bool:
        return self.parse_error is None and all(c.ok for c in self.checks)

    def assistant_content(self) -> str:
        if self.parse_error is not None and self.raw is not None:
            return self.raw
        parts = [f"<think>\n{self.thought}\n</think>"] if self.thought else []
        if self.answer is not None:
            parts.append(f"<answer>{self.answer}</answer>")
        return "\n".join(parts)

    def text(self) -> str:
        """The assistant turn as model text (what a policy would generate for it)."""
        content = self.assistant_content()
        if self.call is None:
            return content
        return (content + "\n" if content else "") + self.call.hermes()


class Trace(BaseModel):
    """One episode: the question, the tools, every step with its checks, and where it came from."""

    id: str
    question: str
    answers: list[str] = Field(default_factory=list)
    system: str = ""
    tools: list[ToolSchema] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)
    error: str | None = None  # an episode-level failure, e.g. the ToolMaker gave up
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def final_answer(self) -> str | None:
        for step in reversed(self.steps):
            if step.answer is not None:
                return step.answer
        return None

    @property
    def calls(self) -> list[ToolCall]:
        return [s.call for s in self.steps if s.call is not None]

    def nudge_due(self, final: bool) -> bool:
        """Whether the agent's next turn follows FINAL_NUDGE: it is the last turn (`final`) after the call
        budget was spent on earlier turns, in an episode with tools. The one rule the Environment (which marks
        `Step.nudged`) and every agent that shows the request (PolicyAgent, RolloutAgent) follow."""
        return final and bool(self.steps) and bool(self.tools)

    def to_conversation(self, for_storage: bool = False) -> dict[str, Any]:
        """The conversational view: `{"messages": [...], "tools": [...]}` as TRL and `datasets` read it.

        `for_storage=True` (what sft.jsonl holds) writes each call's `arguments` and the `tools` column as
        JSON strings, as OpenAI's format does for arguments and TRL accepts for tools. Otherwise Arrow would
        unify the differing keys of every row into one struct and fill the missing ones with null, which the
        chat template would then render into the training text.
        """
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.question})
        for step in self.steps:
            if step.nudged:
                messages.append({"role": "user", "content": FINAL_NUDGE})
            msg: dict[str, Any] = {"role": "assistant", "content": step.assistant_content()}
            if step.call is not None:
                args: Any = step.call.arguments
                if for_storage:
                    args = json.dumps(args, ensure_ascii=False)  # the same text the template's tojson writes
                msg["tool_calls"] = [{"type": "function", "id": step.call.id,
                                      "function": {"name": step.call.name, "arguments": args}}]
            messages.append(msg)
            if step.call is not None and step.observation is not None:
                messages.append({"role": "tool", "tool_call_id": step.call.id, "name": step.call.name,
                                 "content": step.observation})
        tools = self.policy_tools()
        return {"messages": messages, "tools": json.dumps(tools, ensure_ascii=False) if for_storage else tools}

    def policy_tools(self) -> list[dict[str, Any]]:
        """The tools as the policy sees them: OpenAI function schemas. `returns` is the ToolActor's contract;
        left in, it made up ~40% of the policy's prompt, paid again in every SFT and GRPO forward pass."""
        return [t.openai() for t in self.tools]

    @classmethod
    def from_conversation(cls, conversation: dict[str, Any], id: str = "", answers: list[str] | None = None,
                          meta: dict[str, Any] | None = None) -> "Trace":
        messages = conversation["messages"]
        system = ""
        i = 0
        if messages and messages[0]["role"] == "system":
            system, i = messages[0]["content"], 1
        if i >= len(messages) or messages[i]["role"] != "user":
            raise ValueError("conversation has no user message after the system message")
        question = messages[i]["content"]
        steps: list[Step] = []
        nudged = False
        for msg in messages[i + 1:]:
            if msg["role"] == "user" and steps:  # the environment's request for the final answer
                nudged = True
            elif msg["role"] == "assistant":
                parsed = parse_turn(msg.get("content") or "", allow_empty=bool(msg.get("tool_calls")))
                step = Step(thought=parsed.thought, answer=parsed.answer, raw=None,
                            parse_error=parsed.error if not msg.get("tool_calls") else None, nudged=nudged)
                nudged = False
                if step.parse_error:
                    step.raw = msg.get("content") or ""
                for tc in msg.get("tool_calls") or []:
                    fn = tc.get("function", tc)
                    args = fn.get("arguments") or {}
                    if isinstance(args, str):
                        args = json.loads(args)
                    step.call = ToolCall(id=tc.get("id") or ToolCall.model_fields["id"].default_factory(),
                                         name=fn["name"], arguments=args)
                steps.append(step)
            elif msg["role"] == "tool":
                if not steps or steps[-1].call is None:
                    raise ValueError("tool message without a preceding tool call")
                steps[-1].observation = msg["content"]
            else:
                raise ValueError(f"unexpected role {msg['role']!r} after the question")
        raw_tools = conversation.get("tools") or []
        if isinstance(raw_tools, str):
            raw_tools = json.loads(raw_tools)
        tools = [ToolSchema.model_validate(_drop_nones(t)) for t in raw_tools]
        return cls(id=id, question=question, answers=answers or [], system=system, tools=tools, steps=steps,
                   meta=meta or {})


def _drop_nones(value: Any) -> Any:
    """Undo Arrow's struct unification: `datasets` fills keys missing in one row with None."""
    if isinstance(value, dict):
        return {k: _drop_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nones(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------
# Parsing model text


class ParsedTurn(BaseModel):
    thought: str = ""
    call: ToolCall | None = None
    answer: str | None = None
    error: str | None = None  # a machine-readable code, then ": " and a human detail


_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S)
_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)


def parse_turn(text: str, allow_empty: bool = False) -> ParsedTurn:
    """Parse one assistant turn. Never raises; problems come back as `error` codes:

    `empty`, `no_action` (neither a tool call nor an answer), `multiple_actions`, `bad_json`,
    `bad_call` (JSON that is not `{"name": str, "arguments": object}`), `empty_answer`.
    A missing closing tag at the very end is accepted, since stop strings often cut it off.
    """
    if not isinstance(text, str):
        return ParsedTurn(error=f"empty: not text ({type(text).__name__})")
    text = text.replace("<|im_end|>", "").strip()
    thought_m = _THINK.search(text)
    thought = thought_m.group(1).strip() if thought_m else ""
    calls = _CALL.findall(text)
    answers = _ANSWER.findall(text)
    if not text:
        return ParsedTurn(error="empty: the model wrote nothing")
    if len(calls) + len(answers) == 0:
        if allow_empty:
            return ParsedTurn(thought=thought)
        return ParsedTurn(thought=thought, error="no_action: neither <tool_call> nor <answer> found")
    if len(calls) + len(answers) > 1:
        return ParsedTurn(thought=thought, error=f"multiple_actions: {len(calls)} tool calls and "
                                                 f"{len(answers)} answers in one turn")
    if answers:
        answer = answers[0].strip()
        if not answer:
            return ParsedTurn(thought=thought, error="empty_answer: <answer> is empty")
        return ParsedTurn(thought=thought, answer=answer)
    body = calls[0].strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ParsedTurn(thought=thought, error=f"bad_json: {e.msg} at char {e.pos} in {body[:80]!r}")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ParsedTurn(thought=thought, error='bad_call: expected {"name": str, "arguments": object}')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write OpenAI's string-encoded arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return ParsedTurn(thought=thought, error="bad_call: arguments is a string that is not JSON")
    if not isinstance(args, dict):
        return ParsedTurn(thought=thought, error="bad_call: arguments is not an object")
    return ParsedTurn(thought=thought, call=ToolCall(name=obj["name"], arguments=args))
