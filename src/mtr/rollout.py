"""The policy's side of a GRPO rollout: sampling turns from the live model on token ids, batched across the
episodes of a step, and keeping each episode's tokens as TRL wants them.

`RolloutAgent` is an `Agent` for the Environment: it samples each turn from a `TokenSampler` (the trainer's
transformers model, or TRL's vLLM engine) on token ids and keeps, per episode, `prompt_ids`,
`completion_ids`, `env_mask` (1 on the model's own tokens, 0 on the tokens the environment inserted: tool
responses and the turn headers around them) and the sampling log-probabilities. Model tokens are never
re-tokenised, so the masks cannot drift.

    agent = RolloutAgent.with_model(model, tok, temperature=1.0, max_turn_tokens=128, max_completion_tokens=1024,
                                    episodes=len(batch))
    traces = await env.rollout_group(batch, agent, seeds)
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Protocol

from mtr.backends import MicroBatcher
from mtr.backends.batching import run_in_own_order
from mtr.backends.kvcache import PrefixCache, generate_with_prefix_cache
from mtr.chat_template import render
from mtr.prompts import FINAL_NUDGE
from mtr.trace import Step, Trace, parse_turn


class Sampled(NamedTuple):
    ids: list[int]                       # new token ids, ending with EOS when the model ended its turn
    ended: bool                          # whether it did (else the turn ran out of tokens)
    logprobs: list[float] | None = None  # the sampler's log-probability of each new token, where it has them


class TokenSampler(Protocol):
    async def sample(self, ids: list[int], max_new_tokens: int) -> tuple:
        """A `Sampled` (or the plain tuple `(ids, ended)`) for the turn after `ids`."""


def cut_turn(row: list[int], budget: int, eos: int, logprobs: list[float] | None = None) -> Sampled:
    """One row of a batch generated to the largest budget, cut to this episode's own budget and at EOS."""
    row = list(row)[:budget]
    lps = list(logprobs)[: len(row)] if logprobs is not None else None
    if eos in row:
        k = row.index(eos) + 1
        return Sampled(row[:k], True, lps[:k] if lps is not None else None)
    return Sampled(row, False, lps)


class BatchedSampler(ABC):
    """Turns from concurrent episodes go to the model in batches, rows cut to each episode's own budget.
    Given the number of `episodes` it serves, one batch per turn holds every live episode (lockstep); each
    episode calls `episode_ended` when it ends, so the batch stops waiting for it."""

    describe = "policy"

    def __init__(self, batch_size: int, timing: dict[str, float] | None = None, episodes: int | None = None):
        self.live = episodes
        self.batcher = MicroBatcher(self._run, batch_size, describe=self.describe,
                                    expected=(lambda: self.live) if episodes is not None else None)
        self.timing = timing if timing is not None else {}

    async def sample(self, ids: list[int], max_new_tokens: int) -> Sampled:
        return await self.batcher.submit((ids, max_new_tokens))

    def episode_ended(self) -> None:
        if self.live is not None:
            self.live -= 1
            self.batcher.notify()

    def _run(self, items: list[tuple[list[int], int]]) -> list[Sampled]:
        t0 = time.perf_counter()
        results = run_in_own_order(items, lambda item: item, self.generate)  # rows in an order of their own
        self.timing["generate_s"] = self.timing.get("generate_s", 0.0) + time.perf_counter() - t0
        self.timing["generated_tokens"] = self.timing.get("generated_tokens", 0) + sum(len(r.ids) for r in results)
        return results

    @abstractmethod
    def generate(self, items: list[tuple[list[int], int]]) -> list[Sampled]:
        """One batch of turns: (prompt ids, budget) in, one `Sampled` per item out."""


class ModelSampler(BatchedSampler):
    """Samples from the trainer's live transformers model on token ids."""

    def __init__(self, model: Any, tokenizer: Any, temperature: float, batch_size: int,
                 timing: dict[str, float] | None = None, episodes: int | None = None, prefix_cache: bool = True):
        super().__init__(batch_size, timing, episodes)
        self.model, self.tok, self.temperature = model, tokenizer, temperature
        # An episode's next turn starts with its previous turn's tokens, and a group's first turns are the
        # same prompt: read each once. The sampler lives for one rollout, so the cache never outlives the
        # weights it was computed with.
        self.cache = PrefixCache() if prefix_cache else None

    def generate(self, items: list[tuple[list[int], int]]) -> list[Sampled]:
        pad, eos = self.tok.pad_token_id, self.tok.eos_token_id
        # one batch whatever each episode's remaining budget (a batch per budget split every turn)
        new = generate_with_prefix_cache(self.model, [ids for ids, _ in items], self.cache, pad, {eos},
                                         max_new_tokens=max(n for _, n in items), do_sample=True,
                                         temperature=self.temperature, top_p=1.0, top_k=0, eos_token_id=eos)
        results = []
        for row, (_, budget) in zip(new.tolist(), items):
            turn = cut_turn(row, budget, eos)
            while not turn.ended and turn.ids and turn.ids[-1] == pad:
                turn.ids.pop()
            results.append(turn)
        return results


