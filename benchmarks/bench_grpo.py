"""Does Stage 2 learn on this machine? A short GRPO run at the CPU preset, and where its time goes.

    .venv/bin/python benchmarks/bench_grpo.py --init SFT_CHECKPOINT [--questions 4] [--steps 12] [--seed 0]

Trains on HotpotQA dev questions from 100 on (by default the comparison questions: "which is older, A or
B?", where a 135M policy's answer is sometimes right, so a group's rewards differ and GRPO has a signal)
with `configs/grpo-cpu.yaml`, then reports each reward component,
the total reward, KL, tool calls and malformed % over the first and last pass over the questions, seconds
per step, rollout tokens/s, the share of a step spent generating, and peak RSS.

The training curve is one group a step, too few episodes to tell a trend from sampling noise. So the
policies are also compared on a fixed sample: `--eval-samples K` rolls out the init and the trained policy
K times on each training question (the preset's temperature, no update) and reports each reward component's
mean and standard error. `--evaluate INIT,TRAINED,...` does only that, for policies trained earlier:

    .venv/bin/python benchmarks/bench_grpo.py --init SFT --evaluate SFT,RUN1,RUN2 --tools RUN1/tools.jsonl \
        --eval-samples 8 --out benchmarks/results/grpo_eval.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path


def ends(values: list, k: int = 3) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals[:k]), statistics.mean(vals[-k:])


def mean_se(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "se": sd / len(values) ** 0.5, "n": len(values)}


def evaluate_policy(cfg, path: Path, examples: list, tools: dict, samples: int, seed: int) -> dict:
    """Roll out `path` `samples` times on each question, as a GRPO step does but without the update."""
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM

    from mtr.backends import BackendPool
    from mtr.episode import run_episode
    from mtr.grpo import ModelSampler, RolloutAgent
    from mtr.prompts import fill
    from mtr.rewards import REWARD_NAMES, trl_reward_funcs
    from mtr.roles import ToolActor
    from mtr.sft import load_policy_tokenizer

    g = cfg.grpo
    torch.manual_seed(seed)
    tok = load_policy_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    pool = BackendPool(cfg)
    actor = ToolActor(pool.get("toolactor"), grounding=g.grounding)
    batch = [ex for ex in examples for _ in range(samples)]
    timing: dict[str, float] = {}
    # one lockstep batch per group, as training samples them (a batch of all episodes would change nothing
    # but the speed, and a group of 4 is the shape every figure in docs/performance.md is at)
    traces = []
    for start in range(0, len(batch), g.num_generations):
        group = batch[start:start + g.num_generations]
        agent = RolloutAgent(ModelSampler(model, tok, g.temperature, len(group), timing, len(group)), tok,
                             g.max_turn_tokens, g.max_completion_tokens)

        async def episode(i: int, ex, agent=agent):
            try:
                return await run_episode(ex, f"{ex.id}#{i}", tools[ex.id], agent, actor, fill("policy"),
                                         max_steps=g.max_steps, seed=seed + i, meta={"seed": seed + i})
            finally:
                agent.sampler.episode_ended()

        async def episodes(group=group, start=start):
            return await asyncio.gather(*[episode(start + j, ex) for j, ex in enumerate(group)])

        traces += asyncio.run(episodes())
    asyncio.run(pool.aclose())
    scores = {n: f(prompts=[None] * len(traces), completions=[None] * len(traces), episode=traces)
              for n, f in zip(REWARD_NAMES, trl_reward_funcs(g.answer_metric, g.call_budget, g.call_penalty))}
    total = [sum(g.reward_weights.get(n, 0.0) * scores[n][i] for n in REWARD_NAMES) for i in range(len(traces))]
    res = {"policy": str(path), "reward": mean_se(total), **{n: mean_se(v) for n, v in scores.items()},
           "no_answer_pct": 100.0 * sum(t.final_answer is None for t in traces) / len(traces),
           "malformed_pct": 100.0 * sum(not s.ok for t in traces for s in t.steps) /
           max(1, sum(len(t.steps) for t in traces)),
           "tool_calls": statistics.mean(len(t.calls) for t in traces)}
    print(f"{path}: reward {res['reward']['mean']:.3f} +- {res['reward']['se']:.3f}; " + ", ".join(
        f"{n} {res[n]['mean']:.3f}" for n in REWARD_NAMES) + f"; no answer {res['no_answer_pct']:.0f}%", flush=True)
    return res


def compare_policies(cfg, paths: list[str], data: Path, tools_file: Path, samples: int, seed: int) -> dict:
    """Each policy on the same questions and tools, `samples` episodes per question; differences to the first."""
    from mtr.data import load_qa
    from mtr.jsonl import read_jsonl
    from mtr.roles import utility_tools
    from mtr.trace import ToolSchema

    examples = load_qa(data)
    tools = {}
    for rec in read_jsonl(tools_file):
        tools[rec["id"]] = ([ToolSchema.model_validate(t) for t in rec["tools"]] if rec["error"] is None
                            else utility_tools(cfg.grpo.utility_tools))  # as on_toolmaker_failure: utilities
    examples = [ex for ex in examples if ex.id in tools]
    runs = [evaluate_policy(cfg, Path(p), examples, tools, samples, seed) for p in paths]
    base = runs[0]
    for r in runs[1:]:
        r["difference"] = {k: {"mean": r[k]["mean"] - base[k]["mean"],
                               "se": (r[k]["se"] ** 2 + base[k]["se"] ** 2) ** 0.5}
                           for k in base if isinstance(base[k], dict)}
    return {"questions": len(examples), "samples_per_question": samples, "policies": runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--questions", type=int, default=4, help="each visited steps/questions times")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--type", default="comparison", choices=["comparison", "bridge", "any"],
                    help="HotpotQA question type to train on")
    ap.add_argument("--tools", default=None, help="a tools.jsonl from an earlier run on the same questions "
                                                    "(skips the ToolMaker)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--sim-backend", default="llamacpp", choices=["llamacpp", "hf"])
    ap.add_argument("--out", default="benchmarks/results/grpo.json")
    ap.add_argument("--eval-samples", type=int, default=0,
                    help="after training, roll out the init and the trained policy this many times per question")
    ap.add_argument("--evaluate", default=None,
                    help="comma-separated policy checkpoints to compare (no training); the first is the baseline")
    args = ap.parse_args()
    from mtr.config import DEFAULT_CONFIG, RoleConfig, load_config
    from mtr.data import resolve_benchmark
    from mtr.grpo import train_grpo

    work = Path(args.work or tempfile.mkdtemp(prefix="mtr-bench-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    records = [r for r in resolve_benchmark("hotpotqa").read_text().splitlines()[100:]
               if args.type == "any" or json.loads(r)["metadata"]["type"] == args.type][: args.questions]
    data = work / "train.jsonl"
    data.write_text("\n".join(records) + "\n")
    cfg = load_config(DEFAULT_CONFIG.parent / "grpo-cpu.yaml")
    cfg.seed, cfg.grpo.train_steps, cfg.grpo.report_to, cfg.grpo.save_steps = args.seed, args.steps, [], 10_000
    if args.sim_backend == "llamacpp":  # ToolMaker and ToolActor on llama.cpp; the policy trains in transformers
        for role in ("toolmaker", "toolactor"):
            rc = cfg.role(role)
            setattr(cfg.roles, role, RoleConfig(backend="llamacpp", temperature=rc.temperature,
                                                max_tokens=rc.max_tokens))
    if args.evaluate:
        if not args.tools:
            raise SystemExit("--evaluate needs --tools (the tools.jsonl the policies were trained with)")
        res = {"evaluation": compare_policies(cfg, args.evaluate.split(","), data, Path(args.tools),
                                              args.eval_samples or 8, args.seed)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        return
    if args.tools:  # a fresh run whose ToolMaker work is already done
        shutil.rmtree(work / "grpo", ignore_errors=True)
        (work / "grpo").mkdir()
        shutil.copy(args.tools, work / "grpo" / "tools.jsonl")
    stats = train_grpo(cfg, data, Path(args.init), work / "grpo", overwrite=not args.tools)
    curve = stats["curve"]
    # first and last pass over the questions (one question a step at the CPU preset): the same questions
    summary = {k: dict(zip(("first", "last"), ends(v, k=args.questions))) for k, v in curve.items()}
    res = {"init": args.init, "questions": stats["questions"], "steps": stats["steps"],
           "seconds_per_step": stats["seconds_per_step"], "peak_rss_mb": stats["peak_rss_mb"],
           "rollout_tokens_per_s": stats["rollout_tokens_per_s"],
           "share_generate": stats["generate_s"] / stats["train_runtime_s"],
           "share_rollout_other": (stats["rollout_s"] - stats["generate_s"]) / stats["train_runtime_s"],
           "share_update": 1 - stats["rollout_s"] / stats["train_runtime_s"],
           "summary": summary, "curve": curve, "work": str(work)}
    if args.eval_samples:
        res["evaluation"] = compare_policies(cfg, [args.init, str(work / "grpo")], data, work / "grpo" / "tools.jsonl",
                                             args.eval_samples, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    for k, v in summary.items():
        print(f"{k:40s} first {v['first']!s:>22} last {v['last']!s:>22}")
    print(f"{res['seconds_per_step']:.1f} s/step; rollout {res['rollout_tokens_per_s'] or 0:.1f} tokens/s; "
          f"generate {100 * res['share_generate']:.0f}% / tools {100 * res['share_rollout_other']:.0f}% / "
          f"update {100 * res['share_update']:.0f}% of the time; peak RSS {res['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
