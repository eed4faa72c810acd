"""The composite trace reward of Stage 2: each component a separate function, weighted in the config.

All components score one episode (`Trace`):

- answer       EM (1/0) or token F1 of the final answer against the gold answers (`answer_metric`).
- format       the share of well-formed turns: a turn is well-formed if it parsed and its call (if any) passed
               the pre-check (`tool_exists`, `args_valid`) within the call budget; an episode without a
               non-empty final answer counts one more, missing, turn. So 1 exactly when every turn parsed,
               every call validated and the episode answered, and a partly well-formed episode scores
               between 0 and 1 (an all-or-nothing score left most groups of a 135M policy without any
               difference to learn from: docs/grpo.md). An episode cut short by a tool failure scores 0.
- consistency  1 if (a) the final answer is *supported*: its normalised tokens all occur in the normalised
               text of the episode's valid observations (calls that passed every check, observations that
               are well-formed), and (b) no two valid observations of the same call (same tool, same
               canonicalised arguments) differ; else 0. An episode without answer or without valid
               observations scores 0.
- efficiency   a penalty: -`call_penalty` for each call beyond `call_budget`, and -1 for no final answer.

The MTR paper names correctness, consistency and an efficiency term but gives no formula or weights;
these definitions and the default weights (config `grpo.reward_weights`) are our choice (docs/grpo.md).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from mtr.metrics import exact_match, f1_score, normalize_answer
from mtr.trace import Step, Trace

PRECHECK = ("tool_exists", "args_valid", "step_budget")


def answer_reward(trace: Trace, metric: str = "em") -> float:
    pred = trace.final_answer
    return exact_match(pred, trace.answers) if metric == "em" else f1_score(pred, trace.answers)


def well_formed(step: Step) -> bool:
    return step.parse_error is None and not any(c.code in PRECHECK and not c.ok for c in step.checks)


def format_reward(trace: Trace) -> float:
    if trace.error is not None or not trace.steps:
        return 0.0
    answer = trace.final_answer
    missing = 0 if answer is not None and answer.strip() else 1
    return sum(1 for s in trace.steps if well_formed(s)) / (len(trace.steps) + missing)


def _valid_observations(trace: Trace) -> list[Step]:
    """Steps whose call passed every check and whose observation is well-formed: validation-error
    observations echo the policy's own call, and a failed tool says nothing, so neither may support."""
    return [s for s in trace.steps if s.call is not None and s.observation is not None and s.checks
            and all(c.ok for c in s.checks)]


def answer_supported(trace: Trace) -> bool:
    answer = trace.final_answer
    observed = " ".join(s.observation for s in _valid_observations(trace))
    tokens = normalize_answer(answer or "").split()
    if not tokens or not observed:
        return False
    seen = set(normalize_answer(observed).split())
    return all(t in seen for t in tokens)


def observations_disagree(trace: Trace) -> bool:
    by_call: dict[str, str] = {}
    for s in _valid_observations(trace):
        key = s.call.canonical_key()
        if key in by_call and by_call[key] != s.observation:
            return True
        by_call.setdefault(key, s.observation)
    return False


def consistency_reward(trace: Trace) -> float:
    return 1.0 if answer_supported(trace) and not observations_disagree(trace) else 0.0


def efficiency_reward(trace: Trace, call_budget: int = 2, call_penalty: float = 0.1) -> float:
    penalty = call_penalty * max(0, len(trace.calls) - call_budget)
    if trace.final_answer is None or not trace.final_answer.strip():
        penalty += 1.0
    return -penalty


REWARD_NAMES = ("answer", "format", "consistency", "efficiency")


class RewardError(RuntimeError):
    """A reward that is not a finite number; names the component, the step and the sample."""


def trl_reward_funcs(answer_metric: str, call_budget: int, call_penalty: float) -> list[Callable[..., list[float]]]:
    """The components as TRL reward functions (one per component, so each is logged under its own name).

    They read the `episode` field the rollout returns. A NaN or infinite value is never averaged away: it
    raises with the component, the training step and the sample's question.
    """
    scorers: dict[str, Callable[[Trace], float]] = {
        "answer": lambda t: answer_reward(t, answer_metric),
        "format": format_reward,
        "consistency": consistency_reward,
        "efficiency": lambda t: efficiency_reward(t, call_budget, call_penalty),
    }

    def make(name: str, scorer: Callable[[Trace], float]):
        def reward(prompts: list, completions: list, episode: list[dict[str, Any]], **kwargs: Any) -> list[float]:
            state = kwargs.get("trainer_state")
            step = getattr(state, "global_step", "?")
            out = []
            for i, ep in enumerate(episode):
                trace = ep if isinstance(ep, Trace) else Trace.model_validate(ep)
                value = scorer(trace)
                if value is None or not math.isfinite(value):
                    raise RewardError(f"reward {name} is {value} at step {step} for sample {i} "
                                      f"(question {trace.id!r}: {trace.question[:80]!r})")
                out.append(float(value))
            return out

        reward.__name__ = f"{name}_reward"
        return reward

    return [make(n, scorers[n]) for n in REWARD_NAMES]
