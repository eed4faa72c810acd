"""The one episode loop (ReAct with validation checks V and a simulated tool). Synthesis, GRPO rollouts and
evaluation all run it; they differ only in who plays the agent and what is done with the episode."""

from __future__ import annotations

from typing import Protocol

from mtr.backends import BackendError
from mtr.roles import ToolActor
from mtr.trace import Check, QAExample, Step, ToolSchema, Trace
from mtr.validate import check_answer, validate_call, validation_error_observation


class Agent(Protocol):
    async def next_step(self, trace: Trace, final: bool) -> Step: ...


async def run_episode(example: QAExample, episode_id: str, tools: list[ToolSchema], agent: Agent,
                      actor: ToolActor | None, system: str, max_steps: int = 4, seed: int = 0,
                      meta: dict | None = None) -> Trace:
    """Run one episode: at most `max_steps` tool calls, then the agent must answer.

    A turn that does not parse ends the episode (counted as malformed). A call that fails the pre-check
    never reaches the ToolActor: the agent sees a validation-error observation instead. A backend failure
    (timeout, unreachable server) ends the episode with `trace.error` set; nothing raises.
    """
    trace = Trace(id=episode_id, question=example.question, answers=example.answers, system=system,
                  tools=tools, meta=dict(meta or {}))
    memo: dict[str, str] = {}
    by_name = {t.name: t for t in tools}
    agent_tokens = actor_tokens = 0
    role = "agent"
    try:
        for i in range(max_steps + 1):
            role = "agent"
            step = await agent.next_step(trace, final=(i == max_steps))
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
            if i == max_steps:
                step.checks.append(Check(code="step_budget", ok=False,
                                         detail=f"a tool call after the budget of {max_steps} calls"))
                break
            checks = validate_call(step.call, tools)
            step.checks.extend(checks)
            if not all(c.ok for c in checks) or actor is None:
                step.observation = validation_error_observation(checks) if actor is not None else None
                continue
            role = "toolactor"
            obs, obs_check, tokens = await actor.observe(trace, by_name[step.call.name], step.call, memo,
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


def malformed_steps(trace: Trace) -> int:
    """Steps that failed to parse or failed a check (call, arguments, observation, budget)."""
    return sum(1 for s in trace.steps if not s.ok)
