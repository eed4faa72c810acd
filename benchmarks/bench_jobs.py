"""Does `bench_learning.py --jobs N` pay? The same work in one process with every core, and in N processes
side by side with the cores shared out (OMP_NUM_THREADS), for an evaluation and for GRPO steps.

    .venv/bin/python benchmarks/bench_jobs.py [--policy runs/bench-learning/pool-s0/sft-s0] [--jobs 2]

Each process evaluates the policy on the first `--questions` held-out questions of each benchmark (live
tools, the learning benchmark's settings), then trains `--steps` GRPO steps from it (the file's order, no
solvable-first pass), all in the same work: the N side-by-side processes each do what the lone one did. The
policy defaults to the embedded model; an SFT checkpoint of the learning benchmark answers and calls tools as
the trained arms do. Prints the figures and writes them to benchmarks/results/jobs.json: for each part the
lone process's wall, the side-by-side processes' walls, the slowdown of one process beside the others
(`beside_s / alone_s`, what bench_learning.py's estimate multiplies a unit's steps by) and the throughput
(`jobs * alone_s / beside_s`: 1.0 means --jobs gains nothing), the cores the lone process kept busy, and how
many of its outputs (predictions; GRPO steps' mean completion lengths) each side-by-side process made alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "jobs.json"
PARTS = ("eval", "grpo")


def one_part(part: str, policy: str, out: Path, questions: int, steps: int) -> dict:
    """In this process: one part's work; its wall seconds (the model's loading included, as a unit pays it), the
    cores it kept busy on average (CPU time over wall), and what it produced: the evaluation's predictions, the
    GRPO steps' mean completion lengths."""
    import resource

    import torch

    import bench_learning as bl
    from mtr.checkpoints import policy_checkpoint

    cfg = bl.base_config(bl.PRESETS["main"], 0)
    init = Path(policy) if policy != "embedded" else policy_checkpoint(cfg)
    t0 = time.perf_counter()
    if part == "eval":
        from mtr.stages.evaluate import evaluate

        ecfg = cfg.with_policy(init)
        ecfg.eval = ecfg.eval.model_copy(update={"grounding": "retrieval", "limit": questions})
        asyncio.run(evaluate(ecfg, out, overwrite=True))
        from mtr.jsonl import read_jsonl

        made = {r["key"]: r["prediction"] for r in read_jsonl(out / "predictions.jsonl")}
    else:
        from mtr.stages.grpo import train_grpo

        cfg.grpo = cfg.grpo.model_copy(update={"question_order": "file",
                                               "trl": {**cfg.grpo.trl, "max_steps": steps, "save_steps": steps + 1}})
        train = bl.training_file(out, cfg.grpo.trl["max_steps"])
        train_grpo(cfg, train, init, out / "grpo", limit=steps, overwrite=True)
        logged = [json.loads(line) for line in (out / "grpo" / "log.jsonl").read_text().splitlines() if line.strip()]
        made = {str(r["step"]): r["completions/mean_length"] for r in logged if "completions/mean_length" in r}
    wall = time.perf_counter() - t0
    used = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": round(wall, 1), "threads": torch.get_num_threads(),
            "cores_busy": round((used.ru_utime + used.ru_stime) / wall, 2), "made": made}


def processes(part: str, n: int, threads: int, args: argparse.Namespace, work: Path) -> list[dict]:
    """`n` processes of `threads` threads each doing the part at once; each one's figures."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", part, "--out", str(work / f"{part}-{n}-{i}"),
                               "--policy", args.policy, "--questions", str(args.questions), "--steps", str(args.steps)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
             for i in range(n)]
    outs = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"bench_jobs: a {part} process failed (exit {p.returncode}); run it alone: "
                             f"{__file__} --worker {part} --out /tmp/x --policy {args.policy}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="embedded", help="an HF checkpoint directory (default: the embedded model)")
    ap.add_argument("--jobs", type=int, default=2, help="processes side by side (default 2)")
    ap.add_argument("--questions", type=int, default=8, help="held-out questions of each benchmark (default 8)")
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps (default 3)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-jobs")
    ap.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(one_part(args.worker, args.policy, args.out, args.questions, args.steps)))
        return
    if args.jobs < 2:
        raise SystemExit(f"--jobs {args.jobs}: compare at least 2 processes with one")
    from bench_grpo_checkpointing import this_machine
    from mtr.rundir import git_commit

    from bench_learning import usable_cores

    cores = usable_cores()
    res = {**this_machine(), "commit": (git_commit() or "?")[:7], "cores": cores, "jobs": args.jobs,
           "policy": args.policy, "questions_per_benchmark": args.questions, "grpo_steps": args.steps, "parts": {}}
    for part in PARTS:
        alone = processes(part, 1, cores, args, args.work)[0]
        beside = processes(part, args.jobs, max(1, cores // args.jobs), args, args.work)
        beside_s = max(b["wall_s"] for b in beside)
        # greedy answers and sampled episodes alike whatever the threads? (float sums in another order may differ)
        alike = [sum(b["made"].get(k) == v for k, v in alone["made"].items()) for b in beside]
        res["parts"][part] = {"alone_s": alone["wall_s"], "alone_threads": alone["threads"],
                              "alone_cores_busy": alone["cores_busy"],
                              "beside_s": [b["wall_s"] for b in beside], "beside_threads": beside[0]["threads"],
                              "outputs": len(alone["made"]), "alike_beside": alike,
                              "slowdown": round(beside_s / alone["wall_s"], 3),
                              "throughput": round(args.jobs * alone["wall_s"] / beside_s, 3)}
        print(f"{part}: one process of {alone['threads']} threads {alone['wall_s']} s; {args.jobs} of "
              f"{beside[0]['threads']} side by side {', '.join(str(b['wall_s']) for b in beside)} s: "
              f"{res['parts'][part]['throughput']:.2f}x the work; the lone one kept {alone['cores_busy']} cores busy; "
              f"outputs alike {alike} of {len(alone['made'])}")
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
