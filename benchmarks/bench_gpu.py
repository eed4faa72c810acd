"""mtr's two training stages on a GPU: SFT and GRPO seconds per step and rollout tokens/s, in bf16, for randomly
initialised models of the embedded architecture (SmolLM2-135M) and of a 1.7B one (SmolLM2-1.7B's shape).

    .venv/bin/python benchmarks/bench_gpu.py --prepare runs/gpu-model  # here: the embedded model's tokenizer, config
    python3 benchmarks/bench_gpu.py --model-files runs/gpu-model       # on the GPU machine (results/gpu.json)

No trained weights are needed: the GPU machine need not hold the embedded model, only its tokenizer and config
(a few MB, written by `--prepare`); each architecture's weights are drawn at random there. The 1.7B shape is
SmolLM2-1.7B's because it shares the embedded model's tokenizer, vocabulary and chat template: the same traces
and prompts feed both sizes (a 1.5B of another family, Qwen2.5's, has a vocabulary three times larger that this
tokenizer cannot write).

Each architecture runs mtr's own stages as `bench_learning.py` runs them: the scripted teacher's traces of
the training split with the live `search` (the local retriever), `train_sft` on them, and `train_grpo` with
live tools from the random initialisation, for a few steps each, in two shapes (SHAPES: the `main` preset's,
as it runs on the CPU, and one sized for a GPU). A random policy never calls a tool, so every GRPO episode
is one turn of `max_turn_tokens` sampled tokens: this measures the rollout's speed, not its multi-turn shape.
SFT trains bf16 weights (`train_sft` loads the checkpoint so); GRPO trains fp32 weights under bf16 autocast
(TRL loads `model=path` in fp32 unless `model_init_kwargs` says otherwise).

Step times are medians over the steps after the first (CUDA's start-up and kernel choice land in the first):
each step's wall time from the training log's clock (`wall_s`: optimizer step included) and, for GRPO, TRL's
`step_time` (the rollout and the forward and backward passes; the rollout's share is of these). The rollout's
tokens/s is over every step, the first included. Each (architecture, shape) is written to the results file
as soon as it is done, with the machine, versions and commit it ran on, and a re-run with the same settings
skips it: a run cut off by the GPU lease's limit keeps what it measured. Exits 1 if a stage failed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_learning's configuration, when run from elsewhere

# What a model directory needs besides its weights (`--prepare` copies these from the embedded checkpoint).
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja")
ARCHS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {},  # the embedded model's own config
    "smollm2-1700m": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64,
                     "rope_parameters": {"rope_theta": 130000.0, "rope_type": "default"}},
    # for a check of the script on a CPU (seconds a step): not a figure to report
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16},
}
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    # bench_learning's main preset as it runs on the CPU: 4 traces a SFT step packed into one row, a GRPO step one
    # group of 4 episodes, gradient checkpointing on
    "preset": {"sft": {}, "grpo": {}},
    # what one GPU has room for: 16 traces a SFT step (the last, short batch of an epoch dropped, so that every
    # step is one), a GRPO step two groups of 8, no gradient checkpointing
    "gpu": {"sft": {"per_device_train_batch_size": 16, "gradient_checkpointing": False, "dataloader_drop_last": True},
            "grpo": {"num_generations": 8, "per_device_train_batch_size": 16, "gradient_checkpointing": False}},
}


def prepare(out: Path) -> None:
    """The embedded model's tokenizer and config, without its weights, into `out` (to carry to a GPU machine)."""
    from mtr.checkpoints import policy_checkpoint
    from mtr.config import Config

    src = policy_checkpoint(Config())
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    print(f"{', '.join(sorted(p.name for p in out.iterdir()))} -> {out}")


