"""The whole method from one config (`mtr run`): synth -> filter -> SFT -> GRPO -> eval -> report.

Each stage writes into its own subdirectory of the run and, when it has finished, a `stage_done.json` there.
A stage with that marker is skipped; one without it is re-entered and resumes from what it wrote (synthesis
and evaluation skip finished questions, SFT and GRPO continue from their last checkpoint). So a killed run
continues where it stopped, and nothing that was written is lost.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mtr.config import Config
from mtr.data import load_qa, resolve_benchmark
from mtr.jsonl import write_text_atomic
from mtr.manifest import write_manifest
from mtr.peak_memory import peak_rss_mb, release_memory, reset_peak

console = Console()
DONE = "stage_done.json"
STAGES = ("synth", "sft", "grpo", "eval")

# Rough costs on a 2-core CPU with the embedded 135M model (the demo's stages, benchmarks/results/demo.json:
# synth 66 s for 12 questions, SFT 75 s for 12 rows, GRPO 90 s for 8 rollouts, eval 87 s for 12 questions
# tools on and off), used only to tell the user up front how long a run should take; a server or a GPU is
# much faster, and then the estimate is moot.
CPU_SECONDS = {"synth_question": 5.5, "sft_row_epoch": 5.0, "grpo_rollout": 10.0, "eval_on": 6.0,
               "eval_off": 1.5, "stage_start": 10.0}


def stage_done(stage_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((stage_dir / DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def mark_done(stage_dir: Path, wall_s: float, **extra: Any) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stage_dir / DONE, json.dumps(
        {"wall_s": wall_s, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}, indent=2))


def eval_benchmark_sizes(cfg: Config) -> dict[str, int]:
    sizes = {}
    for b in cfg.eval.benchmarks:
        n = sum(1 for line in resolve_benchmark(b).open(encoding="utf-8") if line.strip())
        sizes[b] = min(n, cfg.eval.limit) if cfg.eval.limit else n
    return sizes


def plan(cfg: Config, n_train: int) -> tuple[list[str], float]:
    """What each stage will do, in words, and the expected seconds on a 2-core CPU with the embedded model."""
    r, lines, total = cfg.run, [], 0.0
    for stage in r.stages:
        total += CPU_SECONDS["stage_start"]
        if stage == "synth":
            lines.append(f"synth: {n_train} questions x {cfg.synth.episodes_per_question} episode(s), "
                         f"teacher {cfg.synth.teacher}, then filtering")
            total += CPU_SECONDS["synth_question"] * n_train * cfg.synth.episodes_per_question
        elif stage == "sft":
            s = cfg.sft
            rows = n_train * cfg.synth.episodes_per_question
            batch = s.per_device_train_batch_size * s.gradient_accumulation_steps
            steps = s.max_steps if s.max_steps > 0 else int(rows * s.num_train_epochs / batch)
            lines.append(f"sft: {'LoRA' if s.lora else 'full'} fine-tuning, {steps} steps of {batch} traces")
            total += CPU_SECONDS["sft_row_epoch"] * steps * batch
        elif stage == "grpo":
            g = cfg.grpo
            rollouts = g.per_device_train_batch_size * g.gradient_accumulation_steps
            lines.append(f"grpo: {g.train_steps} steps, {rollouts} rollouts a step in groups "
                         f"of {g.num_generations}, up to {g.max_steps} tool calls each")
            total += CPU_SECONDS["grpo_rollout"] * g.train_steps * rollouts
        elif stage == "eval":
            sizes = eval_benchmark_sizes(cfg)
            policies = 2 if r.eval_base else 1
            lines.append("eval: " + ", ".join(f"{b} ({n})" for b, n in sizes.items()) + f", {' and '.join(cfg.eval.modes)}"
                         + (", trained and initial policy" if r.eval_base else ""))
            for mode in cfg.eval.modes:
                total += policies * sum(sizes.values()) * CPU_SECONDS["eval_on" if mode == "tools-on" else "eval_off"]
    return lines, total


def run_pipeline(cfg: Config, out: Path, overwrite: bool = False, report: bool = True) -> dict[str, Any]:
    """Run the configured stages into `out`; returns {stage: stage_done record}."""
    from mtr.sft import last_checkpoint, policy_source

    out = Path(out)
    train_path = resolve_benchmark(cfg.run.train_data)
    n_train = len(load_qa(train_path, cfg.run.train_limit))
    if overwrite and out.exists():
        for stage in (*STAGES, "eval-base"):
            shutil.rmtree(out / stage, ignore_errors=True)
    write_manifest(out, "pipeline", cfg.model_dump(mode="json"), {"train_data": train_path}, cfg.seed, overwrite=overwrite)
    for b in cfg.eval.benchmarks if "eval" in cfg.run.stages else []:
        if resolve_benchmark(b).resolve() == train_path.resolve():
            console.print(f"[yellow]warning:[/yellow] eval benchmark {b!r} is the training file {train_path}: "
                          "its first questions were trained on", highlight=False)

    lines, seconds = plan(cfg, n_train)
    console.rule(f"mtr run -> {out}")
    for i, line in enumerate(lines, 1):
        console.print(f"  {i}. {line}", highlight=False)
    console.print(f"  expected: about {seconds / 60:.0f} min on a 2-core CPU with the embedded model "
                  "(much less with a GPU or a server); finished stages are skipped", highlight=False)

    init = policy_source(cfg)
    policy = init
    records: dict[str, Any] = {}
    n = len(cfg.run.stages)
    try:
        for i, stage in enumerate(cfg.run.stages, 1):
            d = out / stage
            done = stage_done(d)
            if done is not None:
                console.rule(f"stage {i}/{n}: {stage} (done in an earlier invocation, skipped)")
            else:
                console.rule(f"stage {i}/{n}: {stage}")
                t0 = time.perf_counter()
                reset_peak()
                extra = _run_stage(stage, cfg, out, train_path, init, policy, last_checkpoint)
                done = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": round(peak_rss_mb()), **extra}
                mark_done(d, **done)
                release_memory()  # the next stage loads its own model
            records[stage] = done
            if stage in ("sft", "grpo"):
                policy = d
    finally:
        # A failed or interrupted run still gets its report: it shows what finished and says what did not.
        if report:
            from mtr.report import write_report

            try:
                console.print(f"report: {write_report(out)}", highlight=False)
            except Exception as e:  # noqa: BLE001 - the stage's own error matters more than the report's
                console.print(f"[yellow]report not written:[/yellow] {e}", highlight=False)
    return records


def _run_stage(stage: str, cfg: Config, out: Path, train_path: Path, init: Path, policy: Path,
               last_checkpoint) -> dict[str, Any]:
    if stage == "synth":
        from mtr.synth import synthesize

        stats = asyncio.run(synthesize(cfg, train_path, out / "synth", limit=cfg.run.train_limit))
        if stats["kept"] == 0:
            raise ValueError(f"{out / 'synth'}: synthesis kept no trace of {stats['episodes']} "
                             f"(rejected: {stats['rejected']}); SFT has nothing to learn from. A small model as "
                             "teacher rarely answers right: try synth.teacher: scripted, or a larger teacher")
        return {"kept": stats["kept"], "episodes": stats["episodes"]}
    if stage == "sft":
        from mtr.sft import train_sft

        data = out / "synth" / "sft.jsonl"
        if not data.is_file():
            raise FileNotFoundError(f"{data}: no SFT data; the synth stage runs first (run.stages)")
        stats = train_sft(cfg, data, out / "sft", resume=last_checkpoint(out / "sft") is not None)
        return {"steps": stats.get("steps"), "loss_first": stats.get("loss_first"), "loss_last": stats.get("loss_last")}
    if stage == "grpo":
        from mtr.grpo import train_grpo

        stats = train_grpo(cfg, train_path, policy, out / "grpo", limit=cfg.run.train_limit,
                           resume=last_checkpoint(out / "grpo") is not None)
        return {"steps": stats.get("steps")}
    if stage == "eval":
        from mtr.evaluate import evaluate

        result = {}
        runs = [("eval", policy)] + ([("eval-base", init)] if cfg.run.eval_base and policy != init else [])
        for name, model in runs:
            c = cfg.model_copy(deep=True)
            c.roles.policy = c.roles.policy.model_copy(update={"backend": "hf", "model": str(model)})
            console.print(f"eval: policy {model}", highlight=False)
            res = asyncio.run(evaluate(c, out / name))
            result[name] = res["rows"]
        return {"rows": result}
    raise ValueError(f"unknown stage {stage!r}")
