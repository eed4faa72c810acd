"""What training a micro-batch's shared beginning once saves SFT: traces one at a time against one packed row.

    .venv/bin/python benchmarks/bench_sft_packing.py --data runs/bench-learning/main/filter/sft.jsonl [--steps 2] [--repeats 2]

`--data` is an sft.jsonl as `mtr filter` writes it (the learning benchmark's main preset kept 39 traces of
HotpotQA and 2WikiMultihopQA training questions, with the utility tools: every trace begins with the same
system message and tools). Every variant runs `mtr sft` (`train_sft`) on it with the demo preset's settings
(the embedded SmolLM2-135M, full fine-tuning, gradient checkpointing, `--steps` steps of 4 traces):

    one at a time   sft.share_prompt off, per_device_train_batch_size 1 x gradient_accumulation_steps 4
                    (the demo's SFT: no padding, one trace's activations at a time)
    packed          sft.share_prompt on, per_device_train_batch_size 4: each step's 4 traces as one row,
                    what they all begin with once (the learning benchmark's SFT)

Each also runs with TRL's own tile for its fused head (`trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE`, 4,096
positions) in place of mtr's on a CPU (`mtr.training.CPU_LOGPROB_TILE`): what the smaller tile saves.

The same traces reach each step in all (the sampler's order does not depend on the micro-batch), so the
last loss must agree. Each variant runs in a process of its own (its peak resident memory its own),
alternated `--repeats` times. Prints the figures and writes them to benchmarks/results/sft_packing.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "sft_packing.json"
DEMO = ROOT / "src" / "mtr" / "configs" / "demo.yaml"
# micro-batch, accumulation, share_prompt, TRL's own logprob tile
VARIANTS = {"one at a time": (1, 4, False, False), "packed": (4, 1, True, False),
            "one at a time, TRL's tile": (1, 4, False, True), "packed, TRL's tile": (4, 1, True, True)}


def one_variant(variant: str, data: Path, steps: int) -> dict:
    """In this process: `train_sft` on `data`; its time, peak RSS, tokens and last loss."""
    from trl.kernels import chunked_logprob

    from mtr import training
    from mtr.config import load_config
    from mtr.stages.sft import train_sft

    micro, accumulation, share, trl_tile = VARIANTS[variant]
    if trl_tile:
        training.CPU_LOGPROB_TILE = chunked_logprob.TOKEN_CHUNK_SIZE
    cfg = load_config(DEMO)
    cfg.sft.trl = {**cfg.sft.trl, "max_steps": steps, "per_device_train_batch_size": micro,
                   "gradient_accumulation_steps": accumulation, "save_steps": 10 * steps}
    cfg.sft.share_prompt = share
    with tempfile.TemporaryDirectory() as out:
        stats = train_sft(cfg, data, Path(out) / "sft")
    return {"total_s": round(stats["train_runtime_s"], 1), "peak_rss_mb": round(stats["peak_rss_mb"]),
            "tokens_seen": stats["tokens_seen"], "loss_last": stats["loss_last"], "share_prompt": stats["share_prompt"],
            "logprob_tile": stats["logprob_tile"]}


def sft_data_fields(data: Path, steps: int) -> dict:
    """What an SFT timing file records of its data: the file (relative to the repository), its hash, its
    traces, and the steps of 4 traces timed."""
    path = data.resolve()
    return {"data": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "traces": sum(1 for line in data.read_text().splitlines() if line.strip()),
            "steps": steps, "traces_trained": 4 * steps}


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

    from bench_grpo_checkpointing import alternated, this_machine, variant_medians

    runs = alternated(__file__, tuple(VARIANTS), args.repeats, ["--data", str(args.data), "--steps", str(args.steps)])
    median = variant_medians(runs, copied=("tokens_seen", "loss_last", "logprob_tile"))
    alone, packed = median["one at a time"], median["packed"]
    for v, rs in runs.items():
        if any(x["share_prompt"] != VARIANTS[v][2] for x in rs):
            raise SystemExit(f"{v}: train_sft's share_prompt was not {VARIANTS[v][2]} (see its train_stats.json)")
    # what mtr's tile saves against TRL's, each way of batching
    tile = {v: {"saved_pct": round(100 * (1 - median[v]["total_s"] / median[f"{v}, TRL's tile"]["total_s"]), 1),
                "peak_rss_saved_mb": median[f"{v}, TRL's tile"]["peak_rss_mb"] - median[v]["peak_rss_mb"]}
            for v in ("one at a time", "packed")}
    result = {**sft_data_fields(args.data, args.steps), "runs": runs, "median": median,
              "saved_pct": round(100 * (1 - packed["total_s"] / alone["total_s"]), 1),
              "fewer_tokens_pct": round(100 * (1 - packed["tokens_seen"] / alone["tokens_seen"]), 1),
              "extra_peak_rss_mb": packed["peak_rss_mb"] - alone["peak_rss_mb"],
              "loss_last_difference": max(abs(x["loss_last"] - alone["loss_last"]) for x in median.values()),
              "mtr_tile": alone["logprob_tile"], "trl_tile": median["packed, TRL's tile"]["logprob_tile"],
              "tile_against_trl": tile,
              "model": "SmolLM2-135M-Instruct (embedded)", "config": "src/mtr/configs/demo.yaml", **this_machine()}
    print(f"SFT, {args.steps} steps of 4 traces (median of {args.repeats}): one at a time {alone['total_s']} s, "
          f"{alone['peak_rss_mb']} MB; packed {packed['total_s']} s, {packed['peak_rss_mb']} MB "
          f"({result['saved_pct']} % less time, {result['fewer_tokens_pct']} % fewer tokens; last loss "
          f"{alone['loss_last']:.6f} vs {packed['loss_last']:.6f})")
    for v, t in tile.items():
        print(f"{v}: tile of {result['mtr_tile']} positions against TRL's {result['trl_tile']}: {t['saved_pct']} % "
              f"less time, {t['peak_rss_saved_mb']} MB less peak")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
