"""`mtr grpo`, Stage 2: GRPO on TRL's GRPOTrainer with MTR's multi-turn simulated-tool rollout.

TRL calls `rollout_func(prompts, trainer)` with the prompts already repeated `num_generations` times
(grouped). For each entry we run the *same episode loop* as synthesis and evaluation (`run_episode`),
with `RolloutAgent` playing the policy: it samples from the trainer's live model on token ids and keeps,
per episode, `prompt_ids`, `completion_ids` and `env_mask` (1 on the model's own tokens, 0 on the tokens
the environment inserted: tool responses and the turn headers around them). Model tokens are never
re-tokenised. The ToolMaker's tools are made once per question before training (failures skipped and
counted, or given the utility tools), the ToolActor plays them, and the composite reward scores each
episode (`mtr.rewards`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Protocol

from rich.console import Console

from mtr.backends import BackendPool, MicroBatcher
from mtr.chat_template import render
from mtr.config import Config
from mtr.data import load_qa
from mtr.distributed import is_main, on_main
from mtr.episode import run_episode
from mtr.jsonl import JsonlAppender, is_retryable, jsonl_log_callback, read_jsonl
from mtr.kvcache import PrefixCache, generate_with_prefix_cache
from mtr.manifest import write_manifest
from mtr.peak_memory import peak_rss_mb, reset_peak
from mtr.prompts import fill
from mtr.rewards import REWARD_NAMES, trl_reward_funcs
from mtr.roles import ToolActor, ToolCache, ToolMaker, utility_tools
from mtr.sft import last_checkpoint, load_policy_tokenizer, save_trained
from mtr.trace import QAExample, Step, ToolSchema, Trace, parse_turn

console = Console()
FINAL_NUDGE = "No more tool calls: give your final answer now."


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
        results = self.generate(items)
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
    """The policy in a GRPO rollout: an `Agent` for `run_episode` that works on token ids."""

    def __init__(self, sampler: TokenSampler, tokenizer: Any, max_turn_tokens: int, max_completion_tokens: int):
        self.sampler, self.tok = sampler, tokenizer
        self.max_turn_tokens, self.max_completion_tokens = max_turn_tokens, max_completion_tokens
        self.episodes: dict[str, EpisodeTokens] = {}

    def _tools(self, trace: Trace) -> list[dict] | None:
        return trace.policy_tools() or None

    def env_ids(self, st: EpisodeTokens, trace: Trace, final: bool) -> list[int]:
        """The tokens the environment inserts after the model's last turn, read off the chat template: what
        the template renders after that turn's end-of-turn token, up to the next assistant header."""
        last = trace.steps[-1]
        tools = self._tools(trace)
        base = render(self.tok, st.messages, tools)
        st.messages.append({"role": "tool", "content": last.observation or ""})
        if final:
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


