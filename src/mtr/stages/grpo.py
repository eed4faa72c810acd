"""`mtr grpo`, Stage 2: GRPO on TRL's GRPOTrainer with MTR's multi-turn rollout against the ToolActor.

TRL calls `rollout_func(prompts, trainer)` with the prompts already repeated `num_generations` times
(grouped). Each entry is one episode in the same Environment as synthesis and evaluation, with
`RolloutAgent` (mtr.rollout) playing the policy on token ids; the Rubric scores each episode. The questions'
tools come from the tools stage's file (or are made here, once, and kept in `tools.jsonl`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console

from mtr.backends import BackendPool
from mtr.config import Config
from mtr.data import load_qa
from mtr.distributed import is_main
from mtr.env import Environment
from mtr.jsonl import jsonl_log_callback
from mtr.peak_memory import peak_rss_mb, reset_peak
from mtr.checkpoints import load_tokenizer, save_trained
from mtr.rollout import RolloutAgent, VLLMSampler, policy_for_generation
from mtr.rubric import REWARD_NAMES, Rubric, trl_log_key
from mtr.rundir import write_manifest
from mtr.trace import QAExample
from mtr.training import logprob_tiles, prepare_run, read_log, resume_point, trainer_args, write_stats

console = Console()
ROLES = ("toolmaker", "toolactor", "policy")


def stage_config(cfg: Config) -> dict[str, Any]:
    """What this stage's manifest records of the config (a change elsewhere leaves it alone)."""
    return cfg.stage_config(("grpo", "tools"), ROLES)


