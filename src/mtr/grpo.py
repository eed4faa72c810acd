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
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from mtr.backends import BackendPool, MicroBatcher
from mtr.chat_template import render
from mtr.config import Config
from mtr.data import load_qa
from mtr.episode import run_episode
from mtr.jsonl import JsonlAppender, jsonl_log_callback, read_jsonl
from mtr.manifest import write_manifest
from mtr.prompts import fill
from mtr.rewards import REWARD_NAMES, trl_reward_funcs
from mtr.roles import ToolActor, ToolCache, ToolMaker, utility_tools
from mtr.sft import last_checkpoint, load_policy_tokenizer
from mtr.trace import QAExample, Step, ToolSchema, Trace, parse_turn

console = Console()
FINAL_NUDGE = "No more tool calls: give your final answer now."


class TokenSampler(Protocol):
    async def sample(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
        """New token ids after `ids` (ending with EOS when the model ended its turn), and whether it did."""


class ModelSampler:
    """Samples from a live transformers model on token ids; concurrent episodes share batches."""

    def __init__(self, model: Any, tokenizer: Any, temperature: float, batch_size: int,
                 timing: dict[str, float] | None = None):
        self.model, self.tok, self.temperature = model, tokenizer, temperature
        self.batcher = MicroBatcher(self._run, batch_size, key=lambda item: item[1], describe="policy")
        self.timing = timing if timing is not None else {}

    async def sample(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
        return await self.batcher.submit((ids, max_new_tokens))

    def _run(self, items: list[tuple[list[int], int]]) -> list[tuple[list[int], bool]]:
        import torch

        pad, eos = self.tok.pad_token_id, self.tok.eos_token_id
        width = max(len(ids) for ids, _ in items)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in items], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in items], device=device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=items[0][1],
                                      do_sample=True, temperature=self.temperature, top_p=1.0, top_k=0,
                                      pad_token_id=pad, eos_token_id=eos)
        results = []
        for row in out[:, width:].tolist():
            if eos in row:
                results.append((row[: row.index(eos) + 1], True))
            else:
                while row and row[-1] == pad:
                    row.pop()
                results.append((row, False))
        self.timing["generate_s"] = self.timing.get("generate_s", 0.0) + time.perf_counter() - t0
        self.timing["generated_tokens"] = self.timing.get("generated_tokens", 0) + sum(len(r) for r, _ in results)
        return results


@dataclass
class EpisodeTokens:
    prompt_ids: list[int]
    messages: list[dict]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)


class RolloutAgent:
    """The policy in a GRPO rollout: an `Agent` for `run_episode` that works on token ids."""

    def __init__(self, sampler: TokenSampler, tokenizer: Any, max_turn_tokens: int, max_completion_tokens: int):
        self.sampler, self.tok = sampler, tokenizer
        self.max_turn_tokens, self.max_completion_tokens = max_turn_tokens, max_completion_tokens
        self.episodes: dict[str, EpisodeTokens] = {}

    def _tools(self, trace: Trace) -> list[dict] | None:
        return [t.as_dict() for t in trace.tools] or None

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
        budget = min(self.max_turn_tokens, self.max_completion_tokens - len(st.completion_ids))
        new, ended = await self.sampler.sample(st.prompt_ids + st.completion_ids, budget)
        st.completion_ids += new
        st.env_mask += [1] * len(new)
        text = self.tok.decode(new, skip_special_tokens=True)
        st.messages.append({"role": "assistant", "content": text})
        if not ended:
            return Step(raw=text, tokens=len(new),
                        parse_error=f"length: the turn did not end within {budget} tokens")
        parsed = parse_turn(text)
        return Step(thought=parsed.thought, call=parsed.call, answer=parsed.answer, raw=text,
                    parse_error=parsed.error, tokens=len(new))


