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


def evaluate_policy(cfg, path: Path, examples: list, tools_file: Path, samples: int, seed: int) -> dict:
    """Roll out `path` `samples` times on each question, as a GRPO step does but without the update."""
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM

    from mtr.backends import BackendPool
    from mtr.checkpoints import load_tokenizer
    from mtr.env import Environment
    from mtr.rollout import RolloutAgent
    from mtr.rubric import REWARD_NAMES, Rubric, health

    g, t = cfg.grpo, cfg.grpo.trl
    torch.manual_seed(seed)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    pool = BackendPool(cfg)
    env = Environment.from_config(cfg, "grpo", pool, tools_file)
    batch = [ex for ex in examples for _ in range(samples)]
    # one lockstep batch per group, as training samples them (a batch of all episodes would change nothing
    # but the speed, and a group of 4 is the shape every figure in docs/performance.md is at)
    traces = []
    n = t["num_generations"]
    for start in range(0, len(batch), n):
        group = batch[start:start + n]
        agent = RolloutAgent.with_model(model, tok, t["temperature"], g.max_turn_tokens, t["max_completion_length"],
                                        len(group))
        traces += asyncio.run(env.rollout_group(group, agent, [seed + start + j for j in range(len(group))]))
    env.close()
    asyncio.run(pool.aclose())
    rubric = Rubric.from_config(g)
    scores = [rubric.score(tr) for tr in traces]
    h = health(traces)
    res = {"policy": str(path), "reward": mean_se([sc["total"] for sc in scores]),
           **{n: mean_se([sc[n] for sc in scores]) for n in REWARD_NAMES},
           "no_answer_pct": h["no_answer_pct"], "malformed_pct": h["malformed_pct"], "tool_calls": h["tool_calls"]}
    print(f"{path}: reward {res['reward']['mean']:.3f} +- {res['reward']['se']:.3f}; " + ", ".join(
        f"{n} {res[n]['mean']:.3f}" for n in REWARD_NAMES) + f"; no answer {res['no_answer_pct']:.0f}%", flush=True)
    return res


def compare_policies(cfg, paths: list[str], data: Path, tools_file: Path, samples: int, seed: int) -> dict:
    """Each policy on the same questions and tools, `samples` episodes per question; differences to the first."""
    from mtr.data import load_qa
    from mtr.jsonl import read_jsonl

    made = {rec["id"] for rec in read_jsonl(tools_file)}
    examples = [ex for ex in load_qa(data) if ex.id in made]
    cfg.tools.on_failure = "utilities"  # every question the policies trained on
    runs = [evaluate_policy(cfg, Path(p), examples, tools_file, samples, seed) for p in paths]
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
    from mtr.stages.grpo import train_grpo

    work = Path(args.work or tempfile.mkdtemp(prefix="mtr-bench-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    records = [r for r in resolve_benchmark("hotpotqa").read_text().splitlines()[100:]
               if args.type == "any" or json.loads(r)["metadata"]["type"] == args.type][: args.questions]
    data = work / "train.jsonl"
    data.write_text("\n".join(records) + "\n")
    cfg = load_config(DEFAULT_CONFIG.parent / "grpo-cpu.yaml")
    cfg.seed = args.seed
    cfg.grpo.trl.update(max_steps=args.steps, report_to=[], save_steps=10_000)
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
