"""The Environment: everything an episode runs against, built once from the config and used by every stage.

As in `verifiers`, an Environment owns the world and the rules, and any agent can act in it: the scripted
teacher or the AutoAgent in synthesis, the policy in evaluation, the policy on token ids in a GRPO group.
It owns
- the tools of each question (the ToolMaker's, through a `ToolStore`, beside the utility tools),
- the player of those tools (the ToolActor),
- the policy's system prompt and the call budget,
- the validation checks V that gate every step.

    env = Environment.from_config(cfg, "eval", pool, tools_path=Path("run/tools/bamboogle.jsonl"))
    trace = await env.rollout(example, PolicyAgent(pool.get("policy")), seed=0)

An episode is a ReAct loop: at most `max_tool_calls` tool calls, then the agent must answer. A turn that
does not parse ends the episode (counted as malformed). A call that fails the pre-check (`tool_exists`,
`args_valid`) never reaches the ToolActor: the agent sees a validation-error observation instead. A backend
failure (timeout, unreachable server) ends the episode with `trace.error` set and the episode marked
retryable; nothing raises.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Sequence

from mtr.agents import Agent
from mtr.backends import BackendError
from mtr.prompts import fill
from mtr.toolactor import ToolActor
from mtr.toolmaker import ToolStore
from mtr.trace import Check, QAExample, ToolSchema, Trace
from mtr.validate import check_answer, validate_call, validation_error_observation


class Environment:
    def __init__(self, store: ToolStore | None, actor: ToolActor | None, max_tool_calls: int,
                 system: str | None = None, evaluation: bool = False):
        self.store, self.actor, self.max_tool_calls = store, actor, max_tool_calls
        self.tools_on = store is not None and actor is not None and max_tool_calls > 0
        self.system = system if system is not None else fill("policy" if self.tools_on else "policy-no-tools")
        self.evaluation = evaluation  # a question the ToolMaker failed on still runs, with the utility tools

    @classmethod
    def from_config(cls, cfg: Any, stage: str, pool: Any, tools_path: Path | None = None,
                    tools_on: bool = True) -> "Environment":
        """The environment of `stage` (synth, grpo or eval): its call budget and ToolActor settings, the
        `tools` section's ToolMaker, and the tools already made in `tools_path` (new ones are added there)."""
        section = getattr(cfg, stage)
        if not tools_on:
            return cls(None, None, 0, evaluation=stage == "eval")
        store = ToolStore.from_config(cfg, pool, tools_path)
        actor = ToolActor(pool.get("toolactor"), grounding=section.grounding, retries=section.actor_retries)
        return cls(store, actor, section.max_tool_calls, evaluation=stage == "eval")

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    async def rollout(self, example: QAExample, agent: Agent, episode_id: str | None = None, seed: int = 0,
                      meta: dict | None = None) -> Trace:
        """One episode of `agent` on `example`, with the question's tools (from the store)."""
        meta = {"seed": seed, **(meta or {})}
        episode_id = episode_id or example.id
        tools: list[ToolSchema] = []
        if self.tools_on:
            made = await self.store.get(example)
            meta.update(domain=made.domain, toolmaker_attempts=made.attempts, toolmaker_tokens=made.tokens,
                        toolmaker_rejections=made.rejections)
            usable = self.store.usable(made, self.evaluation)
            if usable is None:  # skipped, or the ToolMaker's server failed (then a resume runs it again)
                return Trace(id=episode_id, question=example.question, answers=example.answers, system=self.system,
                             error=made.error, meta={**meta, **({"retryable": True} if made.retryable else {})})
            if made.error is not None:
                meta["toolmaker_error"] = made.error
            tools = usable
        return await self._loop(example, episode_id, tools, agent, seed, meta)

    async def rollout_group(self, examples: Sequence[QAExample], agent: Agent, seeds: Sequence[int],
                            ids: Sequence[str] | None = None, meta: dict | None = None) -> list[Trace]:
        """Episodes that run together (a GRPO group, the rollouts of a step). An agent that batches them in
        lockstep is told (`episode_ended`) when each one ends, so its next batch stops waiting for it."""
        ended = getattr(agent, "episode_ended", None)

        async def one(i: int, ex: QAExample) -> Trace:
            try:
                return await self.rollout(ex, agent, ids[i] if ids else f"{ex.id}#{i}", seeds[i], meta)
            finally:
                if ended is not None:
                    ended()

        return list(await asyncio.gather(*[one(i, ex) for i, ex in enumerate(examples)]))

    async def _loop(self, example: QAExample, episode_id: str, tools: list[ToolSchema], agent: Agent, seed: int,
                    meta: dict) -> Trace:
        trace = Trace(id=episode_id, question=example.question, answers=example.answers, system=self.system,
                      tools=tools, meta=meta)
        memo: dict[str, str] = {}
        by_name = {t.name: t for t in tools}
        budget = self.max_tool_calls if self.tools_on else 0
        agent_tokens = actor_tokens = 0
        role = "agent"
        try:
            for i in range(budget + 1):
                role = "agent"
                step = await agent.next_step(trace, final=(i == budget))
                agent_tokens += step.tokens
                trace.steps.append(step)
                if step.parse_error is not None:
                    step.checks.append(Check(code="parse_ok", ok=False, detail=step.parse_error))
                    break
                step.checks.append(Check(code="parse_ok", ok=True))
                if step.answer is not None:
                    step.checks.append(check_answer(step.answer))
                    break
                if step.call is None:  # defensive: a parsed turn has one or the other
                    step.checks.append(Check(code="parse_ok", ok=False, detail="no action"))
                    break
                if i == budget:
                    step.checks.append(Check(code="step_budget", ok=False,
                                             detail=f"a tool call after the budget of {budget} calls"))
                    break
                checks = validate_call(step.call, tools)
                step.checks.extend(checks)
                if not all(c.ok for c in checks):
                    step.observation = validation_error_observation(checks)
                    continue
                role = "toolactor"
                obs, obs_check, tokens = await self.actor.observe(trace, by_name[step.call.name], step.call, memo,
                                                                  example=example, seed=seed + i)
                actor_tokens += tokens
                step.observation = obs
                step.checks.append(obs_check)
        except BackendError as e:
            trace.error = f"{role}: {e}"
            trace.meta["retryable"] = True  # a resume runs this episode again
        if trace.error is None and trace.final_answer is None and trace.steps and trace.steps[-1].parse_error is None:
            trace.steps[-1].checks.append(Check(code="answer_present", ok=False, detail="no final answer"))
        trace.meta.update(agent_tokens=agent_tokens, actor_tokens=actor_tokens, calls=len(trace.calls))
        return trace
