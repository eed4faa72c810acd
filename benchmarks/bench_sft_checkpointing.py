"""What gradient checkpointing costs SFT on a CPU: the learning benchmark's SFT with it on and off.

    .venv/bin/python benchmarks/bench_sft_checkpointing.py --data runs/bench-learning/quick/filter/sft.jsonl [--steps 2]

`--data` is an sft.jsonl as `mtr filter` writes it. Each variant runs `mtr sft` (`train_sft`) on it with the
learning benchmark's SFT settings (`bench_learning.base_config`: the embedded SmolLM2-135M, full fine-tuning,
each step's 4 traces packed into one row, what they begin with once) for `--steps` steps, with the
activations recomputed in the backward pass (the configs' setting) and kept. The same traces reach each
step either way, so the last loss must agree. Each variant runs in a process of its own (its peak resident
memory its own), alternated `--repeats` times. Prints the figures and writes them to
benchmarks/results/sft_checkpointing.json.
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
RESULTS = ROOT / "benchmarks" / "results" / "sft_checkpointing.json"
VARIANTS = ("checkpointing", "no checkpointing")


def one_variant(data: Path, steps: int, checkpointing: bool) -> dict:
    """In this process: `train_sft` on `data`; its time, peak RSS, tokens and last loss."""
    from bench_learning import PRESETS, base_config
    from mtr.stages.sft import train_sft

    cfg = base_config(PRESETS["quick"], 0)
    cfg.sft.trl = {**cfg.sft.trl, "max_steps": steps, "save_steps": 10 * steps,
                   "gradient_checkpointing": checkpointing}
    with tempfile.TemporaryDirectory() as out:
        stats = train_sft(cfg, data, Path(out) / "sft")
    return {"total_s": round(stats["train_runtime_s"], 1), "peak_rss_mb": round(stats["peak_rss_mb"]),
            "tokens_seen": stats["tokens_seen"], "loss_last": stats["loss_last"], "share_prompt": stats["share_prompt"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="an sft.jsonl (mtr filter's output)")
    ap.add_argument("--steps", type=int, default=2, help="SFT steps of 4 traces")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternated")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file (an sft.jsonl that mtr filter wrote)")
    if args.child:  # one variant, its figures as the last line of stdout
        print(json.dumps(one_variant(args.data, args.steps, args.child == "checkpointing")))
        return

    from bench_grpo_checkpointing import alternated, this_machine, variant_medians
    from bench_sft_packing import sft_data_fields

    runs = alternated(__file__, VARIANTS, args.repeats, ["--data", str(args.data), "--steps", str(args.steps)])
    median = variant_medians(runs, per_token=("ms_per_token", "tokens_seen"), copied=("tokens_seen", "loss_last"))
    on, off = median["checkpointing"], median["no checkpointing"]
    if not all(x["share_prompt"] for rs in runs.values() for x in rs):
        raise SystemExit("train_sft did not pack the traces (share_prompt false): not the learning benchmark's SFT")
    result = {**sft_data_fields(args.data, args.steps), "runs": runs, "median": median,
              "saved_pct": round(100 * (1 - off["total_s"] / on["total_s"]), 1),
              "extra_peak_rss_mb": off["peak_rss_mb"] - on["peak_rss_mb"],
              "loss_last_difference": abs(on["loss_last"] - off["loss_last"]),
              "model": "SmolLM2-135M-Instruct (embedded)", "config": "bench_learning.base_config", **this_machine()}
    print(f"SFT, {args.steps} steps of 4 packed traces (median of {args.repeats}): checkpointing {on['total_s']} s, "
          f"{on['peak_rss_mb']} MB; without {off['total_s']} s, {off['peak_rss_mb']} MB ({result['saved_pct']} % "
          f"less time; last loss {on['loss_last']:.6f} vs {off['loss_last']:.6f})")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