class VLLMSampler(BatchedSampler):
    """Samples the policy's turns with TRL's vLLM engine (`trainer.vllm_generation`, colocate mode).

    TRL pushes the current weights into vLLM before it calls the rollout. One `generate` call per turn holds
    every live episode; vLLM's prefix cache reuses the shared system prompt, tools and question across the
    group, and each episode's earlier turns. The turn budget is TRL's `generation_kwargs.max_tokens`
    (= `max_turn_tokens`). The sampling log-probabilities go back to TRL for its importance-sampling correction.
    """

    describe = "policy:vllm"

    def __init__(self, generation: Any, tokenizer: Any, batch_size: int, timing: dict[str, float] | None = None,
                 episodes: int | None = None):
        super().__init__(batch_size, timing, episodes)
        self.gen, self.eos = generation, tokenizer.eos_token_id

    def generate(self, items: list[tuple[list[int], int]]) -> list[Sampled]:
        _, completions, logprobs, _ = self.gen.generate(prompts=[ids for ids, _ in items], images=None,
                                                        num_generations=1)
        # vLLM gives each token's top-k as a list with the sampled token first
        return [cut_turn(row, budget, self.eos, [lp[0] for lp in logprobs[i]] if logprobs is not None else None)
                for i, (row, (_, budget)) in enumerate(zip(completions, items))]


@contextmanager
def policy_for_generation(trainer: Any) -> Iterator[Any]:
    """The trainer's live policy, whole, for `generate`: unwrapped from DDP/DeepSpeed/FSDP, ZeRO-3 shards
    gathered, FSDP-1 parameters summoned, gradient checkpointing off (TRL's own generation path does the same).
    Episodes on different ranks take different numbers of turns, so generation must not run collectives:
    keep `ds3_gather_for_generation` on (TRL's default) under ZeRO-3."""
    from trl.distributed import DistributedBackend
    from trl.models import unwrap_model_for_generation

    with (unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                      gather_deepspeed3_params=trainer.args.ds3_gather_for_generation) as model,
          DistributedBackend(trainer.accelerator).summon_full_params(trainer.model_wrapped, recurse=False)):
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)


@dataclass
class EpisodeTokens:
    prompt_ids: list[int]
    messages: list[dict]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)  # None once a turn came without them


class RolloutAgent:
    """The policy in a GRPO rollout: an `Agent` for the Environment that works on token ids."""

    def __init__(self, sampler: TokenSampler, tokenizer: Any, max_turn_tokens: int, max_completion_tokens: int):
        self.sampler, self.tok = sampler, tokenizer
        self.max_turn_tokens, self.max_completion_tokens = max_turn_tokens, max_completion_tokens
        self.episodes: dict[str, EpisodeTokens] = {}

    @classmethod
    def with_model(cls, model: Any, tokenizer: Any, temperature: float, max_turn_tokens: int,
                   max_completion_tokens: int, episodes: int, timing: dict[str, float] | None = None,
                   lockstep: bool = True, prefix_cache: bool = True) -> "RolloutAgent":
        """The agent for `episodes` episodes run together on a transformers model: one batch per turn holding
        every live episode (`lockstep`), each turn reading only what the prefix cache does not hold."""
        sampler = ModelSampler(model, tokenizer, temperature, episodes, timing, episodes if lockstep else None,
                               prefix_cache=prefix_cache)
        return cls(sampler, tokenizer, max_turn_tokens, max_completion_tokens)

    def episode_ended(self) -> None:
        """An episode ended: the sampler's next batch no longer waits for it."""
        ended = getattr(self.sampler, "episode_ended", None)
        if ended is not None:
            ended()

    def _tools(self, trace: Trace) -> list[dict] | None:
        return trace.policy_tools() or None

    def env_ids(self, st: EpisodeTokens, trace: Trace, final: bool) -> list[int]:
        """The tokens the environment inserts after the model's last turn, read off the chat template: what
        the template renders after that turn's end-of-turn token, up to the next assistant header."""
        last = trace.steps[-1]
        tools = self._tools(trace)
        base = render(self.tok, st.messages, tools)
        st.messages.append({"role": "tool", "content": last.observation or ""})
        if trace.nudge_due(final):
            st.messages.append({"role": "user", "content": FINAL_NUDGE})
        full = render(self.tok, st.messages, tools, add_generation_prompt=True)
        if not full.startswith(base):
            raise RuntimeError("the chat template renders a conversation differently once it grows; "
                               "multi-turn rollouts need a prefix-stable template")
        eos = self.tok.eos_token
        tail = base[base.rfind(eos) + len(eos):] if eos and eos in base else ""
        return self.tok(tail + full[len(base):], add_special_tokens=False)["input_ids"]

    async def next_step(self, trace: Trace, final: bool) -> Step:
        st = self.episodes.get(trace.id)
        if st is None:
            messages = [{"role": "system", "content": trace.system}, {"role": "user", "content": trace.question}]
            ids = self.tok(render(self.tok, messages, self._tools(trace), add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
            st = self.episodes[trace.id] = EpisodeTokens(prompt_ids=ids, messages=messages)
        else:
            env = self.env_ids(st, trace, final)
            if len(st.completion_ids) + len(env) >= self.max_completion_tokens:
                # The observation does not fit: the episode ends on the model's last turn, never on env tokens.
                return Step(parse_error=f"length: the episode's {self.max_completion_tokens}-token budget is spent")
            st.completion_ids += env
            st.env_mask += [0] * len(env)
            if st.logprobs is not None:
                st.logprobs += [0.0] * len(env)  # masked out of the loss and of TRL's sampling correction
        budget = min(self.max_turn_tokens, self.max_completion_tokens - len(st.completion_ids))
        new, ended, lps = Sampled(*await self.sampler.sample(st.prompt_ids + st.completion_ids, budget))
        st.completion_ids += new
        st.env_mask += [1] * len(new)
        st.logprobs = st.logprobs + list(lps) if st.logprobs is not None and lps is not None else None
        text = self.tok.decode(new, skip_special_tokens=True)
        st.messages.append({"role": "assistant", "content": text})
        if not ended:
            return Step(raw=text, tokens=len(new),
                        parse_error=f"length: the turn did not end within {budget} tokens")
        parsed = parse_turn(text)
        return Step(thought=parsed.thought, call=parsed.call, answer=parsed.answer, raw=text,
                    parse_error=parsed.error, tokens=len(new))
