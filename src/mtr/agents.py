"""The agents of an episode. Each has one method, `async next_step(trace, final) -> Step`:

- `AutoAgent`: the synthesis agent; its turns are JSON-schema-constrained (`{"thought", "tool_call"}` or
  `{"thought", "answer"}`, with `arguments` constrained to the tool's own parameter schema).
- `PolicyAgent`: the policy being evaluated; writes Hermes text (`<think>`, `<tool_call>`, `<answer>`)
  through the chat template, parsed by `parse_turn`. (In GRPO, `mtr.rollout.RolloutAgent` plays it on
  token ids.)
- `ScriptedTeacher`: a deterministic agent that walks a record's supporting facts (DESIGN.md); it teaches
  the tiny CPU policy the trace grammar. Its traces are labelled `teacher: scripted`.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from mtr.backends import Backend, Completion, attach_json
from mtr.evidence import (entities, find_answer, observation_values, observed_text, supported,
                          valid_observation_steps)
from mtr.metrics import normalize_answer
from mtr.prompts import FINAL_NUDGE, fill
from mtr.trace import QAExample, Step, ToolCall, ToolSchema, Trace, parse_turn


class Agent(Protocol):
    async def next_step(self, trace: Trace, final: bool) -> Step: ...


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
    """The policy: Hermes text through the chat template, with the episode's tools (if any) in the system
    prompt."""

    def __init__(self, backend: Backend, seed: int = 0):
        self.backend, self.seed = backend, seed

    async def next_step(self, trace: Trace, final: bool) -> Step:
        conv = trace.to_conversation()
        messages = conv["messages"]
        if trace.nudge_due(final):
            messages = messages + [{"role": "user", "content": FINAL_NUDGE}]
        seed = trace.meta.get("seed", self.seed) + len(trace.steps)
        [c] = await self.backend.chat(messages, self.backend.params(stop=STOP_AFTER_ACTION, seed=seed),
                                      tools=conv["tools"] or None)
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
    """A deterministic teacher that reads its evidence: it searches the record's supporting titles (then the
    entities the question names), and answers only with what an observation of its own episode says: the
    gold answer or an alias as the observation writes it, its thought quoting the sentence it used. A yes/no
    answer, which no text contains, is given once every entity the question compares has been observed.
    When the budget runs out first it gives up ("unknown"), and the filter rejects the trace
    (`unsupported_answer`): it never states an answer it did not read. Needs the `search` utility tool and
    the record's supporting titles (`supporting_facts`, supporting paragraphs, or MuSiQue's metadata)."""

    name = "scripted"

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
        if not titles:
            titles = list((example.metadata or {}).get("supporting_titles") or [])
        return titles

    async def next_step(self, trace: Trace, final: bool) -> Step:
        ex = self.examples[trace.meta.get("question_id", trace.id)]
        gold = ex.answers[0]
        observed = observed_text(trace)
        if normalize_answer(gold) in ("yes", "no"):
            if supported(gold, ex.question, observed):
                quotes = [f'"{s}"' for s in evidence_sentences(trace, entities(ex.question))]
                return Step(thought=f"The results describe each of them: {' and '.join(quotes)} So the answer is "
                                    f"{gold}.", answer=gold)
        elif (found := find_answer(ex, trace)) is not None:
            span, sentence = found
            return Step(thought=f'The result says: "{sentence}" So the answer is {span}.', answer=span)
        searched = {normalize_answer(str(s.call.arguments.get("query", ""))) for s in trace.steps if s.call}
        queries = [q for q in self.titles(ex) + entities(ex.question) if normalize_answer(q) not in searched]
        if not final and queries and any(t.name == "search" for t in trace.tools):
            thought = (f"I need to find out about {queries[0]} first." if not trace.steps
                       else f"The results do not say it yet. Next I need the facts about {queries[0]}.")
            return Step(thought=thought, call=ToolCall(name="search", arguments={"query": queries[0]}))
        return Step(thought="The results do not say, and I cannot answer from them.", answer="unknown")


def evidence_sentences(trace: Trace, names: list[str]) -> list[str]:
    """For each name, the first sentence of the episode's observations that mentions it."""
    sentences = [sent for step in valid_observation_steps(trace) for value in observation_values(step.observation)
                 for sent in value.split(". ")]
    out = []
    for name in names:
        # a sentence about the name, not a title that is only the name
        hit = next((x.strip() for x in sentences if f" {name} " in f" {normalize_answer(x)} "
                    and len(x.split()) > len(name.split()) + 1), None)
        if hit and hit not in out:
            out.append(hit.rstrip(".") + ".")
    return out