def random_checkpoint(model_files: Path, arch: str, out: Path, seed: int) -> int:
    """A checkpoint directory of `arch` with random bf16 weights (drawn on the GPU when there is one) and the
    embedded model's tokenizer; its parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((model_files / "config.json").read_text())
    config = AutoConfig.for_model(**{**config, **ARCHS[arch], "dtype": "bfloat16"})
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    del model
    for name in MODEL_FILES[1:]:
        if (model_files / name).is_file():
            shutil.copy2(model_files / name, out / name)
    return n


def stage_config(policy: Path, shape: str, steps: int, seed: int) -> Any:
    """bench_learning's `main` preset with `policy` as the policy, `shape`'s batch sizes, `steps` steps of
    each stage, no checkpoints on the way, and the questions in the file's order (solvable-first would
    roll the random policy out once more first)."""
    from bench_learning import PRESETS, base_config

    preset = {**PRESETS["main"], "grpo_steps": steps}
    preset["grpo"] = {**preset["grpo"], "question_order": "file"}
    cfg = base_config(preset, seed)
    cfg.roles.policy.model = str(policy)
    never = 10 ** 6
    # a log line a step: the step times are the differences of their clocks
    cfg.sft.trl.update(max_steps=steps, save_steps=never, report_to=[], logging_steps=1, **SHAPES[shape]["sft"])
    cfg.grpo.trl.update(save_steps=never, report_to=[], logging_steps=1, **SHAPES[shape]["grpo"])
    return cfg


def stage_settings(cfg: Any) -> dict[str, Any]:
    """What a shape's figures depend on besides the architecture: the SFT and GRPO arguments as resolved."""
    return {"sft": cfg.sft.trl, "grpo": {**cfg.grpo.trl, "max_turn_tokens": cfg.grpo.max_turn_tokens,
                                         "max_tool_calls": cfg.grpo.max_tool_calls}}


def training_traces(cfg: Any, work: Path) -> tuple[Path, Path]:
    """The training questions and the kept traces (SFT's rows), as bench_learning's synth and filter steps
    make them (the scripted teacher needs no model; the filter counts tokens with the policy's tokenizer)."""
    from bench_learning import PRESETS, training_file
    from mtr.stages.filter import run_filter
    from mtr.stages.synth import synthesize

    from mtr.embedded import file_sha256

    train = training_file(work, PRESETS["main"]["train_per_source"])
    # made once for a work directory, again when the questions or the synthesis settings differ
    identity = json.dumps({"data": file_sha256(train), "synth": cfg.synth.model_dump(mode="json"),
                           "seed": cfg.seed}, sort_keys=True)
    made = work / "filter" / "made_from.json"
    if not (work / "filter" / "sft.jsonl").is_file() or not made.is_file() or made.read_text() != identity:
        asyncio.run(synthesize(cfg, train, work / "synth", overwrite=True))
        run_filter(cfg, work / "synth" / "traces.jsonl", work / "filter")
        made.write_text(identity)
    return train, work / "filter" / "sft.jsonl"


def after_first(values: list[float]) -> dict[str, Any]:
    """The median of the values after the first (warm-up) one (None with only that one), and all of them."""
    return {"median_after_first": round(statistics.median(values[1:]), 4) if len(values) > 1 else None,
            "all": [round(v, 4) for v in values]}


def step_lines(out: Path, key: str) -> tuple[list[dict[str, Any]], list[float]]:
    """The log's lines of each step (those holding `key`) and each one's wall seconds: its clock's difference
    from the step before (the first from training's start)."""
    from mtr.training import read_log

    steps = [e for e in read_log(out) if key in e and "wall_s" in e]
    walls = [e["wall_s"] for e in steps]
    return steps, [b - a for a, b in zip([0.0] + walls, walls)]


