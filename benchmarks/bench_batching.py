"""How a stage's turns are batched on the CPU: cut as requests come, or in lockstep (a batch waits for a turn of
every episode in flight: `run_pool(..., lockstep=...)`), for the policy in evaluation (`mtr.stages.evaluate`)
or a model teacher in synthesis (`mtr.stages.synth`).

    .venv/bin/python benchmarks/bench_batching.py --policy runs/bench-learning/main-t07/sft-s0 [--limit 8]
    .venv/bin/python benchmarks/bench_batching.py --stage synth --policy runs/bench-learning/main-t07/sft-s0

Each variant runs in a fresh process, alternated `--repeats` times. Evaluation: the learning benchmark's
(held-out HotpotQA and 2Wiki questions, live tools, the policy greedy). Synthesis: the learning benchmark's
training questions with the checkpoint as the model teacher (greedy, so that both variants can write the same
traces), live tools. Wall time, the rows of each batch, and whether both variants ended every episode alike.
Results go to benchmarks/results/eval_batching.json or synth_batching.json.
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
from mtr.backends import BackendPool
from mtr.backends.base import Backend
from mtr.backends.batching import LocalBackend
from mtr.jsonl import read_jsonl
from mtr.stages.evaluate import evaluate
from mtr.stages.synth import synthesize
if sys.argv[2] == "as requests come":
    LocalBackend.lockstep = Backend.lockstep  # what a server does: nothing to wait for
stage, limit, out = sys.argv[6], int(sys.argv[4]), Path(sys.argv[5])
cfg = bl.base_config(dict(bl.PRESETS["main"], eval_limit=limit), 0).with_policy(sys.argv[3])
role = "policy" if stage == "eval" else "autoagent"
if stage == "synth":
    cfg.synth.teacher = "model"
    cfg.roles.autoagent = cfg.roles.policy.model_copy(update={"temperature": 0.0})
    data = bl.training_file(out.parent, limit)

async def run():
    pool = BackendPool(cfg)
    try:
        t0 = time.perf_counter()
        if stage == "eval":
            await evaluate(cfg, out, overwrite=True, pool=pool)
        else:
            await synthesize(cfg, data, out, overwrite=True, pool=pool)
        return time.perf_counter() - t0, pool.get(role).batch_stats(), pool.get(role)._batcher.batch_rows
    finally:
        await pool.aclose()

wall, stats, rows = asyncio.run(run())
if stage == "eval":
    answers = {r["key"]: r["prediction"] for r in read_jsonl(out / "predictions.jsonl")}
else:  # how each episode ended: its answer, or what stopped it
    from mtr.trace import Trace
    traces = [Trace.model_validate(r) for r in read_jsonl(out / "traces.jsonl")]
    answers = {t.id: t.final_answer or t.error or f"{len(t.steps)} steps" for t in traces}
print(json.dumps({"wall_s": round(wall, 1), "batches": stats["batches"], "mean_rows": round(stats["mean_rows"], 2),
                  "batch_rows": rows, "answers": answers}))
"""
VARIANTS = ["as requests come", "lockstep"]


def main() -> None:
    args = arguments(__doc__, 2, "bench-batching", stage=True)
    from mtr.rundir import source_commit

    commit = source_commit(ROOT)
    runs = measure(CHILD, VARIANTS, args.policy, args.limit, args.repeats, args.work / args.stage, args.stage)
    answers = [r.pop("answers") for rs in runs.values() for r in rs]
    same = sum(all(a[k] == answers[0][k] for a in answers) for k in answers[0])
    med = median(runs, ("wall_s", "batches", "mean_rows"))
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "stage": args.stage,
              "policy": str(args.policy), "questions_per_benchmark": args.limit, "runs": runs, "median": med,
              "saved_pct": round(100 * (1 - med["lockstep"]["wall_s"] / med["as requests come"]["wall_s"]), 1),
              "same_answers": same, "episodes": len(answers[0])}
    out = ROOT / "benchmarks" / "results" / f"{args.stage}_batching.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"lockstep: {result['saved_pct']} % less time; the same ending in {same} of {len(answers[0])} episodes "
          f"in every run; wrote {out}")


if __name__ == "__main__":
    main()
