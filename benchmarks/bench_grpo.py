"""Does Stage 2 learn on this machine? A short GRPO run at the CPU preset, and where its time goes.

    .venv/bin/python benchmarks/bench_grpo.py --init SFT_CHECKPOINT [--questions 4] [--steps 12] [--seed 0]

Trains on HotpotQA dev questions from 100 on (by default the comparison questions: "which is older, A or
B?", where a 135M policy's answer is sometimes right, so a group's rewards differ and GRPO has a signal)
with `configs/grpo-cpu.yaml`, then reports each reward component,
the total reward, KL, tool calls and malformed % over the first and last pass over the questions, seconds
per step, rollout tokens/s, the share of a step spent generating, and peak RSS.
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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    for k, v in summary.items():
        print(f"{k:40s} first {v['first']!s:>22} last {v['last']!s:>22}")
    print(f"{res['seconds_per_step']:.1f} s/step; rollout {res['rollout_tokens_per_s'] or 0:.1f} tokens/s; "
          f"generate {100 * res['share_generate']:.0f}% / tools {100 * res['share_rollout_other']:.0f}% / "
          f"update {100 * res['share_update']:.0f}% of the time; peak RSS {res['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