def questions_needed(trl: dict[str, Any], world_size: int = 1) -> int:
    """How many questions `max_steps` optimizer steps draw: each step takes per_device_train_batch_size x
    gradient_accumulation_steps rollouts on each process, num_generations of them per question."""
    rollouts = trl["max_steps"] * trl["per_device_train_batch_size"] * trl["gradient_accumulation_steps"] * world_size
    return -(-rollouts // trl["num_generations"])


def solvable_first(cfg: Config, env: Environment, examples: list[QAExample], init: Path, path: Path,
                   policy: Any = None, answers_from: Path | None = None) -> tuple[list[QAExample], int]:
    """The questions with those the policy at `init` answers at least partly right first (greedy, token F1 > 0,
    in the stage's Environment), each part in the file's order; and how many of them there are.

    The policy answers each question once; the answers go to `path` (a crash loses none, a re-run reads
    them). F1 rather than the answer reward's own metric: a 135M policy's greedy answer is rarely exact, but
    one that is partly right shows it finds the evidence, and a sampled group then answers differently.
    `answers_from`: another run's file of the same policy's answers, taken where `path` holds none yet
    (`take_answers`; with the other pre-check setting, those of episodes that made no invalid call only)."""
    from mtr.agents import PolicyAgent
    from mtr.jsonl import JsonlAppender, read_jsonl, run_pool, running_mean
    from mtr.metrics import f1_score

    if answers_from is not None:
        take_answers(path, Path(answers_from), env.precheck)
    out = JsonlAppender(path, id_key="id")
    todo = [ex for ex in examples if ex.id not in out.done]
    # a re-run that finds every answer loads no policy
    pool = None if policy is not None or not todo else BackendPool(cfg.with_policy(init))
    policy = policy or (pool.get("policy") if todo else None)
    agent = PolicyAgent(policy, seed=cfg.seed) if todo else None

    async def worker(ex: QAExample) -> dict[str, Any]:
        trace = await env.rollout(ex, agent, ex.id, seed=cfg.seed)
        return {"id": ex.id, "prediction": trace.final_answer, "f1": f1_score(trace.final_answer, ex.answers),
                "calls": len([s for s in trace.steps if s.call is not None]), "error": trace.error,
                "retryable": bool(trace.meta.get("retryable")), "precheck": env.precheck,
                "invalid_args": trace.meta.get("invalid_args", 0)}

    async def answer_all() -> None:
        try:
            # one batch a turn for every episode in flight, as in evaluation (mtr.stages.evaluate)
            await run_pool(todo, worker, out, cfg.episodes_in_flight("grpo"), "grpo: the initial policy answers",
                           status=running_mean("f1", "mean F1"), lockstep=policy)
        finally:
            out.close()
            if pool is not None:
                await pool.aclose()

    if todo:
        asyncio.run(answer_all())
    else:
        out.close()
    f1 = {r["id"]: r["f1"] for r in read_jsonl(path, latest_by="id")}
    solvable = [ex for ex in examples if f1.get(ex.id, 0.0) > 0]
    return solvable + [ex for ex in examples if f1.get(ex.id, 0.0) <= 0], len(solvable)


def draw_questions(env: Environment, examples: list[QAExample], needed: int | None, seed: int,
                   shuffle: bool = True) -> tuple[list[QAExample], dict[str, str]]:
    """The questions training will use, with their tools made (once; kept in the store's file).

    With `needed` below the number of questions, only that many are used: the first of a seeded shuffle (of
    the order given, without `shuffle`), and one more for each the ToolMaker failed on when failures are
    skipped. A short run on a large file then pays the ToolMaker for the questions it trains on, not for all."""
    order = list(examples)
    if needed is None or needed >= len(order):
        needed = len(order)
    elif shuffle:
        random.Random(seed).shuffle(order)
    chosen: list[QAExample] = []
    failed: dict[str, str] = {}
    if env.store is None:  # no tools in training (the tools-off ablation): every question is usable
        return order[:needed], failed
    while len(chosen) - len(failed) < needed and len(chosen) < len(order):
        chunk = order[len(chosen):len(chosen) + needed - (len(chosen) - len(failed))]
        chosen += chunk

        async def made(chunk=chunk):
            return await asyncio.gather(*[env.store.get(ex) for ex in chunk])

        with console.status(f"ToolMaker: tools for {len(chunk)} questions"):
            results = asyncio.run(made())
        server = [r for r in results if r.retryable]
        if server:
            # The server failed, not the model: drawing replacements would only fail them too.
            raise ValueError(f"{env.store.path}: the ToolMaker's backend failed on {len(server)} question(s), e.g. "
                             f"{server[0].error}; the tools made so far are kept, and a re-run retries the rest")
        failed.update({r.id: r.error for r in results if env.store.usable(r) is None})
    return [ex for ex in chosen if ex.id not in failed], failed


def padding_pct(batches: list[list[int]]) -> float | None:
    """The share of padding in generation batches padded to their longest episode (as TRL pads them), in %."""
    padded = sum(len(b) * max(b) for b in batches if b)
    return round(100 * (1 - sum(map(sum, batches)) / padded), 1) if padded else None


def make_rollout_func(cfg: Config, env: Environment, examples: list[QAExample], tokenizer: Any, out: Path):
    """The MTR rollout as TRL's `rollout_func`."""
    g, t = cfg.grpo, cfg.grpo.trl
    by_question = {ex.question: ex for ex in examples}
    calls = {"n": 0}
    timing: dict[str, float] = {}
    episode_tokens: list[list[int]] = []  # each rollout call's (generation batch's) episode lengths, for the stats

    def rollout_func(prompts: list, trainer: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        batch = [by_question[p[-1]["content"] if isinstance(p, list) else p] for p in prompts]
        step = getattr(getattr(trainer, "state", None), "global_step", 0)
        seeds = [cfg.seed + 1000 * step + i for i in range(len(batch))]
        ids = [f"{ex.id}#{i}" for i, ex in enumerate(batch)]
        # with vLLM the trainer's model is not needed for sampling (TRL has pushed its weights into vLLM)
        with nullcontext() if t.get("use_vllm") else policy_for_generation(trainer) as model:
            if t.get("use_vllm"):
                agent = RolloutAgent(VLLMSampler(trainer.vllm_generation, tokenizer, len(batch), timing, len(batch)),
                                     tokenizer, g.max_turn_tokens, t["max_completion_length"])
            else:
                agent = RolloutAgent.with_model(model, tokenizer, t["temperature"], g.max_turn_tokens,
                                                t["max_completion_length"], len(batch), timing)
            # a group (one question in one step) shares one world: the same observation for the same call, and
            # the same tool mode with a live share
            traces = asyncio.run(env.rollout_group(batch, agent, seeds, ids,
                                                   worlds=[cfg.seed + 1000 * step] * len(batch)))
        toks = [agent.episodes[tr.id] for tr in traces]
        episode_tokens.append([len(x.prompt_ids) + len(x.completion_ids) for x in toks])
        timing["rollout_s"] = timing.get("rollout_s", 0.0) + time.perf_counter() - t0
        main = getattr(getattr(trainer, "accelerator", None), "is_main_process", True)
        if main and step % g.sample_every == 0 and calls["n"] != step + 1:
            calls["n"] = step + 1
            with (out / "samples.jsonl").open("a") as f:
                for tr in traces[:2]:
                    f.write(json.dumps({"step": step, "trace": tr.model_dump(mode="json", exclude_none=True)}) + "\n")
        logprobs = [x.logprobs for x in toks] if all(x.logprobs is not None for x in toks) else None
        return {"prompt_ids": [x.prompt_ids for x in toks], "completion_ids": [x.completion_ids for x in toks],
                "logprobs": logprobs, "env_mask": [x.env_mask for x in toks],
                "episode": [tr.model_dump(mode="json", exclude_none=True) for tr in traces]}

    rollout_func.timing = timing  # type: ignore[attr-defined]
    rollout_func.episode_tokens = episode_tokens  # type: ignore[attr-defined]
    return rollout_func


def take_answers(path: Path, source: Path, precheck: bool | None = None) -> int:
    """Start the initial policy's answers at `path` (solvable_first's file) from another run's at `source`,
    where `path` holds none yet and `source` exists; how many it took (0: none). With `precheck` (this run's
    pre-check), an answer is taken if it was made with the same setting (a row that does not say was made
    with it on, the default) or its episode called no tool with invalid arguments, the one place the setting
    changes an episode; solvable_first answers the others. A last line cut short (the other run stopped while
    writing it) is left for solvable_first to answer, as its own file's would be."""
    from mtr.jsonl import json_lines

    if path.is_file() or not source.is_file():
        return 0
    lines = list(json_lines(source))
    torn = [n for n, r in lines if r is None]
    if torn and torn != [lines[-1][0]]:
        raise ValueError(f"{source}:{torn[0]}: corrupt record; its answers are not taken")
    rows = [r for _, r in lines if r is not None
            and (precheck is None or r.get("precheck", True) == precheck or r.get("invalid_args") == 0)]
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")  # whole or not at all: a file there is taken as this run's own answers
    part.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    part.replace(path)
    return len(rows)


def train_grpo(cfg: Config, data: Path, init: Path, out: Path, limit: int | None = None, resume: bool = False,
               overwrite: bool = False, pool: Any = None, tools_path: Path | None = None,
               candidates: int | None = None, solvable_mode: str | None = None,
               solvable_from: Path | None = None) -> dict[str, Any]:
    """GRPO from the checkpoint `init` on the first `limit` questions of `data` (with `question_order:
    solvable-first`, the first `limit` of that order, chosen among the file's first `candidates`: all of it
    when None; which ones the policy answers is judged with the stage's tools, or in `solvable_mode`'s, e.g.
    `live` for a run against simulated tools that is to train on the live-tool run's questions). Their tools
    come from `tools_path` (the tools stage's file), or are made and kept in `out/tools.jsonl`.

    `solvable_from`: the `solvable.jsonl` of another run from the same `init`, judged with the same tools (another
    draw of it, seeded apart): its greedy answers are taken as this run's, and only questions it lacks are
    answered here. The caller vouches for the same init and tools; the seed does not enter a greedy answer."""
    from datasets import Dataset
    from trl import GRPOConfig

    from mtr.grpo_trainer import UnpaddedGRPOTrainer
    from mtr.toolmaker import QuestionTools, ToolStore

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    reset_peak()  # this stage's own peak memory, also when it shares the process with others (mtr run)
    g, t = cfg.grpo, cfg.grpo.trl
    if t.get("use_vllm"):
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            raise ValueError("grpo.trl.use_vllm: vLLM is not installed here (it needs a CUDA GPU; pip install "
                             "'trl[vllm]'); set it to false to sample with transformers")
    if not (Path(init) / "config.json").is_file():
        raise ValueError(f"--init {init}: not a Hugging Face checkpoint directory (e.g. the output of `mtr sft`)")
    solvable_order = g.question_order == "solvable-first"
    # with the solvable questions first, `limit` applies to that order, not to the file's
    examples = load_qa(data, candidates if solvable_order else limit)
    tok = load_tokenizer(Path(init))
    rubric = Rubric.from_config(g)
    # The arguments first: creating them sets up the processes under a launcher, and the run directory and
    # the tools are then prepared by the main process alone. With vLLM one request is one turn, and TRL's
    # max_completion_length stays the whole episode's budget.
    fixed: dict[str, Any] = {"reward_weights": rubric.trl_weights()}
    if t.get("use_vllm"):
        fixed.update(vllm_mode=t.get("vllm_mode", "colocate"),
                     generation_kwargs={"max_tokens": g.max_turn_tokens, "stop_token_ids": [tok.eos_token_id]})
    args = trainer_args(GRPOConfig, "grpo", t, out, cfg.seed, fixed=fixed)
    main = is_main(args)
    own_pool = pool is None
    pool = pool or BackendPool(cfg)
    needed = questions_needed(t, args.world_size)
    tools_file = Path(tools_path) if tools_path else out / "tools.jsonl"
    env = Environment.from_config(cfg, "grpo", pool)

    def prepare() -> tuple[list[str], dict[str, str], list[dict], int | None]:
        # the main process alone reads and adds to the tools file (after --overwrite has cleared it)
        if env.store is not None:
            env.store = ToolStore.from_config(cfg, pool, tools_file)
        write_manifest(out, "grpo", stage_config(cfg), {"data": Path(data)},
                       extra={"init": str(init), "limit": limit}, overwrite=overwrite)
        order, solvable = examples, None
        if solvable_order:
            judge = env if solvable_mode in (None, env.mode) else Environment.from_config(
                cfg, "grpo", pool, tools_path=tools_file, mode=solvable_mode, store=env.store)
            order, solvable = solvable_first(cfg, judge, examples, Path(init), out / "solvable.jsonl",
                                             answers_from=solvable_from)
            order = order[:limit] if limit else order
            console.print(f"grpo: the initial policy answers {solvable} of {len(examples)} questions at least "
                          f"partly right; {'they come' if solvable else 'none comes'} first")
        chosen, failed = draw_questions(env, order, needed, cfg.seed, shuffle=not solvable_order)
        made = env.store.made if env.store is not None else {}
        return [ex.id for ex in chosen], failed, [made[ex.id].record() for ex in chosen if ex.id in made], solvable

    files = ("log.jsonl", "samples.jsonl", "train_stats.json", "solvable.jsonl") + (
        () if tools_path else ("tools.jsonl",))
    chosen_ids, failed, records, solvable = prepare_run(args, out, overwrite, files, prepare)
    for rec in records:  # the other ranks get the tools from the main process, not from a shared file
        env.store.made.setdefault(rec["id"], QuestionTools.model_validate(rec))
    by_id = {ex.id: ex for ex in examples}
    train = [by_id[qid] for qid in chosen_ids]  # in the order drawn
    # A subset is already a seeded shuffle; kept in that order, a resume with more steps draws the same
    # first questions (TRL's own shuffle would permute a larger set differently).
    available = min(limit, len(examples)) if limit else len(examples)  # what the draw chose from
    args.shuffle_dataset = needed >= available
    if main:
        console.print(f"grpo: {len(train)} questions to train on ({t['max_steps']} steps draw "
                      f"{min(needed, available)} of {available}); {len(failed)} skipped because the "
                      "ToolMaker failed")
    if not train:
        raise ValueError(f"{data}: no question has tools (the ToolMaker failed on all {len(examples)}); "
                         f"see {tools_file}, or set tools.on_failure: utilities")
    questions = [ex.question for ex in train]
    if len(set(questions)) != len(questions):
        raise ValueError(f"{data}: two records share a question text; the rollout identifies questions by text")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": ex.question}], "qid": ex.id}
                                 for ex in train])
    rollout = make_rollout_func(cfg, env, train, tok, out)
    trainer = UnpaddedGRPOTrainer(model=str(init), reward_funcs=rubric.trl_reward_funcs(), args=args,
                                  train_dataset=dataset, processing_class=tok,
                                  callbacks=[jsonl_log_callback(out / "log.jsonl", out / "samples.jsonl")],
                                  rollout_func=rollout,
                                  peft_config=g.peft_config(), share_prompt=g.share_prompt)
    ckpt = resume_point(args, out, resume)
    t0 = time.perf_counter()
    try:
        with logprob_tiles(args) as tile:
            result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    finally:
        env.close()
        if own_pool:
            asyncio.run(pool.aclose())
    wall = time.perf_counter() - t0
    save_trained(trainer, args, out, tok, base=Path(init), lora=g.lora_on, dtype="auto")  # as TRL loaded it
    steps = [e for e in read_log(out) if "reward" in e]
    curve = {k: [e.get(k) for e in steps] for k in
             ["reward", "kl", *(trl_log_key(n) for n in REWARD_NAMES),
              *(trl_log_key(n).replace("/mean", "/std") for n in REWARD_NAMES), "episode/tool_calls",
              "episode/well_formed_pct", "episode/answered_pct", "episode/malformed_pct", "completions/mean_length"]}
    timing = rollout.timing
    stats = {"questions": len(train), "skipped_toolmaker_failed": len(failed), "steps": result.global_step,
             "train_runtime_s": wall, "seconds_per_step": wall / max(1, result.global_step),
             "peak_rss_mb": peak_rss_mb(), "curve": curve, "resumed_from": str(ckpt) if ckpt else None,
             # where a step's time goes: policy generation, the rest of the rollout (tools, ToolActor), the update
             "rollout_s": timing.get("rollout_s", 0.0), "generate_s": timing.get("generate_s", 0.0),
             "rollout_tokens_per_s": (timing.get("generated_tokens", 0) / timing["generate_s"]
                                      if timing.get("generate_s") else None),
             "processes": args.world_size, "solvable_questions": solvable, "logprob_tile": tile,
             # whether a group's episodes were scored as one sequence, the prompt once (UnpaddedGRPOTrainer)
             "share_prompt": trainer.share_prompt, "episode_tokens": rollout.episode_tokens,
             # what padding each batch to its longest episode would add to the passes (UnpaddedGRPOTrainer skips it)
             "padding_pct": padding_pct(rollout.episode_tokens)}
    write_stats(args, out, stats, f"grpo: {stats['steps']} steps in {wall:.0f}s ({stats['seconds_per_step']:.1f}s/step)")
    return stats
