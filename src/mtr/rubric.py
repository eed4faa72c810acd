"""The Rubric: the composite reward of an episode (named, weighted components) and every structural health
figure, computed in one place for every stage.

As in `verifiers`, a Rubric holds named reward functions and their weights; `score(trace)` gives each
component and the weighted total, `trl_reward_funcs()` hands the components to TRL's GRPOTrainer (one
function each, so TRL logs each under its own name) and `health(traces)` the figures the console, the
results, the GRPO log and the report show (malformed %, calls per episode, no-answer %...).

All components score one episode (`Trace`):

- answer       EM (1/0) or token F1 of the final answer against the gold answers (`answer_metric`).
- format       the share of well-formed turns: a turn is well-formed if it parsed and its call (if any) passed
               the pre-check (`tool_exists`, `args_valid`) within the call budget; an episode without a
               non-empty final answer counts one more, missing, turn. So 1 exactly when every turn parsed,
               every call validated and the episode answered, and a partly well-formed episode scores
               between 0 and 1 (an all-or-nothing score left most groups of a 135M policy without any
               difference to learn from: docs/grpo.md). An episode cut short by a tool failure scores 0.
- consistency  1 if the final answer is *supported* by the episode's own valid observations (its tokens, in
               order, in their text values; a yes/no answer when every entity the question names was
               observed) and the answering thought quotes nothing the observations do not say; else 0
               (mtr.evidence). Within a GRPO group every rollout sees the same observation for the same
               call (one world per question and step), so support is compared across the group fairly.
               With `consistency_when_right`, only beside an answer that scores above 0: a grounded wrong
               answer then earns nothing over an ungrounded one.
- efficiency   a length penalty: -`call_penalty` per call beyond `call_budget` (which is below the call
               limit), and -`token_penalty` per `token_budget` of the agent's tokens beyond `token_budget`.

The MTR paper names correctness, consistency and an efficiency term but gives no formula or weights;
these definitions and the default weights (config `grpo.reward_weights`) are our choice (docs/grpo.md).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from mtr.evidence import answer_supported, fabricated_quote
from mtr.metrics import exact_match, f1_score, normalize_answer
from mtr.trace import Step, Trace

# The components, in the order TRL receives them; the one list of reward names in mtr.
REWARD_NAMES = ("answer", "format", "consistency", "efficiency")

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


def consistency_reward(trace: Trace) -> float:
    """1 when the answer rests on the episode's own observations and its reasoning quotes nothing they do not
    say (mtr.evidence); 0 otherwise, and without an answer."""
    return 1.0 if answer_supported(trace) and not fabricated_quote(trace) else 0.0


def efficiency_reward(trace: Trace, call_budget: int = 1, call_penalty: float = 0.1, token_budget: int = 256,
                      token_penalty: float = 0.2) -> float:
    """A penalty for length: -`call_penalty` for each call beyond `call_budget` (below the call limit, so it
    can fire), and -`token_penalty` for each `token_budget` the agent's own tokens run past `token_budget`
    (pro rata). A missing answer is format's business, not this one's."""
    calls = max(0, len(trace.calls) - call_budget)
    tokens = max(0, trace.meta.get("agent_tokens", sum(s.tokens for s in trace.steps)) - token_budget)
    return -(call_penalty * calls + token_penalty * tokens / token_budget)


class RewardError(RuntimeError):
    """A reward that is not a finite number; names the component, the step and the sample."""


class Rubric:
    """The reward components with their weights (`grpo.reward_weights`) and settings."""

    names = REWARD_NAMES

    def __init__(self, weights: dict[str, float], answer_metric: str = "em", call_budget: int = 1,
                 call_penalty: float = 0.1, token_budget: int = 256, token_penalty: float = 0.2,
                 consistency_when_right: bool = False):
        unknown = set(weights) - set(REWARD_NAMES)
        if unknown:
            raise ValueError(f"reward weights: unknown component(s) {sorted(unknown)}; components are "
                             f"{', '.join(REWARD_NAMES)}")
        self.weights = {n: float(weights.get(n, 0.0)) for n in REWARD_NAMES}
        self.funcs: dict[str, Callable[[Trace], float]] = {
            "answer": lambda t: answer_reward(t, answer_metric),
            "format": format_reward,
            "consistency": (lambda t: consistency_reward(t) if answer_reward(t, answer_metric) > 0 else 0.0)
            if consistency_when_right else consistency_reward,
            "efficiency": lambda t: efficiency_reward(t, call_budget, call_penalty, token_budget, token_penalty),
        }

    @classmethod
    def from_config(cls, g: Any) -> "Rubric":
        return cls(g.reward_weights, g.answer_metric, g.call_budget, g.call_penalty, g.token_budget, g.token_penalty,
                   g.consistency_when_right)

    def score(self, trace: Trace) -> dict[str, float]:
        """Each component, and `total`: their weighted sum (what GRPO's advantage is computed from)."""
        out = {n: float(f(trace)) for n, f in self.funcs.items()}
        out["total"] = sum(self.weights[n] * out[n] for n in REWARD_NAMES)
        return out

    def trl_weights(self) -> list[float]:
        return [self.weights[n] for n in REWARD_NAMES]

    def trl_reward_funcs(self, log_health: bool = True) -> list[Callable[..., list[float]]]:
        """The components as TRL reward functions, reading the `episode` field the rollout returns.

        A NaN or infinite value is never averaged away: it raises with the component, the training step and
        the sample's question. With `log_health`, the first function also logs the batch's health figures
        (`episode/...`) through TRL's `log_metric`."""

        def make(name: str, scorer: Callable[[Trace], float], first: bool):
            def reward(prompts: list, completions: list, episode: list[dict[str, Any]], **kwargs: Any) -> list[float]:
                step = getattr(kwargs.get("trainer_state"), "global_step", "?")
                traces = [ep if isinstance(ep, Trace) else Trace.model_validate(ep) for ep in episode]
                if first and log_health and kwargs.get("log_metric") is not None and traces:
                    for key, value in health(traces).items():
                        if key in HEALTH_LOGGED:
                            kwargs["log_metric"](f"episode/{key}", value)
                out = []
                for i, trace in enumerate(traces):
                    value = scorer(trace)
                    if value is None or not math.isfinite(value):
                        raise RewardError(f"reward {name} is {value} at step {step} for sample {i} "
                                          f"(question {trace.id!r}: {trace.question[:80]!r})")
                    out.append(float(value))
                return out

            reward.__name__ = f"{name}_reward"
            return reward

        return [make(n, self.funcs[n], i == 0) for i, n in enumerate(REWARD_NAMES)]


def trl_log_key(name: str) -> str:
    """Where TRL logs a component's batch mean."""
    return f"rewards/{name}_reward/mean"


# ---------------------------------------------------------------------------------------------------
# Health: what the episodes look like, whatever they scored.

# Words that carry no entity: an argument made only of these is not checked for support.
STOPWORDS = frozenset("""a an the of in on at to for from by with and or is was were are be been who what when where
which whose how many much did does do year years first last name born""".split())


def slot_disagreements(trace: Trace) -> tuple[int, int]:
    """(calls whose arguments are unsupported, calls). A call is *slot-disagreeing* when one of its
    string or number argument values has a normalised content token (not a stopword) that occurs neither
    in the normalised question nor in any observation the agent saw before that call. E.g. searching
    "Barack Obama" for a question about "Citibank" before any observation mentions Obama."""
    seen = set(normalize_answer(trace.question).split())
    bad = total = 0
    for step in trace.steps:
        if step.call is not None:
            total += 1
            for value in _leaves(step.call.arguments):
                tokens = [t for t in normalize_answer(str(value)).split() if t not in STOPWORDS]
                if any(t not in seen for t in tokens):
                    bad += 1
                    break
        if step.observation is not None:
            seen |= set(normalize_answer(step.observation).split())
    return bad, total


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    if isinstance(value, bool) or value is None:
        return []
    return [value]


def episode_counts(trace: Trace) -> dict[str, int]:
    """One episode's structural counts, from which every health figure is computed (and which evaluation
    stores with each prediction)."""
    bad_slots, calls = slot_disagreements(trace)
    answered = bool((trace.final_answer or "").strip())
    return {"steps": len(trace.steps), "malformed_steps": sum(1 for s in trace.steps if not s.ok),
            "unparsed_steps": sum(1 for s in trace.steps if s.parse_error is not None),
            "well_formed": int(answered and trace.error is None and all(s.ok for s in trace.steps)),
            "calls": calls, "slot_disagreements": bad_slots,
            "invalid_calls": sum(1 for s in trace.steps if s.call is not None
                                 and any(c.code in ("tool_exists", "args_valid") and not c.ok for c in s.checks)),
            "answered": int(answered), "error": int(trace.error is not None),
            "tokens": trace.meta.get("agent_tokens", 0)}


HEALTH_LOGGED = ("tool_calls", "well_formed_pct", "answered_pct", "parse_valid_pct", "malformed_pct", "no_answer_pct",
                 "error_pct")


def health(episodes: list[Trace] | list[dict[str, int]]) -> dict[str, float]:
    """The health figures of a set of episodes (traces, or their `episode_counts`):
    malformed % of turns, invalid calls % and slot disagreements % of calls, no-answer % and error % of
    episodes, tool calls and the agent's tokens per episode."""
    counts = [e if isinstance(e, dict) else episode_counts(e) for e in episodes]
    n = len(counts)

    def total(key: str) -> int:
        if key == "answered":  # evaluation records of older versions have only the prediction
            return sum(c["answered"] if "answered" in c else bool((c.get("prediction") or "").strip())
                       for c in counts)
        return sum(int(bool(c[key])) if key == "error" else c.get(key, 0) for c in counts)

    def pct(num: float, den: float) -> float:
        return 100.0 * num / den if den else 0.0

    steps, calls = total("steps"), total("calls")
    return {"episodes": n,
            # the honest ones first: whole episodes, then turns
            "well_formed_pct": pct(total("well_formed"), n), "answered_pct": pct(total("answered"), n),
            "parse_valid_pct": pct(steps - total("unparsed_steps"), steps),
            "malformed_pct": pct(total("malformed_steps"), steps),
            "invalid_call_pct": pct(total("invalid_calls"), calls),
            "slot_disagreement_pct": pct(total("slot_disagreements"), calls),
            "no_answer_pct": pct(n - total("answered"), n), "error_pct": pct(total("error"), n),
            "tool_calls": calls / n if n else 0.0, "tokens": total("tokens") / n if n else 0.0}