def sft_figures(out: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Seconds per SFT step from the log's clock, and the median of each step's trained tokens (TRL's
    num_tokens, padding excluded) over its seconds after the first step."""
    steps, seconds = step_lines(out, "loss")
    tokens = [e.get("num_tokens") for e in steps]
    rates = [(b - a) / s for a, b, s in zip(tokens, tokens[1:], seconds[1:]) if None not in (a, b) and s > 0]
    return {"steps": len(steps), "seconds_per_step": after_first(seconds),
            "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
            "rows": stats.get("rows"), "loss_first": stats.get("loss_first"), "loss_last": stats.get("loss_last")}


def grpo_figures(out: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Seconds per GRPO step, by the log's clock and by TRL's step_time (the rollout and the forward and
    backward passes; not the optimizer step), the rollout's share of the step_time total, its tokens/s."""
    steps, seconds = step_lines(out, "step_time")
    step_time = [e["step_time"] for e in steps]
    episodes = [n for batch in stats.get("episode_tokens") or [] for n in batch]
    rate = stats.get("rollout_tokens_per_s")
    return {"steps": len(steps), "seconds_per_step": after_first(seconds),
            "step_time": after_first(step_time),
            "rollout_s": round(stats.get("rollout_s", 0.0), 2), "generate_s": round(stats.get("generate_s", 0.0), 2),
            "rollout_share_of_step_time": round(stats["rollout_s"] / sum(step_time), 3) if sum(step_time) else None,
            "rollout_tokens_per_s": round(rate, 1) if rate else None,
            "train_runtime_s": round(stats.get("train_runtime_s", 0.0), 2),
            "episode_tokens_mean": round(statistics.mean(episodes), 1) if episodes else None,
            "episodes": len(episodes), "share_prompt": stats.get("share_prompt")}


def gpu_gib(peak: bool) -> float | None:
    """GiB allocated on the GPU: at its peak since the last reset, or now."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round((torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2 ** 30, 2)


def environment() -> dict[str, Any]:
    import torch

    from mtr.rundir import source_commit, versions

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "cuda": torch.version.cuda, "machine": platform.machine(), "cpus": os.cpu_count(),
            "versions": versions(), "commit": source_commit(ROOT), "date": datetime.date.today().isoformat()}


def jax_probe() -> dict[str, Any] | None:
    """The GPU memory left free after importing the retriever's bm25s (which runs a JAX operation when JAX is
    installed), with JAX's preallocation on (its default) and off (mtr's default), each in a fresh process;
    None without a GPU or JAX."""
    import importlib.util

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("jax") is None:
        return None
    code = ("import bm25s.selection, torch; free, total = torch.cuda.mem_get_info(); "
            "print(round(free / 2 ** 30, 1), round(total / 2 ** 30, 1))")
    out: dict[str, Any] = {}
    for value in ("true", "false"):
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": value}
        try:
            free, total = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                         check=True, timeout=300).stdout.split()
        except (subprocess.SubprocessError, ValueError) as e:  # the probe's failure must not cost the lease
            print(f"jax probe ({value}) failed: {e}", flush=True)
            return None
        out[f"preallocate_{value}"] = {"free_gib": float(free), "total_gib": float(total)}
    return out


def run(model_files: Path, work: Path, results: Path, archs: list[str], shapes: list[str], steps: int,
        seed: int) -> dict[str, Any]:
    from mtr.jsonl import write_text_atomic
    from mtr.stages.grpo import train_grpo
    from mtr.stages.sft import train_sft

    # One entry a (architecture, shape): its figures, the settings they depend on and the machine they ran on.
    # A re-run skips an entry whose settings are the same and that did not fail; every other entry stays.
    doc = json.loads(results.read_text()) if results.is_file() else {}
    env = environment()
    probe = jax_probe()
    if probe is not None or "jax_probe" not in doc:  # a run without a GPU or JAX keeps the last measurement
        doc["jax_probe"] = probe
    doc.setdefault("archs", {})
    work.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        entry = doc["archs"].setdefault(arch, {"shapes": {}})
        config = {**json.loads((model_files / "config.json").read_text()), **ARCHS[arch]}
        policy = work / f"{arch}-init"
        cfgs = {s: stage_config(policy, s, steps, seed) for s in shapes}
        settings = {s: {"steps": steps, "seed": seed, "config": config, **stage_settings(cfgs[s])} for s in shapes}
        todo = [s for s in shapes if not (done(entry["shapes"].get(s))
                                          and entry["shapes"][s].get("settings") == settings[s])]
        if not todo:
            print(f"{arch}: done before, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        entry["parameters"] = random_checkpoint(model_files, arch, policy, seed)
        entry["init_s"] = round(time.perf_counter() - t0, 1)
        train, sft_rows = training_traces(cfgs[todo[0]], work)
        for shape in todo:
            cfg = cfgs[shape]
            figures = {"sft": measure(work / f"{arch}-{shape}-sft", lambda out: sft_figures(
                           out, train_sft(cfg, sft_rows, out, overwrite=True))),
                       "grpo": measure(work / f"{arch}-{shape}-grpo", lambda out: grpo_figures(
                           out, train_grpo(cfg, train, policy, out, overwrite=True)))}
            entry["shapes"][shape] = {**figures, "settings": settings[shape], "environment": env}
            write_text_atomic(results, json.dumps(doc, indent=2) + "\n")
            print(f"{arch} {shape}: " + "; ".join(f"{k} {summary(v)}" for k, v in figures.items()), flush=True)
        shutil.rmtree(policy, ignore_errors=True)
    return doc


def measure(out: Path, stage: Any) -> dict[str, Any]:
    """`stage(out)`'s figures with the GPU memory allocated before it (what the stage before left) and at its
    peak; a failure is recorded (its first line) instead, so that the other stages and sizes still run inside
    the lease. The stage's checkpoints are removed afterwards (GBs at 1.7B, never read); its log stays."""
    import traceback

    import torch

    from mtr.peak_memory import release_memory

    release_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    before = gpu_gib(peak=False)
    try:
        figures = stage(out)
        figures.update(gpu_gib_before=before, peak_gpu_gib=gpu_gib(peak=True))
    except Exception as e:  # noqa: BLE001 - any failure is a finding to record, not a reason to stop
        traceback.print_exc()
        figures = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
    if out.is_dir():
        for p in out.iterdir():
            if p.is_dir() or p.suffix == ".safetensors":
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    return figures