def questions_needed(g: Any, world_size: int = 1) -> int:
    """How many questions `train_steps` optimizer steps draw: each step takes per_device_train_batch_size x
    gradient_accumulation_steps rollouts on each process, num_generations of them per question."""
    rollouts = g.train_steps * g.per_device_train_batch_size * g.gradient_accumulation_steps * world_size
    return -(-rollouts // g.num_generations)


def prepare_tools(cfg: Config, examples: list[QAExample], pool: Any, out: Path, needed: int | None = None
                  ) -> tuple[dict[str, list[ToolSchema]], dict[str, str]]:
    """Make the tools of the questions training will use, once (appended to tools.jsonl, so a resume does
    not redo them).

    With `needed` below the number of questions, only that many are used: the first of a seeded shuffle, and
    one more for each the ToolMaker fails on (when failures are skipped). A short run on a large file then
    pays the ToolMaker for the questions it trains on, not for all of them: the demo's 2 GRPO steps use 2 of
    its 12 questions, and making tools for the other 10 took about a minute of a 4-minute stage."""
    g = cfg.grpo
    cache = ToolCache(ToolMaker(pool.get("toolmaker"), max_tools=g.max_tools, retries=g.toolmaker_retries,
                                utilities=g.utility_tools, seed=cfg.seed))
    store = JsonlAppender(out / "tools.jsonl")
    made = {rec["id"]: rec for rec in read_jsonl(out / "tools.jsonl") if not is_retryable(rec)}
    order = list(examples)
    if needed is None or needed >= len(order):
        needed = len(order)
    else:
        random.Random(cfg.seed).shuffle(order)

    def usable(rec: dict) -> bool:
        return rec["error"] is None or g.on_toolmaker_failure == "utilities"

    async def make_all(todo: list[QAExample]) -> list[dict]:
        backend_failed = []
        for fut in asyncio.as_completed([asyncio.ensure_future(_made(ex)) for ex in todo]):
            rec = await fut
            store.write(rec)
            if rec["retryable"]:
                backend_failed.append(rec)
            else:
                made[rec["id"]] = rec
        return backend_failed

    async def _made(ex: QAExample) -> dict:
        res = await cache.get(ex)
        return {"id": ex.id, "tools": [t.as_dict() for t in res.tools], "error": res.error,
                "retryable": res.retryable}

    chosen: list[QAExample] = []
    try:
        while len(chosen) < len(order):
            want = needed - sum(usable(made[ex.id]) for ex in chosen)
            if want <= 0:
                break
            chunk = order[len(chosen):len(chosen) + want]
            chosen += chunk
            todo = [ex for ex in chunk if ex.id not in made]
            if todo:
                with console.status(f"ToolMaker: tools for {len(todo)} questions"):
                    backend_failed = asyncio.run(make_all(todo))
                if backend_failed:
                    # The server failed, not the model: drawing replacements would only fail them too.
                    raise ValueError(f"{out / 'tools.jsonl'}: the ToolMaker's backend failed on "
                                     f"{len(backend_failed)} question(s), e.g. {backend_failed[0]['error']}; the "
                                     "tools made so far are kept, and a re-run retries the rest")
    finally:
        store.close()
    tools, failed = {}, {}
    for ex in chosen:
        rec = made[ex.id]
        if rec["error"] is None:
            tools[rec["id"]] = [ToolSchema.model_validate(t) for t in rec["tools"]]
        elif g.on_toolmaker_failure == "utilities":
            tools[rec["id"]] = utility_tools(g.utility_tools)
        else:
            failed[rec["id"]] = rec["error"]
    return tools, failed


def make_rollout_func(cfg: Config, examples: dict[str, QAExample], tools: dict[str, list[ToolSchema]],
                      actor: ToolActor, tokenizer: Any, out: Path):
    """The MTR rollout as TRL's `rollout_func`."""
    g = cfg.grpo
    by_question = {ex.question: ex for ex in examples.values()}
    system = fill("policy")
    calls = {"n": 0}
    timing: dict[str, float] = {}

    def rollout_func(prompts: list, trainer: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        batch = [by_question[p[-1]["content"] if isinstance(p, list) else p] for p in prompts]
        step = getattr(getattr(trainer, "state", None), "global_step", 0)

        async def episode(agent: RolloutAgent, i: int, ex: QAExample) -> Trace:
            try:
                return await run_episode(ex, f"{ex.id}#{i}", tools[ex.id], agent, actor, system,
                                         max_steps=g.max_steps, seed=cfg.seed + 1000 * step + i,
                                         meta={"seed": cfg.seed + 1000 * step + i})
            finally:
                agent.sampler.episode_ended()  # the policy's next batch no longer waits for this episode

        # with vLLM the trainer's model is not needed for sampling (TRL has pushed its weights into vLLM)
        with nullcontext() if g.use_vllm else policy_for_generation(trainer) as model:
            sampler = (VLLMSampler(trainer.vllm_generation, tokenizer, len(prompts), timing, len(prompts))
                       if g.use_vllm else
                       ModelSampler(model, tokenizer, g.temperature, len(prompts), timing, len(prompts)))
            agent = RolloutAgent(sampler, tokenizer, g.max_turn_tokens, g.max_completion_tokens)

            async def episodes():
                return await asyncio.gather(*[episode(agent, i, ex) for i, ex in enumerate(batch)])

            traces = asyncio.run(episodes())
        toks = [agent.episodes[t.id] for t in traces]
        timing["rollout_s"] = timing.get("rollout_s", 0.0) + time.perf_counter() - t0
        main = getattr(getattr(trainer, "accelerator", None), "is_main_process", True)
        if main and step % g.sample_every == 0 and calls["n"] != step + 1:
            calls["n"] = step + 1
            with (out / "samples.jsonl").open("a") as f:
                for t in traces[:2]:
                    f.write(json.dumps({"step": step, "trace": t.model_dump(mode="json", exclude_none=True)}) + "\n")
        logprobs = [t.logprobs for t in toks] if all(t.logprobs is not None for t in toks) else None
        return {"prompt_ids": [t.prompt_ids for t in toks], "completion_ids": [t.completion_ids for t in toks],
                "logprobs": logprobs, "env_mask": [t.env_mask for t in toks],
                "episode": [t.model_dump(mode="json", exclude_none=True) for t in traces]}

    rollout_func.timing = timing  # type: ignore[attr-defined]
    return rollout_func


def health_reward_logger(reward_funcs: list) -> list:
    """Wrap the first reward function so that each batch also logs tool calls per episode and malformed %."""
    first = reward_funcs[0]

    def answer_reward(prompts, completions, episode, **kwargs):
        log = kwargs.get("log_metric")
        if log is not None and episode:
            traces = [Trace.model_validate(e) for e in episode]
            steps = sum(len(t.steps) for t in traces) or 1
            log("episode/tool_calls", sum(len(t.calls) for t in traces) / len(traces))
            log("episode/malformed_pct", 100.0 * sum(1 for t in traces for s in t.steps if not s.ok) / steps)
            log("episode/no_answer_pct", 100.0 * sum(1 for t in traces if t.final_answer is None) / len(traces))
            log("episode/error_pct", 100.0 * sum(1 for t in traces if t.error) / len(traces))
        return first(prompts=prompts, completions=completions, episode=episode, **kwargs)

    answer_reward.__name__ = first.__name__
    return [answer_reward, *reward_funcs[1:]]


def train_grpo(cfg: Config, data: Path, init: Path, out: Path, limit: int | None = None, resume: bool = False,
               overwrite: bool = False, pool: Any = None) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    reset_peak()  # this stage's own peak memory, also when it shares the process with others (mtr run)
    g = cfg.grpo
    if g.use_vllm:
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            raise ValueError("grpo.use_vllm: vLLM is not installed here (it needs a CUDA GPU; pip install "
                             "'trl[vllm]'); set grpo.use_vllm: false to sample with transformers")
    if not (Path(init) / "config.json").is_file():
        raise ValueError(f"--init {init}: not a Hugging Face checkpoint directory (e.g. the output of `mtr sft`)")
    examples = load_qa(data, limit)
    tok = load_policy_tokenizer(Path(init))
    cuda = torch.cuda.is_available()
    # The arguments first: creating them sets up the processes under a launcher, and the run directory and
    # the tools are then prepared by the main process alone.
    args = GRPOConfig(
        output_dir=str(out), num_generations=g.num_generations, per_device_train_batch_size=g.per_device_train_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps, beta=g.beta, loss_type=g.loss_type,
        learning_rate=g.learning_rate, max_steps=g.train_steps, max_completion_length=g.max_completion_tokens,
        temperature=g.temperature, reward_weights=[g.reward_weights.get(n, 0.0) for n in REWARD_NAMES],
        logging_steps=g.logging_steps, save_steps=g.save_steps, save_total_limit=g.save_total_limit,
        report_to=g.report_to, seed=cfg.seed, bf16=g.bf16 and cuda, gradient_checkpointing=g.gradient_checkpointing,
        use_cpu=not cuda, use_vllm=g.use_vllm, vllm_mode="colocate", dataloader_num_workers=0,
        ddp_timeout=g.process_timeout_s,  # the other ranks wait while the main process runs the ToolMaker
        vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization,
        # with vLLM, one request is one turn: TRL's max_completion_length stays the whole episode's budget
        generation_kwargs={"max_tokens": g.max_turn_tokens, "stop_token_ids": [tok.eos_token_id]} if g.use_vllm else None,
    )
    main = is_main(args)
    own_pool = pool is None
    pool = pool or BackendPool(cfg)
    needed = questions_needed(g, args.world_size)

    def prepare_run_dir() -> tuple[dict[str, list[ToolSchema]], dict[str, str]]:
        if overwrite and out.exists():
            for p in out.glob("checkpoint-*"):
                shutil.rmtree(p)
            for name in ("log.jsonl", "samples.jsonl", "tools.jsonl", "train_stats.json"):
                (out / name).unlink(missing_ok=True)
        write_manifest(out, "grpo", cfg.model_dump(mode="json"), {"data": Path(data)}, cfg.seed,
                       extra={"init": str(init), "limit": limit}, overwrite=overwrite)
        return prepare_tools(cfg, examples, pool, out, needed=needed)

    tools, failed = on_main(args, prepare_run_dir)
    by_id = {ex.id: ex for ex in examples}
    train = [by_id[qid] for qid in tools]  # in the order drawn
    # A subset is already a seeded shuffle; kept in that order, a resume with more train_steps draws the same
    # first questions (TRL's own shuffle would permute a larger set differently).
    subset = needed < len(examples)
    args.shuffle_dataset = not subset
    if main:
        console.print(f"grpo: {len(train)} questions to train on ({g.train_steps} steps draw "
                      f"{min(needed, len(examples))} of {len(examples)}); {len(failed)} skipped because the "
                      "ToolMaker failed")
    if not train:
        raise ValueError(f"{data}: no question has tools (the ToolMaker failed on all {len(examples)}); "
                         "see tools.jsonl, or set grpo.on_toolmaker_failure: utilities")
    questions = [ex.question for ex in train]
    if len(set(questions)) != len(questions):
        raise ValueError(f"{data}: two records share a question text; the rollout identifies questions by text")

    actor = ToolActor(pool.get("toolactor"), grounding=g.grounding, retries=g.actor_retries)
    log_path = out / "log.jsonl"
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": ex.question}], "qid": ex.id}
                                 for ex in train])
    rewards = health_reward_logger(trl_reward_funcs(g.answer_metric, g.call_budget, g.call_penalty))
    rollout = make_rollout_func(cfg, {ex.id: ex for ex in train}, tools, actor, tok, out)
    trainer = GRPOTrainer(model=str(init), reward_funcs=rewards, args=args, train_dataset=dataset,
                          processing_class=tok, callbacks=[jsonl_log_callback(log_path)], rollout_func=rollout,
                          peft_config=g.peft_config())
    # the main process's view: without a filesystem shared by every node, the ranks could disagree
    ckpt = on_main(args, lambda: last_checkpoint(out) if resume else None)
    if main and resume and ckpt is None:
        console.print(f"[yellow]--resume: no checkpoint in {out}; starting from the beginning[/yellow]")
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    finally:
        if own_pool:
            asyncio.run(pool.aclose())
    wall = time.perf_counter() - t0
    save_trained(trainer, args, out, tok, lora=g.lora, base=Path(init), dtype="auto")  # as TRL loaded it
    logs = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []
    steps = [e for e in logs if "reward" in e]
    curve = {k: [e.get(k) for e in steps] for k in
             ["reward", "kl", *(f"rewards/{f.__name__}/mean" for f in rewards), "episode/tool_calls",
              "episode/malformed_pct", "completions/mean_length"]}
    stats = {"questions": len(train), "skipped_toolmaker_failed": len(failed), "steps": result.global_step,
             "train_runtime_s": wall, "seconds_per_step": wall / max(1, result.global_step),
             "peak_rss_mb": peak_rss_mb(),
             "curve": curve, "resumed_from": str(ckpt) if ckpt else None,
             # where a step's time goes: policy generation, the rest of the rollout (tools, ToolActor), the update
             "rollout_s": rollout.timing.get("rollout_s", 0.0), "generate_s": rollout.timing.get("generate_s", 0.0),
             "rollout_tokens_per_s": (rollout.timing.get("generated_tokens", 0) / rollout.timing["generate_s"]
                                      if rollout.timing.get("generate_s") else None),
             "processes": args.world_size}
    if main:
        (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
        console.print(f"grpo: {stats['steps']} steps in {wall:.0f}s ({stats['seconds_per_step']:.1f}s/step); "
                      f"checkpoint in {out}")
    return stats
