"""The training signal on the demo's settings: what the filter keeps and why, whether the kept answers rest on
their own observations, and what each reward component and KL do over a GRPO run.

    .venv/bin/python benchmarks/bench_signal.py --label after [--questions 12] [--grpo-steps 8]
    .venv/bin/python benchmarks/bench_signal.py --label before --traces runs/old/synth/traces.jsonl

1. Synthesis and filtering on the demo preset's training questions (or, with `--traces`, an earlier run's
   traces, re-read without synthesising): kept and rejected by reason, and the share of kept traces (the
   SFT set) whose answer is supported by their own observations (mtr.evidence), whatever the filter says.
2. With `--grpo-steps`: SFT as the demo does, then that many GRPO steps; per step, each reward component's
   mean and its standard deviation within a group (TRL logs the batch's std; a step is one group), the total
   reward and KL.
Results go to `benchmarks/results/signal.json` under `--label`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "src" / "mtr" / "configs" / "demo.yaml"


def traces_figures(traces_file: Path, cfg) -> dict:
    from mtr.evidence import answer_supported
    from mtr.jsonl import read_jsonl
    from mtr.stages.filter import filter_traces, policy_token_counter
    from mtr.trace import Trace

    traces = [Trace.model_validate(r) for r in read_jsonl(traces_file, latest_by="id")]
    kept, rejected, _ = filter_traces(traces, cfg.filter, policy_token_counter(cfg))
    # what an older filter (no support check) kept, and how much of it was supported
    loose = cfg.filter.model_copy(update={"require_support": False})
    kept_loose, _, _ = filter_traces(traces, loose, policy_token_counter(cfg))
    return {"traces": str(traces_file), "episodes": len(traces), "kept": len(kept),
            "rejected": dict(Counter(rejected).most_common()),
            "kept_without_support_check": len(kept_loose),
            "supported_pct_of_kept_without_support_check":
                100.0 * sum(answer_supported(t) for t in kept_loose) / len(kept_loose) if kept_loose else None,
            "teachers": dict(Counter(t.meta.get("teacher", "?") for t in traces))}


def grpo_figures(cfg, work: Path, steps: int) -> dict:
    from mtr.data import resolve_benchmark
    from mtr.stages.filter import run_filter
    from mtr.stages.grpo import train_grpo
    from mtr.stages.sft import train_sft
    from mtr.stages.synth import synthesize
    from mtr.rubric import REWARD_NAMES, trl_log_key

    train = resolve_benchmark(cfg.run.train_data)
    asyncio.run(synthesize(cfg, train, work / "synth", limit=cfg.run.train_limit, overwrite=True))
    run_filter(cfg, work / "synth" / "traces.jsonl", work / "filter")
    train_sft(cfg, work / "filter" / "sft.jsonl", work / "sft", overwrite=True)
    cfg.grpo.trl["max_steps"] = steps
    t0 = time.perf_counter()
    stats = train_grpo(cfg, train, work / "sft", work / "grpo", limit=cfg.run.train_limit, overwrite=True)
    log = [json.loads(x) for x in (work / "grpo" / "log.jsonl").read_text().splitlines()]
    rows = [e for e in log if "reward" in e]
    per_step = [{"step": e["step"], "reward": e["reward"], "kl": e.get("kl"),
                 **{n: {"mean": e.get(trl_log_key(n)), "std": e.get(trl_log_key(n).replace("/mean", "/std"))}
                    for n in REWARD_NAMES}} for e in rows]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    summary = {n: {"mean": mean(s[n]["mean"] for s in per_step), "within_group_std": mean(s[n]["std"] for s in per_step)}
               for n in REWARD_NAMES}
    return {"steps": stats["steps"], "seconds": time.perf_counter() - t0, "per_step": per_step, "summary": summary,
            "kl": [s["kl"] for s in per_step]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--traces", type=Path, help="re-read these traces instead of synthesising")
    ap.add_argument("--grpo-steps", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-signal"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/signal.json"))
    args = ap.parse_args()
    from mtr.config import load_config
    from mtr.data import resolve_benchmark
    from mtr.stages.synth import synthesize

    cfg = load_config(DEMO)
    entry: dict = {"date": time.strftime("%Y-%m-%d"), "config": str(DEMO)}
    if args.traces:
        entry["filter"] = traces_figures(args.traces, cfg)
    else:
        asyncio.run(synthesize(cfg, resolve_benchmark(cfg.run.train_data), args.work / "synth",
                               limit=cfg.run.train_limit, overwrite=True))
        entry["filter"] = traces_figures(args.work / "synth" / "traces.jsonl", cfg)
        if args.grpo_steps:
            entry["grpo"] = grpo_figures(cfg, args.work, args.grpo_steps)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    f = entry["filter"]
    print(f"{args.label}: kept {f['kept']} of {f['episodes']}; rejected {f['rejected']}; without the support check "
          f"{f['kept_without_support_check']} kept, {f['supported_pct_of_kept_without_support_check']}% supported")
    if "grpo" in entry:
        for s in entry["grpo"]["per_step"]:
            print(f"step {s['step']}: reward {s['reward']:.3f} kl {s['kl']} " + ", ".join(
                f"{n} {s[n]['mean']:.3f}+-{s[n]['std']:.3f}" for n in ("answer", "format", "consistency", "efficiency")))


if __name__ == "__main__":
    main()
