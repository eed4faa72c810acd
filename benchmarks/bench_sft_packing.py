"""What training a micro-batch's shared beginning once saves SFT: traces one at a time against one packed row.

    .venv/bin/python benchmarks/bench_sft_packing.py --data runs/bench-learning/quick/filter/sft.jsonl [--steps 2] [--repeats 2]

`--data` is an sft.jsonl as `mtr filter` writes it (the learning benchmark's quick preset keeps 39 traces of
HotpotQA and 2WikiMultihopQA training questions, with the utility tools: every trace begins with the same
system message and tools). Both variants run `mtr sft` (`train_sft`) on it with the demo preset's settings
(the embedded SmolLM2-135M, full fine-tuning, gradient checkpointing, `--steps` steps of 4 traces):

    one at a time   sft.share_prompt off, per_device_train_batch_size 1 x gradient_accumulation_steps 4
                    (the demo's SFT: no padding, one trace's activations at a time)
    packed          sft.share_prompt on, per_device_train_batch_size 4: each step's 4 traces as one row,
                    what they all begin with once (the learning benchmark's SFT)

The same traces reach each step in both (the sampler's order does not depend on the micro-batch), so the
last loss must agree. Each variant runs in a process of its own (its peak resident memory its own),
alternated `--repeats` times. Prints the figures and writes them to benchmarks/results/sft_packing.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "sft_packing.json"
DEMO = ROOT / "src" / "mtr" / "configs" / "demo.yaml"
VARIANTS = {"one at a time": (1, 4, False), "packed": (4, 1, True)}  # micro-batch, accumulation, share_prompt


def one_variant(variant: str, data: Path, steps: int) -> dict:
    """In this process: `train_sft` on `data`; its time, peak RSS, tokens and last loss."""
    from mtr.config import load_config
    from mtr.stages.sft import train_sft

    micro, accumulation, share = VARIANTS[variant]
    cfg = load_config(DEMO)
    cfg.sft.trl = {**cfg.sft.trl, "max_steps": steps, "per_device_train_batch_size": micro,
                   "gradient_accumulation_steps": accumulation, "save_steps": 10 * steps}
    cfg.sft.share_prompt = share
    with tempfile.TemporaryDirectory() as out:
        stats = train_sft(cfg, data, Path(out) / "sft")
    return {"total_s": round(stats["train_runtime_s"], 1), "peak_rss_mb": round(stats["peak_rss_mb"]),
            "tokens_seen": stats["tokens_seen"], "loss_last": stats["loss_last"], "share_prompt": stats["share_prompt"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="an sft.jsonl (mtr filter's output)")
    ap.add_argument("--steps", type=int, default=2, help="SFT steps of 4 traces")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternated")
    ap.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file (an sft.jsonl that mtr filter wrote)")
    if args.child:  # one variant, its figures as the last line of stdout
        print(json.dumps(one_variant(args.child, args.data, args.steps)))
        return

    from bench_grpo_checkpointing import alternated, this_machine

    runs = alternated(__file__, tuple(VARIANTS), args.repeats, ["--data", str(args.data), "--steps", str(args.steps)])
    median = {v: {"total_s": round(statistics.median(x["total_s"] for x in rs), 1),
                  "peak_rss_mb": round(statistics.median(x["peak_rss_mb"] for x in rs)),
                  "tokens_seen": rs[0]["tokens_seen"], "loss_last": rs[0]["loss_last"]}
              for v, rs in runs.items()}
    alone, packed = median["one at a time"], median["packed"]
    if not all(x["share_prompt"] for x in runs["packed"]):
        raise SystemExit("packed: train_sft did not pack (share_prompt false in its stats)")
    data = args.data.resolve()
    result = {"data": str(data.relative_to(ROOT) if data.is_relative_to(ROOT) else data),
              "data_sha256": hashlib.sha256(args.data.read_bytes()).hexdigest(),
              "traces": sum(1 for line in args.data.read_text().splitlines() if line.strip()),
              "steps": args.steps, "traces_trained": 4 * args.steps, "runs": runs, "median": median,
              "saved_pct": round(100 * (1 - packed["total_s"] / alone["total_s"]), 1),
              "fewer_tokens_pct": round(100 * (1 - packed["tokens_seen"] / alone["tokens_seen"]), 1),
              "extra_peak_rss_mb": packed["peak_rss_mb"] - alone["peak_rss_mb"],
              "loss_last_difference": abs(packed["loss_last"] - alone["loss_last"]),
              "model": "SmolLM2-135M-Instruct (embedded)", "config": "src/mtr/configs/demo.yaml", **this_machine()}
    print(f"SFT, {args.steps} steps of 4 traces (median of {args.repeats}): one at a time {alone['total_s']} s, "
          f"{alone['peak_rss_mb']} MB; packed {packed['total_s']} s, {packed['peak_rss_mb']} MB "
          f"({result['saved_pct']} % less time, {result['fewer_tokens_pct']} % fewer tokens; last loss "
          f"{alone['loss_last']:.6f} vs {packed['loss_last']:.6f})")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
