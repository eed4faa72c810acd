"""What gradient checkpointing costs a GRPO update on a CPU: the same update passes with it on and off.

    .venv/bin/python benchmarks/bench_grpo_checkpointing.py --run runs/bench-learning/quick/grpo-sft+grpo-s0 [--groups 4]

For the first `--groups` generation batches of a finished GRPO run (its episodes' lengths, a prompt of its
length, random ids: bench_grpo_padding.py's batches), each variant times mtr's update passes (the reference
pass, then each episode's loss forward and backward, without the group's padding) in a process of its own,
so that its peak resident memory is its own; the variants alternate `--repeats` times. Prints the figures
and writes them to benchmarks/results/grpo_checkpointing.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "grpo_checkpointing.json"
VARIANTS = ("checkpointing", "no checkpointing")


def one_variant(run: Path, groups: int, checkpointing: bool) -> dict:
    """In this process: the update passes over the run's first `groups` batches; seconds and peak RSS."""
    from bench_grpo_padding import batch, prompt_tokens, scorers, update
    from mtr.checkpoints import load_tokenizer
    from mtr.peak_memory import peak_rss_mb, reset_peak

    stats = json.loads((run / "train_stats.json").read_text())
    init = Path(json.loads((run / "manifest.json").read_text())["init"])
    tok = load_tokenizer(init)
    prompt = prompt_tokens(run, tok)
    model, _, unpadded = scorers(init, checkpointing)
    reset_peak()
    seconds = []
    for lengths in stats["episode_tokens"][:groups]:
        lengths = [max(n, prompt + 1) for n in lengths]
        ids, mask, keep = batch(lengths, prompt, model.config.vocab_size, tok.pad_token_id)
        seconds.append(round(update(unpadded, ids, mask, keep, model), 2))
    return {"seconds": seconds, "total_s": round(sum(seconds), 1), "peak_rss_mb": round(peak_rss_mb()),
            "tokens": sum(sum(max(n, prompt + 1) for n in g) for g in stats["episode_tokens"][:groups])}


def this_machine() -> dict:
    """What a timing file records of where it ran: the date, the CPU and the vector instructions torch's
    kernels use on it, torch's threads and version."""
    import torch

    from bench_learning import cpu_kernels, cpu_name

    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cpu_kernels": cpu_kernels(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def alternated(script: str, variants: tuple[str, ...], repeats: int, argv: list[str]) -> dict[str, list[dict]]:
    """Each variant's figures, `repeats` runs of each, alternated: `script argv --child VARIANT`, each in a
    process of its own, prints them as JSON on its last line."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(repeats):
        for v in variants:
            out = subprocess.run([sys.executable, script, *argv, "--child", v], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{v}: the timing process failed: {out.stderr.strip().splitlines()[-1:]}")
            runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {r + 1}, {v}: {runs[v][-1]['total_s']} s, peak RSS {runs[v][-1]['peak_rss_mb']} MB",
                  flush=True)
    return runs


def variant_medians(runs: dict[str, list[dict]], per_token: tuple[str, str] | None = None,
                    copied: tuple[str, ...] = ()) -> dict[str, dict]:
    """The figures the timing benchmarks report of each variant's runs (`alternated`'s): the median `total_s`
    (to 0.1 s) and `peak_rss_mb` (to the MB); with `per_token` (name, count), the median time in ms a token of
    the count its first run recorded under that key; and the `copied` fields of its first run (figures that
    do not vary from run to run: tokens seen, the tile)."""
    out = {}
    for v, rs in runs.items():
        total = statistics.median(x["total_s"] for x in rs)
        out[v] = {"total_s": round(total, 1), "peak_rss_mb": round(statistics.median(x["peak_rss_mb"] for x in rs)),
                  **{k: rs[0][k] for k in copied}}
        if per_token:
            name, count = per_token
            out[v][name] = round(1000 * total / rs[0][count], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished GRPO run directory (mtr grpo's --out)")
    ap.add_argument("--groups", type=int, default=4, help="generation batches to time, from the run's first")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternated")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one variant, its figures as the last line of stdout
        print(json.dumps(one_variant(args.run, args.groups, args.child == "checkpointing")))
        return
    stats_file = args.run / "train_stats.json"
    if not stats_file.is_file() or "episode_tokens" not in json.loads(stats_file.read_text()):
        raise SystemExit(f"--run {args.run}: no train_stats.json with episode lengths (a GRPO run of this version)")

    runs = alternated(__file__, VARIANTS, args.repeats, ["--run", str(args.run), "--groups", str(args.groups)])
    median = variant_medians(runs, per_token=("ms_per_token", "tokens"))
    on, off = median["checkpointing"], median["no checkpointing"]
    run = args.run.resolve()
    result = {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "groups": args.groups,
              "runs": runs, "median": median, "saved_pct": round(100 * (1 - off["total_s"] / on["total_s"]), 1),
              "extra_peak_rss_mb": off["peak_rss_mb"] - on["peak_rss_mb"], **this_machine()}
    print(f"update passes over {args.groups} batches (median of {args.repeats}): checkpointing {on['total_s']} s, "
          f"{on['peak_rss_mb']} MB; without {off['total_s']} s, {off['peak_rss_mb']} MB ({result['saved_pct']} % less time)")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
