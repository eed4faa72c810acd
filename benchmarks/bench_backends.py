"""Embedded-model load times and generation rates of each local backend on this machine.

    .venv/bin/python benchmarks/bench_backends.py [--out benchmarks/results/backends.json] [--repeats 3]

Cold load: GGUF -> cached HF checkpoint in a fresh MTR_HOME. Warm load: from that cache. Generation:
greedy, a fixed 128 new tokens per sequence (EOS suppressed by asking for a long answer), median of repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook. Be detailed."}]


def load_seconds(home: str) -> float:
    code = ("import time; t=time.perf_counter(); from mtr.backends import HFBackend; from mtr.config import RoleConfig;"
            "HFBackend(RoleConfig()).load(); print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MTR_HOME": home}, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def gen_rate(backend, batch: int, tokens: int, repeats: int) -> dict:
    from mtr.backends import SamplingParams

    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        outs = asyncio.run(backend.generate([PROMPT] * batch, SamplingParams(temperature=0, max_tokens=tokens)))
        dt = time.perf_counter() - t
        rates.append(sum(o[0].completion_tokens for o in outs) / dt)
    return {"batch": batch, "tokens_per_s": statistics.median(rates), "runs": rates}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/backends.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    from mtr.backends import HFBackend, LlamaCppBackend
    from mtr.config import RoleConfig

    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as home:
        res["load_cold_s"] = load_seconds(home)
        res["load_warm_s"] = statistics.median(load_seconds(home) for _ in range(args.repeats))
    hf = HFBackend(RoleConfig(batch_size=64))
    hf.load()
    res["hf"] = [gen_rate(hf, b, args.tokens, args.repeats) for b in (1, 8)]
    lc = LlamaCppBackend(RoleConfig(backend="llamacpp", n_ctx=2048))
    lc.load()
    res["llamacpp"] = [gen_rate(lc, 1, args.tokens, args.repeats)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"load: cold {res['load_cold_s']:.1f}s, warm {res['load_warm_s']:.1f}s")
    for name in ("hf", "llamacpp"):
        for r in res[name]:
            print(f"{name:9s} batch {r['batch']:2d}: {r['tokens_per_s']:7.1f} tokens/s")


if __name__ == "__main__":
    main()
