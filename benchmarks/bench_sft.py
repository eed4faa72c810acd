"""Does Stage 1 teach the trace grammar on this machine? Parse-valid % of the policy before and after SFT.

    .venv/bin/python benchmarks/bench_sft.py [--train 60] [--heldout 30] [--out benchmarks/results/sft.json]

1. SFT data: `mtr synth` with the scripted teacher (it walks each HotpotQA record's supporting facts;
   labelled `teacher: scripted`) and the embedded model as a context-grounded ToolActor, on the first
   `--train` HotpotQA dev questions.
2. `mtr sft` (full fine-tuning) on the kept traces; then a short LoRA run for its speed and memory.
3. The base policy and the trained one answer `--heldout` other HotpotQA questions (tools-on, greedy,
   same prompts, same tools, same ToolActor); parse-valid % = policy turns that parse, over all turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def parse_valid(run: Path) -> dict:
    recs = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    turns = [s for r in recs for s in r["trace"]["steps"]]
    ok_turns = sum(1 for s in turns if "parse_error" not in s)
    ok_eps = sum(1 for r in recs if all("parse_error" not in s for s in r["trace"]["steps"]))
    return {"episodes": len(recs), "turns": len(turns), "parse_valid_turn_pct": 100.0 * ok_turns / max(1, len(turns)),
            "parse_valid_episode_pct": 100.0 * ok_eps / max(1, len(recs)),
            "answered_pct": 100.0 * sum(1 for r in recs if r["prediction"]) / max(1, len(recs)),
            "em": 100.0 * sum(r["em"] for r in recs) / max(1, len(recs)),
            "mean_calls": sum(r["calls"] for r in recs) / max(1, len(recs))}


def run_sft(cfg, data: Path, out: Path) -> dict:
    """`mtr sft` in its own process, so that its peak RSS is its own."""
    cfg_path = out.with_suffix(".yaml")
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    subprocess.run([sys.executable, "-m", "mtr.cli", "sft", "--data", str(data), "--out", str(out), "-c",
                    str(cfg_path), "--overwrite"], check=True)
    return json.loads((out / "train_stats.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--heldout", type=int, default=30)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora-steps", type=int, default=10)
    ap.add_argument("--work", default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--sim-backend", default="llamacpp", choices=["llamacpp", "hf"])
    ap.add_argument("--out", default="benchmarks/results/sft.json")
    args = ap.parse_args()
    from mtr.config import RoleConfig, load_config
    from mtr.data import load_qa, resolve_benchmark
    from mtr.stages.evaluate import evaluate
    from mtr.stages.filter import run_filter
    from mtr.stages.synth import synthesize

    work = Path(args.work or tempfile.mkdtemp(prefix="mtr-bench-sft-"))
    work.mkdir(parents=True, exist_ok=True)
    hotpot = resolve_benchmark("hotpotqa")
    records = [json.loads(x) for x in hotpot.read_text().splitlines()]
    train_path, held_path = work / "train.jsonl", work / "heldout.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in records[: args.train]))
    held_path.write_text("".join(json.dumps(r) + "\n" for r in records[400: 400 + args.heldout]))
    load_qa(train_path), load_qa(held_path)

    res: dict = {"train_questions": args.train, "heldout_questions": args.heldout, "sim_backend": args.sim_backend}

    def simulated_by(cfg):
        # ToolMaker, AutoAgent and ToolActor on llama.cpp (the embedded GGUF): faster than transformers for
        # one sequence on a CPU; the policy stays on transformers (it is what trains).
        if args.sim_backend == "llamacpp":
            for role in ("toolmaker", "autoagent", "toolactor"):
                rc = cfg.role(role)
                setattr(cfg.roles, role, RoleConfig(backend="llamacpp", temperature=rc.temperature,
                                                    max_tokens=rc.max_tokens))
        return cfg

    cfg = simulated_by(load_config())
    cfg.synth.teacher, cfg.synth.grounding, cfg.synth.max_tool_calls = "scripted", "context", 3
    t = time.perf_counter()
    asyncio.run(synthesize(cfg, train_path, work / "synth"))
    funnel = run_filter(cfg, work / "synth" / "traces.jsonl")
    res["synth"] = {k: funnel[k] for k in ("episodes", "kept", "rejected")} | {"wall_s": time.perf_counter() - t}

    cfg.sft.trl.update(num_train_epochs=args.epochs, learning_rate=args.lr, report_to=[],
                       per_device_train_batch_size=4, save_steps=10_000)
    res["sft_full"] = run_sft(cfg, work / "synth" / "sft.jsonl", work / "sft-full")

    lora = load_config()
    lora.sft.lora = {"r": 16, "lora_alpha": 32}
    lora.sft.trl.update(max_steps=args.lora_steps, learning_rate=1e-3, report_to=[], per_device_train_batch_size=4,
                        save_steps=10_000)
    res["sft_lora"] = run_sft(lora, work / "synth" / "sft.jsonl", work / "sft-lora")

    for name, policy in (("base", None), ("sft", str(work / "sft-full"))):
        ecfg = simulated_by(load_config())
        ecfg.eval.benchmarks, ecfg.eval.modes, ecfg.eval.max_tool_calls = [str(held_path)], ["tools-on"], 2
        ecfg.tools.toolmaker_retries = 0
        ecfg.roles.policy = ecfg.roles.policy.model_copy(update={"temperature": 0.0, "max_tokens": 160})
        if policy:
            ecfg.roles.policy = ecfg.roles.policy.model_copy(update={"model": policy})
        t = time.perf_counter()
        asyncio.run(evaluate(ecfg, work / f"eval-{name}", overwrite=True))
        res[f"heldout_{name}"] = parse_valid(work / f"eval-{name}") | {"wall_s": time.perf_counter() - t}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    b, a = res["heldout_base"], res["heldout_sft"]
    print(f"SFT data: {res['synth']['kept']}/{res['synth']['episodes']} traces kept")
    for name in ("sft_full", "sft_lora"):
        r = res[name]
        print(f"{name}: {r['steps']} steps, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}, "
              f"{r['tokens_per_s']:.0f} tokens/s, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"parse-valid turns: base {b['parse_valid_turn_pct']:.1f}% -> SFT {a['parse_valid_turn_pct']:.1f}%; "
          f"episodes {b['parse_valid_episode_pct']:.1f}% -> {a['parse_valid_episode_pct']:.1f}%")
    print(f"work directory: {work}")


if __name__ == "__main__":
    main()