def done(figures: dict[str, Any] | None) -> bool:
    return bool(figures) and not any("error" in v for v in figures.values())


def summary(figures: dict[str, Any]) -> str:
    if "error" in figures:
        return f"failed: {figures['error']}"
    rate = figures.get("rollout_tokens_per_s") or figures.get("tokens_per_s")
    return f"{figures['seconds_per_step']['median_after_first']} s/step, {rate} tokens/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", type=Path, metavar="DIR", help="write the embedded model's tokenizer and config "
                    "to DIR and stop")
    ap.add_argument("--model-files", type=Path, help="a directory --prepare wrote")
    ap.add_argument("--archs", default="smollm2-135m,smollm2-1700m", help=f"of {', '.join(ARCHS)}")
    ap.add_argument("--shapes", default="preset,gpu", help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--steps", type=int, default=6, help="steps of each stage (the first is warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-gpu"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    if not args.model_files or not (args.model_files / "config.json").is_file():
        raise SystemExit("--model-files: give a directory that --prepare wrote (config.json, tokenizer files)")
    archs, shapes = args.archs.split(","), args.shapes.split(",")
    for flag, given, known in (("--archs", archs, ARCHS), ("--shapes", shapes, SHAPES)):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise SystemExit(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if args.steps < 2:
        raise SystemExit("--steps: at least 2 (the first is warm-up)")
    if args.out.resolve() == RESULTS.resolve() and "tiny" in archs:
        raise SystemExit("--archs tiny: a check of the script, not a figure for the results file; give --out")
    doc = run(args.model_files, args.work, args.out, archs, shapes, args.steps, args.seed)
    failed = [f"{a} {s} {k}" for a in archs for s in shapes
              for k, v in doc["archs"][a]["shapes"].get(s, {}).items() if isinstance(v, dict) and "error" in v]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see {args.out})")


if __name__ == "__main__":
    main()
