"""What the portable llama.cpp build costs against the native one on this machine.

    .venv/bin/python benchmarks/bench_llamacpp_build.py [--repeats 5] [--prompt-tokens 512] [--decode-tokens 64]

Takes the wheels `python -m mtr.llamacpp_build` built (or builds them: a few minutes each), unpacks each into
its own folder, and alternates the variants, each run in a fresh child process on the embedded GGUF: prompt
reading (one batch of `--prompt-tokens`) and greedy decoding, in tokens/s. Medians per variant and the
ratio go to stdout and `benchmarks/results/llamacpp_build.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mtr.llamacpp_build import VARIANTS, build_wheel, check, cpu_info


def unpack(wheel: Path, where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir", "--target",
                    str(where), str(wheel)], check=True)
    return where


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="portable,native")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/llamacpp_build.json")
    args = ap.parse_args()
    names = args.variants.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench-llamacpp-"))
    dirs = {n: unpack(build_wheel(VARIANTS[n]), tmp / n) for n in names}
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in (names if r % 2 == 0 else names[::-1]):  # alternated, so drift in the machine hits both
            env = {**os.environ, "PYTHONPATH": str(dirs[n])}
            res = check(prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens, threads=args.threads,
                        env=env)
            if not res.ok:
                raise SystemExit(f"{n}: {res.message}")
            d = res.detail
            runs[n].append({"prompt_tokens_per_s": d["prompt_tokens"] / d["prompt_s"],
                            "decode_tokens_per_s": d["decoded_tokens"] / d["decode_s"], "features": d["features"]})
            print(f"run {r + 1} {n}: prompt {runs[n][-1]['prompt_tokens_per_s']:.0f} tokens/s, "
                  f"decode {runs[n][-1]['decode_tokens_per_s']:.1f} tokens/s", flush=True)
    summary = {n: {"prompt_tokens_per_s": statistics.median(x["prompt_tokens_per_s"] for x in runs[n]),
                   "decode_tokens_per_s": statistics.median(x["decode_tokens_per_s"] for x in runs[n]),
                   "features": runs[n][0]["features"], "runs": runs[n]} for n in names}
    base = names[0]
    print("\n| variant | prompt reading, tokens/s | decoding, tokens/s | instruction sets |\n|---|---:|---:|---|")
    for n in names:
        s = summary[n]
        ratio = (f" ({s['prompt_tokens_per_s'] / summary[base]['prompt_tokens_per_s']:.2f}x)",
                 f" ({s['decode_tokens_per_s'] / summary[base]['decode_tokens_per_s']:.2f}x)") if n != base else ("", "")
        print(f"| {n} | {s['prompt_tokens_per_s']:.0f}{ratio[0]} | {s['decode_tokens_per_s']:.1f}{ratio[1]} | "
              f"{' '.join(s['features'])} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu_info()[0], "machine": platform.machine(), "cores": os.cpu_count(),
                               "settings": vars(args), "variants": summary}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
