"""What LoRA changes in a GRPO step's time and memory on a CPU: the same steps, full fine-tuning against LoRA.

    .venv/bin/python benchmarks/bench_grpo_lora.py --policy runs/bench-learning/quick/sft-s0 [--steps 2]

Each variant trains `--steps` GRPO steps (`train_grpo`, the learning benchmark's settings: groups of 4, live
tools, the file's question order) from the same SFT policy on the same training questions, with the same
seed, in a process of its own (its peak resident memory its own); the variants alternate `--repeats` times:

    full fine-tuning   every weight trained, learning rate 3e-5, a frozen copy of the policy as the KL reference
    LoRA               peft adapters of rank 16 (alpha 32, dropout 0) on every linear layer, learning rate 2e-4
                       (run `main-lora-s2` of docs/learning.md); the reference is the policy with them switched off

A LoRA adapter starts at zero, so both variants' first step rolls out the same policy; whether it samples
the same episodes depends on the random state the adapters' set-up leaves (`first_step_alike` says); later
steps differ as the two updates do. A step's time splits into the rollout (generating the
episodes, tools included) and the update (the reference pass, the loss forward and backward, the optimizer's
step), whose cost per scored token is comparable across the variants. Prints the figures and writes them to
benchmarks/results/grpo_lora.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "grpo_lora.json"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
VARIANTS = {"full fine-tuning": (None, 3e-5), "LoRA": (LORA, 2e-4)}


def one_variant(variant: str, policy: Path, steps: int) -> dict:
    """In this process: `steps` GRPO steps from `policy`; the rollout's and the update's seconds, the tokens
    the update scored, the peak RSS and the first step's mean completion length."""
    import bench_learning as bl
    from mtr.stages.grpo import train_grpo

    lora, lr = VARIANTS[variant]
    cfg = bl.base_config(bl.PRESETS["main"], 0)
    cfg.grpo = cfg.grpo.model_copy(update={
        "question_order": "file", "lora": lora,
        "trl": {**cfg.grpo.trl, "learning_rate": lr, "max_steps": steps, "save_steps": steps + 1}})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        train = bl.training_file(out, steps)
        stats = train_grpo(cfg, train, policy, out / "grpo", limit=steps, overwrite=True)
        logged = [json.loads(line) for line in (out / "grpo" / "log.jsonl").read_text().splitlines() if line.strip()]
    lengths = [r["completions/mean_length"] for r in logged if "completions/mean_length" in r]
    update_s = stats["train_runtime_s"] - stats["rollout_s"]
    tokens = sum(sum(group) for group in stats["episode_tokens"])
    return {"total_s": round(stats["train_runtime_s"], 1), "rollout_s": round(stats["rollout_s"], 1),
            "update_s": round(update_s, 1), "tokens": tokens, "update_ms_per_token": round(1000 * update_s / tokens, 2),
            "rollout_tokens_per_s": round(stats["rollout_tokens_per_s"], 2), "peak_rss_mb": round(stats["peak_rss_mb"]),
            "first_step_mean_length": lengths[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, required=True, help="an SFT checkpoint (the learning benchmark's sft-s0)")
    ap.add_argument("--steps", type=int, default=2, help="GRPO steps of one group of 4 episodes")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternated")
    ap.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (args.policy / "config.json").is_file():
        raise SystemExit(f"--policy {args.policy}: no config.json (a checkpoint that mtr sft wrote)")
    if args.child:  # one variant, its figures as the last line of stdout
        print(json.dumps(one_variant(args.child, args.policy, args.steps)))
        return

    from bench_eval_memory import median as medians
    from bench_grpo_checkpointing import alternated, this_machine

    runs = alternated(__file__, tuple(VARIANTS), args.repeats,
                      ["--policy", str(args.policy), "--steps", str(args.steps)])
    median = medians(runs, ("total_s", "rollout_s", "update_s", "update_ms_per_token", "rollout_tokens_per_s",
                            "peak_rss_mb"))
    full, lora = median["full fine-tuning"], median["LoRA"]
    policy = args.policy.resolve()
    result = {"policy": str(policy.relative_to(ROOT) if policy.is_relative_to(ROOT) else policy),
              "steps": args.steps, "repeats": args.repeats, "lora": LORA, "learning_rates": {v: lr for v, (_, lr) in VARIANTS.items()},
              "runs": runs, "median": median,
              "update_ms_per_token_saved_pct": round(100 * (1 - lora["update_ms_per_token"] / full["update_ms_per_token"]), 1),
              "rollout_tokens_per_s_ratio": round(lora["rollout_tokens_per_s"] / full["rollout_tokens_per_s"], 2),
              "peak_rss_saved_mb": round(full["peak_rss_mb"] - lora["peak_rss_mb"]),
              "first_step_alike": all(x["first_step_mean_length"] == runs["full fine-tuning"][0]["first_step_mean_length"]
                                      for rs in runs.values() for x in rs),
              "model": "SmolLM2-135M-Instruct (embedded) after SFT", "config": "bench_learning.base_config (main)",
              **this_machine()}
    print(f"GRPO, {args.steps} steps (median of {args.repeats}): full fine-tuning {full['total_s']} s "
          f"(rollout {full['rollout_s']}, update {full['update_s']}: {full['update_ms_per_token']} ms a token), "
          f"{full['peak_rss_mb']:.0f} MB; LoRA {lora['total_s']} s (rollout {lora['rollout_s']}, update "
          f"{lora['update_s']}: {lora['update_ms_per_token']} ms a token), {lora['peak_rss_mb']:.0f} MB")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
