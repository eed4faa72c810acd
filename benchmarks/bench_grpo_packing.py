"""What scoring a group's shared prompt once saves a GRPO update: episode by episode against one packed pass.

    .venv/bin/python benchmarks/bench_grpo_packing.py [--repeats 2]

The generation batches are those bench_grpo_padding.py recorded (benchmarks/results/grpo_padding.json: four
groups of 4 episodes of the learning benchmark's GRPO run, their lengths and their prompt's), with random
ids (the time does not depend on them), on the embedded SmolLM2-135M with TRL's fused LM head and gradient
checkpointing, as the CPU configs train it. Both variants run UnpaddedGRPOTrainer's own scoring pass:

    per episode   share_prompt off, micro-batches of one episode (the CPU configs until now: per_device_train_batch_size 1,
                  gradient_accumulation_steps 4): the reference pass and each episode's loss forward and backward
    packed group  share_prompt on, the group as one micro-batch (per_device_train_batch_size 4): the reference
                  pass and the loss forward and backward each over one packed row, the prompt once

    packed group, TRL's tile   as packed group, TRL's fused head scoring 4,096 positions at a time (its own
                  `TOKEN_CHUNK_SIZE`) instead of mtr's tile on a CPU (`mtr.training.CPU_LOGPROB_TILE`)

Each variant runs in a process of its own (its peak resident memory its own), alternated `--repeats` times.
Prints the figures and writes them to benchmarks/results/grpo_packing.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "grpo_packing.json"
BATCHES = ROOT / "benchmarks" / "results" / "grpo_padding.json"
VARIANTS = ("per episode", "packed group", "packed group, TRL's tile")


def one_variant(variant: str) -> dict:
    """In this process: the update passes over the recorded batches; seconds and peak RSS."""
    import torch
    from accelerate import Accelerator

    from trl.kernels import chunked_logprob

    from bench_grpo_padding import batch, scorers
    from mtr import training
    from mtr.checkpoints import load_tokenizer
    from mtr.embedded import ensure_checkpoint
    from mtr.grpo_trainer import UnpaddedGRPOTrainer
    from mtr.shared_prompt import use_shared_prompt_attention
    from mtr.peak_memory import peak_rss_mb, reset_peak

    recorded = json.loads(BATCHES.read_text())
    prompt, groups = recorded["prompt_tokens"], [b["lengths"] for b in recorded["batches"]]
    init = ensure_checkpoint()
    tok = load_tokenizer(init)
    model, _, _ = scorers(init, checkpointing=True)  # as GRPO trains it: fp32, TRL's fused head
    trainer = UnpaddedGRPOTrainer.__new__(UnpaddedGRPOTrainer)  # its scoring pass needs no more of a trainer
    trainer.accelerator = Accelerator(cpu=True)
    trainer.share_prompt = variant.startswith("packed group") and use_shared_prompt_attention(model)
    if variant.endswith("TRL's tile"):
        training.CPU_LOGPROB_TILE = chunked_logprob.TOKEN_CHUNK_SIZE
    micro = 4 if trainer.share_prompt else 1

    def score(ids, mask, keep, entropy):
        logps, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep, batch_size=micro,
                                                                   compute_entropy=entropy)
        return logps

    reset_peak()
    seconds = []
    with training.logprob_tiles(trainer.accelerator) as tile:  # as train_grpo scores
        for lengths in groups:
            ids, mask, keep = batch(lengths, prompt, model.config.vocab_size, tok.pad_token_id)
            t0 = time.perf_counter()
            with torch.no_grad():  # the reference pass
                score(ids, mask, keep, False)
            for start in range(0, ids.size(0), micro):  # the loss, a micro-batch at a time
                rows = slice(start, start + micro)
                (-(score(ids[rows], mask[rows], keep, True) * mask[rows, -keep:]).sum()).backward()
            model.zero_grad(set_to_none=True)
            seconds.append(round(time.perf_counter() - t0, 2))
    return {"seconds": seconds, "total_s": round(sum(seconds), 1), "peak_rss_mb": round(peak_rss_mb()),
            "logprob_tile": tile,
            "episode_tokens": sum(map(sum, groups)),
            "scored_tokens": sum(sum(g) - (len(g) - 1) * (prompt - 1) if trainer.share_prompt else sum(g)
                                 for g in groups)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternated")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one variant, its figures as the last line of stdout
        print(json.dumps(one_variant(args.child)))
        return

    from bench_grpo_checkpointing import alternated, this_machine, variant_medians

    runs = alternated(__file__, VARIANTS, args.repeats, [])
    median = variant_medians(runs, per_token=("ms_per_episode_token", "episode_tokens"),
                             copied=("scored_tokens", "logprob_tile"))
    alone, packed, trl_tile = median["per episode"], median["packed group"], median["packed group, TRL's tile"]
    recorded = json.loads(BATCHES.read_text())
    result = {"batches": "benchmarks/results/grpo_padding.json", "prompt_tokens": recorded["prompt_tokens"],
              "lengths": [b["lengths"] for b in recorded["batches"]], "runs": runs, "median": median,
              "saved_pct": round(100 * (1 - packed["total_s"] / alone["total_s"]), 1),
              "fewer_tokens_pct": round(100 * (1 - packed["scored_tokens"] / alone["scored_tokens"]), 1),
              "extra_peak_rss_mb": packed["peak_rss_mb"] - alone["peak_rss_mb"],
              # what mtr's tile on a CPU saves the packed group against TRL's
              "tile_saved_pct": round(100 * (1 - packed["total_s"] / trl_tile["total_s"]), 1),
              "tile_peak_rss_saved_mb": trl_tile["peak_rss_mb"] - packed["peak_rss_mb"],
              "model": "SmolLM2-135M-Instruct (embedded)", "gradient_checkpointing": True, **this_machine()}
    print(f"update passes over {len(result['lengths'])} groups (median of {args.repeats}): per episode "
          f"{alone['total_s']} s, {alone['peak_rss_mb']} MB; packed {packed['total_s']} s, {packed['peak_rss_mb']} MB "
          f"({result['saved_pct']} % less time, {result['fewer_tokens_pct']} % fewer tokens scored); with TRL's tile "
          f"of {trl_tile['logprob_tile']} positions against mtr's {packed['logprob_tile']}: {trl_tile['total_s']} s, "
          f"{trl_tile['peak_rss_mb']} MB")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
