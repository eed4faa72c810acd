"""A few rows times a weight matrix on this CPU: as `nn.Linear` computes it (x @ W.T) and weight-major (W @ x.T).

    .venv/bin/python benchmarks/bench_weight_major.py [--repeats 5]

A decoding step multiplies the batch's rows (one token each, 1 to 16 in mtr's evaluation and rollouts) by
every weight of the model. Both forms are one BLAS product with the operands' roles swapped; on an AMD EPYC
with AVX2, torch's (MKL's) kernel for the first ran several times slower than for the second at a few rows.
For each matrix shape of the embedded SmolLM2-135M (attention, MLP, the vocabulary head) and each row count,
the best of `--repeats` passes over a stack of such matrices larger than the caches (a decoding step reads
its weights from memory): milliseconds a pass for each form, their ratio, and what `kvcache.weight_major_pays`
decides here (mtr computes a decoding step's products weight-major where it does). Writes
benchmarks/results/weight_major.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "weight_major.json"
# (out, in) of SmolLM2-135M's linear layers: q and o, k and v, MLP up (gate alike), MLP down, the head
SHAPES = {"attention q/o": (576, 576), "attention k/v": (192, 576), "mlp gate/up": (1536, 576),
          "mlp down": (576, 1536), "head": (49152, 576)}
ROWS = (1, 4, 8, 16, 32, 64)
STACK_BYTES = 64 << 20  # each pass reads this much weight (the head: one matrix, 113 MB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    from bench_learning import cpu_kernels, cpu_name
    from mtr.backends.kvcache import fastest_pass, weight_major_pays
    from mtr.rundir import source_commit

    g = torch.Generator().manual_seed(0)
    shapes: dict[str, dict[str, dict[str, float]]] = {}
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            weights = [torch.randn(n, k, generator=g) for _ in range(max(1, STACK_BYTES // (4 * n * k)))]
            shapes[name] = {}
            for rows in ROWS:
                x = torch.randn(rows, k, generator=g)
                linear = fastest_pass(lambda w: torch.nn.functional.linear(x, w), weights, args.repeats)
                major = fastest_pass(lambda w: w @ x.t(), weights, args.repeats)
                shapes[name][str(rows)] = {"linear_ms": round(1000 * linear, 3), "weight_major_ms": round(1000 * major, 3),
                                           "ratio": round(linear / major, 2)}
                print(f"{name:14} {rows:3} rows: x @ W.T {1000 * linear:8.2f} ms, W @ x.T {1000 * major:8.2f} ms, "
                      f"ratio {linear / major:.2f}", flush=True)
            del weights
    result = {"date": time.strftime("%Y-%m-%d"), "commit": source_commit(ROOT), "cpu": cpu_name(),
              "cpu_kernels": cpu_kernels(), "threads": torch.get_num_threads(), "repeats": args.repeats,
              "weight_major_pays": weight_major_pays(), "shapes": shapes}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"weight_major_pays here: {result['weight_major_pays']}; wrote {OUT}")


if __name__ == "__main__":
    main()
