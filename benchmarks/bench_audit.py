"""The reality gap on held-out HotpotQA questions: a policy with simulated, live and hybrid tools, and its
calls answered by the ToolActor and by the retriever side by side.

    .venv/bin/python benchmarks/bench_audit.py --policy runs/demo/grpo [--questions 100] [--offset 400]

Held-out: HotpotQA dev records from `--offset` on (the demo trains on the first 12). Roles as in the demo
preset (ToolMaker and ToolActor: the embedded model on llama.cpp; the policy on transformers), the local
BM25 retriever over the default corpus. Figures go to stdout and `benchmarks/results/audit.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "src" / "mtr" / "configs" / "demo.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True, help="the policy checkpoint (e.g. a demo run's grpo/)")
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--offset", type=int, default=400)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-audit"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/audit.json"))
    args = ap.parse_args()
    from mtr.audit import print_audit, run_audit
    from mtr.backends import BackendPool
    from mtr.config import load_config
    from mtr.data import resolve_benchmark
    from mtr.env import shared_retriever
    from mtr.livetools import LiveSearch
    from mtr.stages.evaluate import evaluate
    from mtr.toolactor import ToolActor

    args.work.mkdir(parents=True, exist_ok=True)
    lines = resolve_benchmark("hotpotqa").read_text().splitlines()[args.offset: args.offset + args.questions]
    data = args.work / "heldout.jsonl"
    data.write_text("\n".join(lines) + "\n")
    cfg = load_config(DEMO)
    cfg.eval.benchmarks, cfg.eval.modes, cfg.eval.limit = [str(data)], ["simulated", "live", "hybrid"], None
    cfg.roles.policy = cfg.roles.policy.model_copy(update={"model": str(args.policy)})
    t0 = time.perf_counter()
    results = asyncio.run(evaluate(cfg, args.work / "eval"))
    eval_s = time.perf_counter() - t0
    r = cfg.retriever
    retriever = shared_retriever(r)
    pool = BackendPool(cfg)
    actor = ToolActor(pool.get("toolactor"), grounding="none", retries=cfg.eval.actor_retries)
    t0 = time.perf_counter()
    audit = run_audit(args.work / "eval" / "predictions.jsonl", data, args.work / "audit", actor,
                      LiveSearch(retriever, r.top_k, r.max_chars), args.questions, args.work / "eval",
                      meta={"toolactor": pool.get("toolactor").describe(), "retriever": retriever.describe(),
                            "grounding": "none"})
    audit_s = time.perf_counter() - t0
    print_audit(audit)
    rows = {r["mode"]: {k: r[k] for k in ("n", "em", "f1", "cover_em", "no_answer_pct", "malformed_pct",
                                          "mean_calls")} for r in results["rows"]}
    res = {"policy": str(args.policy), "questions": args.questions, "offset": args.offset,
           "eval_by_mode": rows, "eval_s": eval_s, "audit_s": audit_s,
           "audit": {k: audit[k] for k in ("questions", "overall", "by_tool", "transfer_gap", "toolactor",
                                           "retriever")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    for mode, row in rows.items():
        print(f"{mode:10s} EM {row['em']:.1f} F1 {row['f1']:.1f} answered {100 - row['no_answer_pct']:.0f}% "
              f"calls {row['mean_calls']:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
