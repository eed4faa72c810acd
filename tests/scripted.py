"""A scripted backend for orchestration tests: it answers each role by rules, through the same Backend
interface (and the same JSON parsing/validation) as the real ones."""

from __future__ import annotations

import asyncio
import json
import time

from mtr.backends import Backend, Completion, LocalBackend, attach_json
from mtr.config import RoleConfig

GOOD_TOOLS = {"domain": "history", "tools": [{
    "name": "get_founding_year", "description": "Looks up the year an institution was founded.",
    "arguments": [{"name": "institution", "type": "string", "description": "its name"}],
    "returns": [{"name": "year", "type": "integer", "description": "founding year"}]}]}


class ScriptedBackend(Backend):
    kind = "scripted"

    def __init__(self, toolmaker=None, agent=None, actor=None, delay: float = 0.0):
        super().__init__(RoleConfig())
        self.toolmaker = toolmaker or (lambda msgs: json.dumps(GOOD_TOOLS))
        self.agent = agent or default_agent
        self.actor = actor or (lambda msgs: json.dumps({"results": [{"title": "T", "text": "It was 1755."}]}))
        self.delay = delay
        self.calls = {"toolmaker": 0, "agent": 0, "actor": 0}
        self.prompts: list[list[dict]] = []

    def describe(self) -> str:
        return "scripted"

    async def generate(self, conversations, params, tools=None):
        out = []
        for msgs in conversations:
            self.prompts.append(msgs)
            text_all = " ".join(m.get("content") or "" for m in msgs)
            if "You design tools" in text_all:
                role, fn = "toolmaker", self.toolmaker
            elif "You are simulating the tool" in text_all:
                role, fn = "actor", self.actor
            else:
                role, fn = "agent", self.agent
            self.calls[role] += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            row = []
            for _ in range(params.n):
                text = fn(msgs)
                if isinstance(text, Exception):
                    raise text
                row.append(attach_json(Completion(text=text, completion_tokens=len(text.split())),
                                       params.json_schema))
            out.append(row)
        return out


class ScriptedLocal(LocalBackend):
    """The scripted answers through a local backend's batcher, without a model: a prompt is its messages as
    JSON, and a batch takes a moment on the worker thread, as a model's would. `lockstep_seen` records, for each
    batch, how many requests the batcher waited for (None: cut as they came)."""

    kind = "scripted-local"

    def __init__(self, **scripted):
        super().__init__(RoleConfig(batch_size=16))
        self.scripted = ScriptedBackend(**scripted)
        self.lockstep_seen: list[int | None] = []

    def load(self):
        pass

    def render(self, messages, tools=None):
        return json.dumps(messages)

    def _run_batch(self, requests):
        expected = self._batcher.expected
        self.lockstep_seen.append(expected() if expected else None)
        time.sleep(0.02)
        return [asyncio.run(self.scripted.chat(json.loads(r.prompt), r.params))[0] for r in requests]


def default_agent(msgs):
    """Search the question once, then answer 1755."""
    n_results = sum(1 for m in msgs if m["role"] == "user" and m["content"].startswith("Result of"))
    if n_results == 0:
        return json.dumps({"thought": "search first", "tool_call": {"name": "search", "arguments": {"query": "MSU"}}})
    return json.dumps({"thought": "found it", "answer": "1755"})


class Pool:
    """Stands in for BackendPool: one scripted backend for every role."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def get(self, role):
        return self.backend

    def backends(self):
        return [self.backend]

    async def aclose(self):
        pass


def qa_file(path, n=3, **extra):
    with open(path, "w") as f:
        for i in range(n):
            rec = {"id": f"q{i}", "question": f"In what year was university {i} founded?", "answers": ["1755"]}
            rec.update(extra)
            f.write(json.dumps(rec) + "\n")
    return path


def scripted_env(examples, actor_backend=None, max_tool_calls=3, tools=None, system=None):
    """An Environment whose questions already have their tools (the `search` utility by default) and whose
    ToolActor is scripted."""
    from mtr.env import Environment
    from mtr.toolactor import ToolActor
    from mtr.toolmaker import QuestionTools, ToolStore, utility_tools

    store = ToolStore(None)
    for ex in examples:
        store.made[ex.id] = QuestionTools(id=ex.id, tools=tools if tools is not None else utility_tools(["search"]))
    return Environment(store, ToolActor(actor_backend or ScriptedBackend()), max_tool_calls, system=system)
