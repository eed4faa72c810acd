"""The Environment: everything an episode runs against, built once from the config and used by every stage.

As in `verifiers`, an Environment owns the world and the rules, and any agent can act in it: the scripted
teacher or the AutoAgent in synthesis, the policy in evaluation, the policy on token ids in a GRPO group.
It owns
- the tools of each question (the ToolMaker's, through a `ToolStore`, beside the utility tools),
- the players of those tools: the ToolActor (simulated), and live backends for the tools that have one
  (`search`, answered by a retriever), by the tool mode: `simulated`, `live` (only the tools a real backend
  plays are offered), `hybrid` (`search` live, the ToolMaker's tools simulated), or a share of episodes
  played hybrid (`live_share`); every step records which player answered it,
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
import hashlib
import random
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from mtr.agents import Agent
from mtr.backends import BackendError
from mtr.prompts import fill
from mtr.livetools import LIVE_TOOLS, live_players
from mtr.retrieval import Retriever, make_retriever
from mtr.toolactor import ToolActor
from mtr.toolmaker import ToolStore, utility_tools
from mtr.trace import Check, QAExample, ToolCall, ToolSchema, Trace
from mtr.validate import check_answer, validate_call, validation_error_observation


class World:
    """What the tools answer in one world: each call's observation, made once. An episode has its own world;
    the rollouts of a GRPO group share one (the same question in the same step), so the same call returns the
    same observation in every rollout and what differs inside a group is the policy's doing, not the
    simulator's sampling. In a shared world an observation depends on the question and the call alone (its
    seed comes from the call; the player does not see the episode's history)."""

    def __init__(self, seed: int, shared: bool = False):
        self.seed, self.shared = seed, shared
        self.calls: dict[str, asyncio.Future] = {}

    async def observe(self, player: Any, trace: Trace, tool: ToolSchema, call: ToolCall, example: QAExample,
                      turn: int) -> tuple[str, Check, int]:
        key = call.canonical_key()
        if key in self.calls:
            text, check = await asyncio.shield(self.calls[key])
            return text, Check(code=check.code, ok=check.ok, detail="memoised"), 0
        future = asyncio.get_running_loop().create_future()
        self.calls[key] = future
        seed = self.seed + int(hashlib.sha1(key.encode()).hexdigest()[:6], 16) if self.shared else self.seed + turn
        seen = Trace(id=trace.id, question=trace.question) if self.shared else trace
        try:
            text, check, tokens = await player.observe(seen, tool, call, {}, example=example, seed=seed)
        except BaseException as e:
            del self.calls[key]
            future.set_exception(e)
            future.exception()  # retrieved: the waiters re-raise it, nobody else needs to
            raise
        future.set_result((text, check))
        if not check.ok:  # a failed observation is not the world's answer: the next call tries again
            del self.calls[key]
        return text, check, tokens


