"""Peak RSS and wall time of an evaluation on the CPU, with and without giving the heap's free pages back
after each generation batch (`mtr.peak_memory.trim_heap`, called by `generate_with_prefix_cache`).

    .venv/bin/python benchmarks/bench_eval_memory.py --policy runs/bench-learning/quick/sft-s0 [--limit 8]

Each variant runs in a fresh process (a heap's history is the thing measured), alternated `--repeats` times,
on the learning benchmark's evaluation (held-out HotpotQA and 2Wiki questions, live tools). Results go to
benchmarks/results/eval_memory.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "eval_memory.json"

CHILD = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import bench_learning as bl
if sys.argv[2] == "no trim":
    import mtr.backends.kvcache as kv
    kv.trim_heap = lambda: None
from mtr.peak_memory import peak_rss_mb, reset_peak
from mtr.stages.evaluate import evaluate
cfg = bl.base_config(dict(bl.PRESETS["quick"], eval_limit=int(sys.argv[4])), 0).with_policy(sys.argv[3])
reset_peak()
t0 = time.perf_counter()
res = asyncio.run(evaluate(cfg, Path(sys.argv[5]), overwrite=True))
print(json.dumps({"peak_rss_mb": round(peak_rss_mb()), "wall_s": round(time.perf_counter() - t0, 1),
                  "episodes": sum(r["n"] for r in res["rows"])}))
"""


def measure(child: str, variants: list[str], policy: Path, limit: int, repeats: int, work: Path,
            *more: str) -> dict[str, list]:
    """Each variant's run in a fresh process running `child` (its arguments: this folder, the variant, the
    policy, the limit, its output directory, then `more`), alternated `repeats` times: what each printed last
    (a JSON object), by variant."""
    if not (policy / "config.json").is_file():
        raise SystemExit(f"--policy {policy}: not a checkpoint directory (no config.json)")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in runs:
            out = subprocess.run([sys.executable, "-c", child, str(ROOT / "benchmarks"), variant, str(policy),
                                  str(limit), str(work / variant.replace(" ", "-")), *more],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{variant}: the run failed:\n{out.stderr[-2000:]}")
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(variant, runs[variant][-1], flush=True)
    return runs


def median(runs: dict[str, list[dict]], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {v: {k: round(statistics.median(r[k] for r in rs), 2) for k in keys} for v, rs in runs.items()}


def arguments(doc: str, repeats: int, work: str, stage: bool = False,
              more: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The evaluation benchmarks' command line: the policy, questions a benchmark, runs of each variant (and
    with `stage`, which stage's turns; `more` adds a benchmark's own options)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if more is not None:
        more(ap)
    if stage:
        ap.add_argument("--stage", choices=["eval", "synth"], default="eval")
    ap.add_argument("--policy", type=Path, required=True, help="a trained checkpoint (e.g. an SFT stage's output)")
    ap.add_argument("--limit", type=int, default=8, help="questions of each benchmark")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / work)
    return ap.parse_args()


def main() -> None:
    args = arguments(__doc__, 1, "bench-eval-memory")
    runs = measure(CHILD, ["no trim", "trim"], args.policy, args.limit, args.repeats, args.work)
    from mtr.rundir import git_commit

    result = {"date": time.strftime("%Y-%m-%d"), "commit": (git_commit() or "?")[:7], "policy": str(args.policy),
              "questions_per_benchmark": args.limit, "runs": runs,
              "median": median(runs, ("peak_rss_mb", "wall_s"))}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