def prepare_tools(cfg: Config, examples: list[QAExample], pool: Any, out: Path) -> tuple[dict[str, list[ToolSchema]],
                                                                                       dict[str, str]]:
    """Make every question's tools once (appended to tools.jsonl, so a resume does not redo them)."""
    g = cfg.grpo
    cache = ToolCache(ToolMaker(pool.get("toolmaker"), max_tools=g.max_tools, retries=g.toolmaker_retries,
                                utilities=g.utility_tools, seed=cfg.seed))
    store = JsonlAppender(out / "tools.jsonl")
    todo = [ex for ex in examples if ex.id not in store.done]

    async def make_all():
        for fut in asyncio.as_completed([asyncio.ensure_future(_made(ex)) for ex in todo]):
            store.write(await fut)

    async def _made(ex: QAExample) -> dict:
        res = await cache.get(ex)
        return {"id": ex.id, "tools": [t.as_dict() for t in res.tools], "error": res.error}

    try:
        if todo:
            with console.status(f"ToolMaker: tools for {len(todo)} questions"):
                asyncio.run(make_all())
    finally:
        store.close()
    tools, failed = {}, {}
    for rec in read_jsonl(out / "tools.jsonl"):
        if rec["error"] is None:
            tools[rec["id"]] = [ToolSchema.model_validate(t) for t in rec["tools"]]
        elif g.on_toolmaker_failure == "utilities":
            tools[rec["id"]] = utility_tools(g.utility_tools)
        else:
            failed[rec["id"]] = rec["error"]
    return tools, failed


