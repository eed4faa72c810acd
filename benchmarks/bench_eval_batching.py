"""How an evaluation's policy turns are batched on the CPU: cut as requests come, or in lockstep (a batch
waits for a turn of every episode in flight: `run_pool(..., lockstep=policy)` in `mtr.stages.evaluate`).

    .venv/bin/python benchmarks/bench_eval_batching.py --policy runs/bench-learning/main-t07/sft-s0 [--limit 8]

Each variant runs in a fresh process, alternated `--repeats` times, on the learning benchmark's evaluation
(held-out HotpotQA and 2Wiki questions, live tools, the policy greedy): wall time, the rows of each batch,
and whether both variants answered every question alike. Results go to benchmarks/results/eval_batching.json.
"""

from __future__ import annotations

import json
import time

from bench_eval_memory import ROOT, arguments, measure, median

OUT = ROOT / "benchmarks" / "results" / "eval_batching.json"

CHILD = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import bench_learning as bl
from mtr.backends import BackendPool
from mtr.backends.base import Backend
from mtr.backends.batching import LocalBackend
from mtr.jsonl import read_jsonl
from mtr.stages.evaluate import evaluate
if sys.argv[2] == "as requests come":
    LocalBackend.lockstep = Backend.lockstep  # what a server does: nothing to wait for
cfg = bl.base_config(dict(bl.PRESETS["main"], eval_limit=int(sys.argv[4])), 0).with_policy(sys.argv[3])
out = Path(sys.argv[5])

async def run():
    pool = BackendPool(cfg)
    try:
        t0 = time.perf_counter()
        await evaluate(cfg, out, overwrite=True, pool=pool)
        return time.perf_counter() - t0, pool.get("policy").batch_stats(), pool.get("policy")._batcher.batch_rows
    finally:
        await pool.aclose()

wall, stats, rows = asyncio.run(run())
answers = {r["key"]: r["prediction"] for r in read_jsonl(out / "predictions.jsonl")}
print(json.dumps({"wall_s": round(wall, 1), "batches": stats["batches"], "mean_rows": round(stats["mean_rows"], 2),
                  "batch_rows": rows, "answers": answers}))
"""
VARIANTS = ["as requests come", "lockstep"]


def main() -> None:
    args = arguments(__doc__, 2, "bench-eval-batching")
    runs = measure(CHILD, VARIANTS, args.policy, args.limit, args.repeats, args.work)
    answers = [r.pop("answers") for rs in runs.values() for r in rs]
    same = sum(all(a[k] == answers[0][k] for a in answers) for k in answers[0])
    from mtr.rundir import git_commit

    med = median(runs, ("wall_s", "batches", "mean_rows"))
    result = {"date": time.strftime("%Y-%m-%d"), "commit": (git_commit() or "?")[:7], "policy": str(args.policy),
              "questions_per_benchmark": args.limit, "runs": runs, "median": med,
              "saved_pct": round(100 * (1 - med["lockstep"]["wall_s"] / med["as requests come"]["wall_s"]), 1),
              "same_answers": same, "episodes": len(answers[0])}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"lockstep: {result['saved_pct']} % less time; the same answer in {same} of {len(answers[0])} episodes "
          f"in every run; wrote {OUT}")


if __name__ == "__main__":
    main()
