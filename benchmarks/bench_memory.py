"""Where the demo's training memory goes: peak RSS and wall time of SFT and GRPO under the settings that
change it, each variant in its own process, on the demo's own data.

    .venv/bin/python benchmarks/bench_memory.py --run runs/demo [--parts sft,grpo] [--variants ...]

`--run` is a finished demo run (`mtr demo`): its `synth/sft.jsonl` feeds SFT and its `sft/` checkpoint
starts GRPO, with the demo preset's other settings. A variant is `name:key=value,key=value` over the stage's
TRL arguments (`sft.trl`, `grpo.trl`). Results go to `benchmarks/results/memory.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "src" / "mtr" / "configs" / "demo.yaml"
BATCH_4 = "per_device_train_batch_size=4,gradient_accumulation_steps=1"
VARIANTS = {
    "sft": [f"batch 4:{BATCH_4},gradient_checkpointing=false",
            f"batch 4, checkpointing:{BATCH_4},gradient_checkpointing=true",
            "2 x 2:per_device_train_batch_size=2,gradient_accumulation_steps=2,gradient_checkpointing=false",
            "2 x 2, checkpointing:per_device_train_batch_size=2,gradient_accumulation_steps=2,"
            "gradient_checkpointing=true",
            "1 x 4, checkpointing:gradient_accumulation_steps=4,per_device_train_batch_size=1,"
            "gradient_checkpointing=true"],
    "grpo": [f"batch 4:{BATCH_4},gradient_checkpointing=false",
             f"batch 4, checkpointing:{BATCH_4},gradient_checkpointing=true",
             "2 x 2, checkpointing:per_device_train_batch_size=2,gradient_accumulation_steps=2,"
             "gradient_checkpointing=true",
             "1 x 4, checkpointing:gradient_accumulation_steps=4,per_device_train_batch_size=1,"
             "gradient_checkpointing=true"],
}

CHILD = r"""
import json, sys
from pathlib import Path
from mtr.config import load_config
stage, run, out, settings = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
cfg = load_config(sys.argv[5])
trl = getattr(cfg, stage).trl
for k, v in settings:
    trl[k] = v
getattr(cfg, stage).trl = trl  # validated as a whole (whole groups per generation batch)
if stage == "sft":
    from mtr.stages.sft import train_sft
    stats = train_sft(cfg, run / "synth" / "sft.jsonl", out, overwrite=True)
    extra = {"loss_last": stats["loss_last"]}
else:
    from mtr.data import resolve_benchmark
    from mtr.stages.grpo import train_grpo
    stats = train_grpo(cfg, resolve_benchmark(cfg.run.train_data), run / "sft", out, limit=cfg.run.train_limit,
                       overwrite=True)
    extra = {"reward_curve": stats["curve"]["reward"], "rollout_s": stats["rollout_s"]}
print("RESULT " + json.dumps({"peak_rss_mb": stats["peak_rss_mb"], "train_s": stats["train_runtime_s"], **extra}))
"""


def parse_variant(text: str) -> tuple[str, list[tuple[str, object]]]:
    name, _, body = text.partition(":")
    settings = []
    for kv in filter(None, body.split(",")):
        k, _, v = kv.partition("=")
        settings.append((k, json.loads(v)))
    return name, settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished demo run directory")
    ap.add_argument("--config", type=Path, default=DEMO)
    ap.add_argument("--parts", default="sft,grpo")
    ap.add_argument("--variants", nargs="*", help="override the variants (name:key=value,...)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-memory"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"))
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for part in args.parts.split(","):
        entries = []
        for text in args.variants or VARIANTS[part]:
            name, settings = parse_variant(text)
            cmd = [sys.executable, "-c", CHILD, part, str(args.run), str(args.work / part), json.dumps(settings),
                   str(args.config)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode != 0 or not lines:
                raise SystemExit(f"{part} {name}: failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
            res = {"variant": name, "settings": dict(settings), **json.loads(lines[-1][7:])}
            entries.append(res)
            print(f"{part} {name}: peak {res['peak_rss_mb'] / 1024:.1f} GB, {res['train_s']:.0f} s", flush=True)
        results[part] = {"date": time.strftime("%Y-%m-%d"), "config": str(args.config), "variants": entries}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