def make_rollout_func(cfg: Config, examples: dict[str, QAExample], tools: dict[str, list[ToolSchema]],
                      actor: ToolActor, tokenizer: Any, out: Path, sampler_factory=None):
    """The MTR rollout as TRL's `rollout_func`."""
    g = cfg.grpo
    by_question = {ex.question: ex for ex in examples.values()}
    system = fill("policy")
    calls = {"n": 0}
    timing: dict[str, float] = {}

    def rollout_func(prompts: list, trainer: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        model = trainer.accelerator.unwrap_model(trainer.model)
        sampler = (sampler_factory(model) if sampler_factory is not None
                   else ModelSampler(model, tokenizer, g.temperature, batch_size=len(prompts), timing=timing))
        agent = RolloutAgent(sampler, tokenizer, g.max_turn_tokens, g.max_completion_tokens)
        batch = [by_question[p[-1]["content"] if isinstance(p, list) else p] for p in prompts]
        step = getattr(getattr(trainer, "state", None), "global_step", 0)

        async def episodes():
            return await asyncio.gather(*[
                run_episode(ex, f"{ex.id}#{i}", tools[ex.id], agent, actor, system, max_steps=g.max_steps,
                            seed=cfg.seed + 1000 * step + i, meta={"seed": cfg.seed + 1000 * step + i})
                for i, ex in enumerate(batch)])

        was_training = model.training
        model.eval()
        try:
            traces = asyncio.run(episodes())
        finally:
            model.train(was_training)
        toks = [agent.episodes[t.id] for t in traces]
        timing["rollout_s"] = timing.get("rollout_s", 0.0) + time.perf_counter() - t0
        if step % g.sample_every == 0 and calls["n"] != step + 1:
            calls["n"] = step + 1
            with (out / "samples.jsonl").open("a") as f:
                for t in traces[:2]:
                    f.write(json.dumps({"step": step, "trace": t.model_dump(mode="json", exclude_none=True)}) + "\n")
        return {"prompt_ids": [t.prompt_ids for t in toks], "completion_ids": [t.completion_ids for t in toks],
                "logprobs": None, "env_mask": [t.env_mask for t in toks],
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
    import os

    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    g = cfg.grpo
    if g.use_vllm:
        raise ValueError("grpo.use_vllm: vLLM-backed rollouts are not implemented yet (the rollout samples with "
                         "transformers on the training GPU); set grpo.use_vllm: false")
    if not (Path(init) / "config.json").is_file():
        raise ValueError(f"--init {init}: not a Hugging Face checkpoint directory (e.g. the output of `mtr sft`)")
    examples = load_qa(data, limit)
    if overwrite and out.exists():
        for p in out.glob("checkpoint-*"):
            shutil.rmtree(p)
        for name in ("log.jsonl", "samples.jsonl", "tools.jsonl", "train_stats.json"):
            (out / name).unlink(missing_ok=True)
    write_manifest(out, "grpo", cfg.model_dump(mode="json"), {"data": Path(data)}, cfg.seed,
                   extra={"init": str(init), "limit": limit}, overwrite=overwrite)
    own_pool = pool is None
    pool = pool or BackendPool(cfg)
    tools, failed = prepare_tools(cfg, examples, pool, out)
    train = [ex for ex in examples if ex.id in tools]
    console.print(f"grpo: {len(train)} questions to train on; {len(failed)} skipped because the ToolMaker failed")
    if not train:
        raise ValueError(f"{data}: no question has tools (the ToolMaker failed on all {len(examples)}); "
                         "see tools.jsonl, or set grpo.on_toolmaker_failure: utilities")
    questions = [ex.question for ex in train]
    if len(set(questions)) != len(questions):
        raise ValueError(f"{data}: two records share a question text; the rollout identifies questions by text")

    tok = load_policy_tokenizer(Path(init))
    actor = ToolActor(pool.get("toolactor"), grounding=g.grounding, retries=g.actor_retries)
    cuda = torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=str(out), num_generations=g.num_generations, per_device_train_batch_size=g.per_device_train_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps, beta=g.beta, loss_type=g.loss_type,
        learning_rate=g.learning_rate, max_steps=g.train_steps, max_completion_length=g.max_completion_tokens,
        temperature=g.temperature, reward_weights=[g.reward_weights.get(n, 0.0) for n in REWARD_NAMES],
        logging_steps=g.logging_steps, save_steps=g.save_steps, save_total_limit=g.save_total_limit,
        report_to=g.report_to, seed=cfg.seed, bf16=g.bf16 and cuda, gradient_checkpointing=g.gradient_checkpointing,
        use_cpu=not cuda, use_vllm=g.use_vllm, vllm_mode="colocate", dataloader_num_workers=0,
    )
    log_path = out / "log.jsonl"
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": ex.question}], "qid": ex.id}
                                 for ex in train])
    rewards = health_reward_logger(trl_reward_funcs(g.answer_metric, g.call_budget, g.call_penalty))
    rollout = make_rollout_func(cfg, {ex.id: ex for ex in train}, tools, actor, tok, out)
    trainer = GRPOTrainer(model=str(init), reward_funcs=rewards, args=args, train_dataset=dataset,
                          processing_class=tok, callbacks=[jsonl_log_callback(log_path)], rollout_func=rollout)
    ckpt = last_checkpoint(out) if resume else None
    if resume and ckpt is None:
        console.print(f"[yellow]--resume: no checkpoint in {out}; starting from the beginning[/yellow]")
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    finally:
        if own_pool:
            asyncio.run(pool.aclose())
    wall = time.perf_counter() - t0
    trainer.save_model(str(out))
    tok.save_pretrained(out)
    logs = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []
    steps = [e for e in logs if "reward" in e]
    curve = {k: [e.get(k) for e in steps] for k in
             ["reward", "kl", *(f"rewards/{f.__name__}/mean" for f in rewards), "episode/tool_calls",
              "episode/malformed_pct", "completions/mean_length"]}
    stats = {"questions": len(train), "skipped_toolmaker_failed": len(failed), "steps": result.global_step,
             "train_runtime_s": wall, "seconds_per_step": wall / max(1, result.global_step),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "curve": curve, "resumed_from": str(ckpt) if ckpt else None,
             # where a step's time goes: policy generation, the rest of the rollout (tools, ToolActor), the update
             "rollout_s": rollout.timing.get("rollout_s", 0.0), "generate_s": rollout.timing.get("generate_s", 0.0),
             "rollout_tokens_per_s": (rollout.timing.get("generated_tokens", 0) / rollout.timing["generate_s"]
                                      if rollout.timing.get("generate_s") else None)}
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
    console.print(f"grpo: {stats['steps']} steps in {wall:.0f}s ({stats['seconds_per_step']:.1f}s/step); "
                  f"checkpoint in {out}")
    return stats
