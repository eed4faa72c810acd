"""Synthesis on N HotpotQA questions with the embedded model on each backend: episodes/s and kept %.

    .venv/bin/python benchmarks/bench_synth.py [--n 20] [--backends hf,llamacpp,openai-1,openai-8]

Every role is played by the same backend. `openai-K` is the llama.cpp server (llama-cpp-python) on the
embedded GGUF, reached through the `openai` backend with K requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def config_for(backend: str, url: str | None):
    from mtr.config import Config, RoleConfig

    cfg = Config()
    for role in ("toolmaker", "autoagent", "toolactor", "policy"):
        base = cfg.role(role)
        if backend == "llamacpp":
            rc = RoleConfig(backend="llamacpp", temperature=base.temperature, max_tokens=base.max_tokens)
        elif backend.startswith("openai"):
            rc = RoleConfig(backend="openai", model="smollm2", base_url=url, json_mode="json_object",
                            max_concurrency=int(backend.split("-")[1]), temperature=base.temperature,
                            max_tokens=base.max_tokens, timeout_s=600)
        else:
            rc = base
        setattr(cfg.roles, role, rc)
    if backend.startswith("openai"):
        cfg.synth.concurrency = int(backend.split("-")[1])
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--backends", default="hf,llamacpp,openai-1,openai-8")
    ap.add_argument("--data", default="hotpotqa")
    ap.add_argument("--out", default="benchmarks/results/synth.json")
    args = ap.parse_args()
    from mtr.data import resolve_benchmark
    from mtr.stages.filter import run_filter
    from mtr.stages.synth import synthesize

    data = resolve_benchmark(args.data)
    results = {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as d:
            if backend.startswith("openai"):
                from servers import llama_server

                with llama_server() as url:
                    stats = asyncio.run(synthesize(config_for(backend, url), data, Path(d), limit=args.n))
            else:
                stats = asyncio.run(synthesize(config_for(backend, None), data, Path(d), limit=args.n))
            stats.update(run_filter(config_for(backend, None), Path(d) / "traces.jsonl"))
        results[backend] = {k: stats[k] for k in ("episodes", "kept", "kept_pct", "rejected", "malformed_pct",
                                                  "mean_calls_per_episode", "generated_tokens", "wall_s",
                                                  "episodes_per_s")}
        print(backend, json.dumps(results[backend]))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"n": args.n, "data": str(data), "results": results}, indent=2))
    for b, r in results.items():
        print(f"{b:10s} {r['episodes_per_s']:.3f} episodes/s  kept {r['kept_pct']:.0f}%  "
              f"malformed {r['malformed_pct']:.0f}%  {r['generated_tokens'] / r['wall_s']:.1f} tokens/s")


if __name__ == "__main__":
    main()