class Environment:
    def __init__(self, store: ToolStore | None, actor: ToolActor | None, max_tool_calls: int,
                 system: str | None = None, evaluation: bool = False, mode: str = "simulated",
                 live: dict[str, Any] | None = None, live_share: float = 0.0, hybrid_actor: ToolActor | None = None,
                 precheck: bool = True):
        self.store, self.actor, self.max_tool_calls, self.precheck = store, actor, max_tool_calls, precheck
        self.tools_on = store is not None and actor is not None and max_tool_calls > 0 and mode != "off"
        self.system = system if system is not None else fill("policy" if self.tools_on else "policy-no-tools")
        self.evaluation = evaluation  # a question the ToolMaker failed on still runs, with the utility tools
        self.mode, self.live, self.live_share = mode, live or {}, live_share
        if (mode in ("live", "hybrid") or live_share > 0) and not self.live:
            raise ValueError(f"tool mode {mode} (live share {live_share}) needs a live player for `search`")
        # in hybrid episodes the ToolMaker's tools are simulated grounded in retrieval
        self.hybrid_actor = hybrid_actor or actor

    @classmethod
    def from_config(cls, cfg: Any, stage: str, pool: Any, tools_path: Path | None = None,
                    tools_on: bool = True, mode: str | None = None, store: ToolStore | None = None) -> "Environment":
        """The environment of `stage` (synth, grpo or eval): its tool mode, call budget and ToolActor settings,
        the `tools` section's ToolMaker, the tools already made in `tools_path` (new ones are added there) or
        the `store` given (environments that share one play the same tools of a question, made once), and
        the retriever where its episodes use one."""
        section = getattr(cfg, stage)
        mode = mode or section.tool_mode
        if not tools_on or mode == "off":
            return cls(None, None, 0, evaluation=stage == "eval", mode="off")
        # `mode` may ask for live tools where the section's own episodes use none
        uses = section.uses_retriever() or mode in ("live", "hybrid")
        retriever = shared_retriever(cfg.retriever) if uses else None
        r = cfg.retriever

        def actor(grounding: str) -> ToolActor:
            return ToolActor(pool.get("toolactor"), grounding=grounding, retries=section.actor_retries,
                             retriever=retriever, max_chars=r.max_chars)

        live = live_players(retriever, r.top_k, r.max_chars) if retriever is not None else {}
        store = store or ToolStore.from_config(cfg, pool, tools_path)
        return cls(store, actor(section.grounding), section.max_tool_calls,
                   evaluation=stage == "eval", mode=mode, live=live,
                   live_share=section.live_share if mode == "simulated" else 0.0,
                   hybrid_actor=actor("retrieval") if retriever is not None else None, precheck=section.precheck)

    @property
    def plays_made_tools(self) -> bool:
        """Whether its episodes play the ToolMaker's tools (from the store): live episodes get the utility
        tools a real backend plays, and need no ToolMaker (`rollout`)."""
        return self.tools_on and self.mode != "live"

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def episode_mode(self, example: QAExample, world: int) -> str:
        """The mode of one episode: the environment's, or with a live share, hybrid for that share of worlds
        (a question and a seed: the episodes of one GRPO group share theirs)."""
        if self.mode == "simulated" and self.live_share > 0:
            draw = random.Random(f"{example.id}|{world}").random()
            return "hybrid" if draw < self.live_share else "simulated"
        return self.mode

    async def rollout(self, example: QAExample, agent: Agent, episode_id: str | None = None, seed: int = 0,
                      meta: dict | None = None, world: World | None = None) -> Trace:
        """One episode of `agent` on `example`, with the question's tools (from the store), in its own world
        unless it is given one to share."""
        meta = {"seed": seed, **(meta or {})}
        world = world or World(seed)
        episode_id = episode_id or example.id
        tools: list[ToolSchema] = []
        players: dict[str, Any] = {}
        if self.tools_on:
            mode = meta["tool_mode"] = self.episode_mode(example, world.seed)
            if mode == "live":  # only the tools a real backend plays: no ToolMaker needed
                configured = [t.name for t in self.store.toolmaker.utilities] if self.store.toolmaker else LIVE_TOOLS
                tools = [t for t in utility_tools([n for n in LIVE_TOOLS if n in configured]) if t.name in self.live]
            else:
                made = await self.store.get(example)
                meta.update(domain=made.domain, toolmaker_attempts=made.attempts, toolmaker_tokens=made.tokens,
                            toolmaker_rejections=made.rejections)
                usable = self.store.usable(made, self.evaluation)
                if usable is None:  # skipped, or the ToolMaker's server failed (then a resume runs it again)
                    return Trace(id=episode_id, question=example.question, answers=example.answers,
                                 system=self.system, error=made.error,
                                 meta={**meta, **({"retryable": True} if made.retryable else {})})
                if made.error is not None:
                    meta["toolmaker_error"] = made.error
                tools = usable
            actor = self.hybrid_actor if mode == "hybrid" else self.actor
            players = {t.name: self.live[t.name] if mode != "simulated" and t.name in self.live else actor
                       for t in tools}
        return await self._loop(example, episode_id, tools, players, agent, world, meta)

    async def rollout_group(self, examples: Sequence[QAExample], agent: Agent, seeds: Sequence[int],
                            ids: Sequence[str] | None = None, meta: dict | None = None,
                            worlds: Sequence[int] | None = None) -> list[Trace]:
        """Episodes that run together (a GRPO group, the rollouts of a step). An agent that batches them in
        lockstep is told (`episode_ended`) when each one ends, so its next batch stops waiting for it.
        With `worlds` (one seed per episode), the episodes of the same question and world seed share one world:
        the same observation for the same call, the same tool mode."""
        ended = getattr(agent, "episode_ended", None)
        shared: dict[tuple[str, int], World] = {}
        if worlds:
            for ex, w in zip(examples, worlds):
                shared.setdefault((ex.id, w), World(w, shared=True))

        async def one(i: int, ex: QAExample) -> Trace:
            try:
                return await self.rollout(ex, agent, ids[i] if ids else f"{ex.id}#{i}", seeds[i], meta,
                                          world=shared.get((ex.id, worlds[i])) if worlds else None)
            finally:
                if ended is not None:
                    ended()

        return list(await asyncio.gather(*[one(i, ex) for i, ex in enumerate(examples)]))

    async def _loop(self, example: QAExample, episode_id: str, tools: list[ToolSchema], players: dict[str, Any],
                    agent: Agent, world: World, meta: dict) -> Trace:
        trace = Trace(id=episode_id, question=example.question, answers=example.answers, system=self.system,
                      tools=tools, meta=meta)
        by_name = {t.name: t for t in tools}
        budget = self.max_tool_calls if self.tools_on else 0
        agent_tokens = actor_tokens = invalid_args = 0
        role = "agent"
        try:
            for i in range(budget + 1):
                role = "agent"
                final = i == budget
                nudged = trace.nudge_due(final)  # before the step joins the trace: as the agent saw it
                step = await agent.next_step(trace, final)
                step.nudged = nudged
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
                invalid = not all(c.ok for c in checks)
                # counted whatever the pre-check: the episode is the same with it on or off where this stays 0
                invalid_args += invalid and step.call.name in by_name
                # the pre-check: an invalid call gets the validation error instead of an observation (with the
                # pre-check off, an existing tool plays even invalid arguments: the paper's ablation)
                if invalid and (self.precheck or step.call.name not in by_name):
                    step.observation = validation_error_observation(checks)
                    continue
                player = players[step.call.name]
                role = player.name
                obs, obs_check, tokens = await world.observe(player, trace, by_name[step.call.name], step.call,
                                                             example, i)
                actor_tokens += tokens
                step.observation, step.player = obs, player.name
                step.checks.append(obs_check)
        except BackendError as e:
            trace.error = f"{role}: {e}"
            trace.meta["retryable"] = True  # a resume runs this episode again
        if trace.error is None and trace.final_answer is None and trace.steps and trace.steps[-1].parse_error is None:
            trace.steps[-1].checks.append(Check(code="answer_present", ok=False, detail="no final answer"))
        trace.meta.update(agent_tokens=agent_tokens, actor_tokens=actor_tokens, calls=len(trace.calls),
                          invalid_args=invalid_args)
        return trace


@lru_cache(maxsize=4)
def _retriever(settings: str) -> Retriever:
    from mtr.config import RetrieverConfig

    return make_retriever(RetrieverConfig.model_validate_json(settings))


def shared_retriever(rc: Any) -> Retriever:
    """One retriever per setting in a process: an index is loaded once for every stage and mode."""
    return _retriever(rc.model_dump_json())
