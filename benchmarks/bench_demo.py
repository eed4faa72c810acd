"""`make demo` as a benchmark: wall time and peak resident memory of each stage, and of the whole run.

    .venv/bin/python benchmarks/bench_demo.py [--label after] [--config CONFIG] [--runs 1]

Runs `mtr run` with the demo preset into a fresh directory, in its own process, and reads what each stage
recorded in its `stage_done.json` (wall seconds, and the peak RSS of that stage alone: the pipeline resets
the kernel's high-water mark at each stage's start). The entry is stored under `--label` in
`benchmarks/results/demo.json`, beside the entries of earlier labels (e.g. before and after a change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mtr.llamacpp_build import cpu_info
from mtr.rundir import source_commit

STAGES = ("tools", "synth", "filter", "sft", "grpo", "eval")
DEMO = Path(__file__).resolve().parents[1] / "src" / "mtr" / "configs" / "demo.yaml"


def one_run(config: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mtr.cli", "run", "-c", str(config), "--out", str(out)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"mtr run failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    try:
        return read_run(out, wall)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def read_run(out: Path, wall: float | None) -> dict:
    stages = {}
    for s in STAGES:
        done = json.loads((out / s / "stage_done.json").read_text())
        stages[s] = {"wall_s": round(done["wall_s"], 1), "peak_rss_mb": done.get("peak_rss_mb")}
    rows = json.loads((out / "eval" / "results.json").read_text())["rows"]
    filtered = json.loads((out / "filter" / "stage_done.json").read_text())
    return {"wall_s": round(wall, 1) if wall is not None else None, "peak_rss_mb": max(v["peak_rss_mb"] or 0 for v in stages.values()),
            "stages": stages, "filter": {k: filtered.get(k) for k in ("kept", "episodes")}, "eval": [{k: r.get(k) for k in ("benchmark", "mode", "em", "f1", "no_answer_pct",
                                                               "answered_pct", "well_formed_pct", "parse_valid_pct",
                                                               "malformed_pct", "mean_calls")} for r in rows]}


def machine_kernels() -> dict:
    """What sets a run's speed among CPUs of one name, as the learning benchmark records it (entries before
    2026-12-06 did not): the vector instructions torch's kernels use, and whether the policy's decoding computes
    a few rows' products weight-major here (the run's own process decides it by the same timing)."""
    from bench_learning import cpu_kernels, weight_major_pays

    return {"cpu_kernels": cpu_kernels(), "weight_major": weight_major_pays()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True, help="name of this entry, e.g. before / after")
    ap.add_argument("--config", type=Path, default=DEMO)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--from-run", type=Path, help="read a finished run directory instead of running one")
    ap.add_argument("--wall-s", type=float, help="with --from-run: the run's measured wall time")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/demo.json"))
    args = ap.parse_args()
    commit = source_commit(Path(__file__).resolve().parents[1])
    runs = []
    for i in range(1 if args.from_run else args.runs):
        runs.append(read_run(args.from_run, args.wall_s) if args.from_run else one_run(args.config))
        st = runs[-1]["stages"]
        print(f"run {i + 1}: {runs[-1]['wall_s'] or 0:.0f} s, peak {runs[-1]['peak_rss_mb'] / 1024:.1f} GB; " + ", ".join(
            f"{s} {st[s]['wall_s']:.0f} s / {st[s]['peak_rss_mb'] / 1024:.1f} GB" for s in STAGES), flush=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "cpu": cpu_info()[0] or platform.machine(),
                           **machine_kernels(), "cores": os.cpu_count(), "config": str(args.config), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} [{args.label}]")


if __name__ == "__main__":
    main()
