"""How the policy's batch of turns is laid out in memory on the CPU (`mtr.backends.kvcache`): keys and values
grown by concatenation (transformers' DynamicCache) or written in place in a buffer reserved for the whole
generation (`kvcache.BUFFERED`), and each row's new tokens read in the batch, padded to the longest, or on
their own before it (`kvcache.READ_ROWS_ALONE`).

    .venv/bin/python benchmarks/bench_kv_layout.py --policy runs/bench-learning/main/sft-s0 [--limit 12]

The learning benchmark's evaluation (held-out HotpotQA and 2Wiki questions, live tools, the policy greedy),
each variant in a fresh process, alternated `--repeats` times: wall time, the time inside the policy's
generation, peak RSS, and whether every variant gave each question the same answer. Results go to
benchmarks/results/kv_layout.json.
"""

from __future__ import annotations

import json
import time

from bench_eval_memory import ROOT, arguments, measure, median

CHILD = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import bench_learning as bl
import mtr.backends.hf as hf
import mtr.backends.kvcache as kv
from mtr.backends import BackendPool
from mtr.jsonl import read_jsonl
from mtr.peak_memory import peak_rss_mb, reset_peak
from mtr.stages.evaluate import evaluate
kv.BUFFERED = "buffered" in sys.argv[2]
kv.READ_ROWS_ALONE = "alone" in sys.argv[2]
inside = []
def timed(*args, **kwargs):
    t0 = time.perf_counter()
    try:
        return kv.generate_with_prefix_cache(*args, **kwargs)
    finally:
        inside.append(time.perf_counter() - t0)
hf.generate_with_prefix_cache = timed
limit, out = int(sys.argv[4]), Path(sys.argv[5])
cfg = bl.base_config(dict(bl.PRESETS["main"], eval_limit=limit), 0).with_policy(sys.argv[3])

async def run():
    pool = BackendPool(cfg)
    try:
        t0 = time.perf_counter()
        await evaluate(cfg, out, overwrite=True, pool=pool)
        return time.perf_counter() - t0
    finally:
        await pool.aclose()

reset_peak()
wall = asyncio.run(run())
answers = {r["key"]: r["prediction"] for r in read_jsonl(out / "predictions.jsonl")}
print(json.dumps({"wall_s": round(wall, 1), "generate_s": round(sum(inside), 1), "batches": len(inside),
                  "peak_rss_mb": round(peak_rss_mb()), "answers": answers}))
"""
VARIANTS = ["concatenated, padded", "buffered, padded", "buffered, rows read alone"]


def main() -> None:
    args = arguments(__doc__, 2, "bench-kv-layout")
    from mtr.rundir import source_commit

    commit = source_commit(ROOT)
    runs = measure(CHILD, VARIANTS, args.policy, args.limit, args.repeats, args.work)
    answers = [r.pop("answers") for rs in runs.values() for r in rs]
    same = sum(all(a.get(k) == answers[0][k] for a in answers) for k in answers[0])
    med = median(runs, ("wall_s", "generate_s", "batches", "peak_rss_mb"))
    first, last = med[VARIANTS[0]]["wall_s"], med[VARIANTS[-1]]["wall_s"]
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "policy": str(args.policy),
              "questions_per_benchmark": args.limit, "runs": runs, "median": med,
              "saved_pct": round(100 * (1 - last / first), 1),
              "saved_generate_pct": round(100 * (1 - med[VARIANTS[-1]]["generate_s"]
                                                 / med[VARIANTS[0]]["generate_s"]), 1),
              "same_answers": same, "episodes": len(answers[0])}
    out = ROOT / "benchmarks" / "results" / "kv_layout.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{VARIANTS[-1]}: {result['saved_pct']} % less time than {VARIANTS[0]}; the same answer in {same} of "
          f"{len(answers[0])} episodes in every run; wrote {out}")


if __name__ == "__main__":
    main()
