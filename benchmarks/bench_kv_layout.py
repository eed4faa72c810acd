"""How the policy's batch of turns is laid out in memory on the CPU (`mtr.backends.kvcache`): keys and values
grown by concatenation (transformers' DynamicCache) or written in place in a buffer reserved for the whole
generation (`kvcache.BUFFERED`), and each row's new tokens read in the batch, padded to the longest, or on
their own before it (`kvcache.READ_ROWS_ALONE`).

    .venv/bin/python benchmarks/bench_kv_layout.py --policy runs/bench-learning/main/sft-s0 [--limit 12]
    .venv/bin/python benchmarks/bench_kv_layout.py --policy ... --variants "buffered, rows read alone;bfloat16" \
        --out kv_layout_bf16

`--variants` (separated by `;`) picks among the layouts and `bfloat16` (the layout with the policy in bf16,
`roles.policy.dtype`: fast only on a CPU with native bf16, and its answers may differ from fp32's). The
`weight-major` layout also computes a few rows' linear products as W @ x.T (`kvcache.WEIGHT_MAJOR`: mtr's
choice where the CPU does them faster so); the others, bf16 too, keep torch's own product:

    .venv/bin/python benchmarks/bench_kv_layout.py --policy ... --out kv_layout_weight_major \
        --variants "buffered, rows read alone;buffered, rows read alone, weight-major"

The learning benchmark's evaluation (held-out HotpotQA and 2Wiki questions, live tools, the policy greedy),
each variant in a fresh process, alternated `--repeats` times: wall time, the time inside the policy's
generation, peak RSS, F1, and how many questions each variant answered as the first variant's first run did.
Results go to benchmarks/results/kv_layout.json (`--out` for another name).
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
variant = sys.argv[2]
kv.BUFFERED = "buffered" in variant or variant == "bfloat16"
kv.READ_ROWS_ALONE = "alone" in variant or variant == "bfloat16"
kv.WEIGHT_MAJOR = "weight-major" in variant  # the layouts before it and bf16: torch's own product
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
if variant == "bfloat16":
    cfg.roles.policy = cfg.roles.policy.model_copy(update={"dtype": "bfloat16"})

async def run():
    pool = BackendPool(cfg)
    try:
        t0 = time.perf_counter()
        res = await evaluate(cfg, out, overwrite=True, pool=pool)
        return time.perf_counter() - t0, res["rows"]
    finally:
        await pool.aclose()

reset_peak()
wall, rows = asyncio.run(run())
f1 = sum(r["f1"] * r["n"] for r in rows) / sum(r["n"] for r in rows)
answers = {r["key"]: r["prediction"] for r in read_jsonl(out / "predictions.jsonl")}
print(json.dumps({"wall_s": round(wall, 1), "generate_s": round(sum(inside), 1), "batches": len(inside),
                  "peak_rss_mb": round(peak_rss_mb()), "f1": round(f1, 2), "answers": answers}))
"""
VARIANTS = ["concatenated, padded", "buffered, padded", "buffered, rows read alone",
            "buffered, rows read alone, weight-major"]


def main() -> None:
    def options(ap) -> None:
        ap.add_argument("--variants", default=";".join(VARIANTS),
                        help=f"`;`-separated, among {'; '.join(VARIANTS)}; bfloat16 (ratios are to the first)")
        ap.add_argument("--out", default="kv_layout", help="the results file's name in benchmarks/results")

    args = arguments(__doc__, 2, "bench-kv-layout", more=options)
    variants = args.variants.split(";")
    unknown = [v for v in variants if v not in (*VARIANTS, "bfloat16")]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose among {VARIANTS + ['bfloat16']}")
    from mtr.rundir import source_commit

    commit = source_commit(ROOT)
    runs = measure(CHILD, variants, args.policy, args.limit, args.repeats, args.work)
    answers = {v: [r.pop("answers") for r in rs] for v, rs in runs.items()}
    reference = answers[variants[0]][0]
    same = sum(all(a.get(k) == reference[k] for rs in answers.values() for a in rs) for k in reference)
    agree = {v: min(sum(a.get(k) == reference[k] for k in reference) for a in rs) for v, rs in answers.items()}
    med = median(runs, ("wall_s", "generate_s", "batches", "peak_rss_mb", "f1"))
    first, last = med[variants[0]], med[variants[-1]]
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "policy": str(args.policy),
              "questions_per_benchmark": args.limit, "runs": runs, "median": med,
              "saved_pct": round(100 * (1 - last["wall_s"] / first["wall_s"]), 1),
              "saved_generate_pct": round(100 * (1 - last["generate_s"] / first["generate_s"]), 1),
              "same_answers": same, "agree_with_first": agree, "episodes": len(reference)}
    out = ROOT / "benchmarks" / "results" / f"{args.out}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{variants[-1]}: {result['saved_pct']} % less time than {variants[0]}; the same answer in {same} of "
          f"{len(reference)} episodes in every run; wrote {out}")


if __name__ == "__main__":
    main()
