"""The whole method from one config (`mtr run`): tools -> synth -> filter -> SFT -> GRPO -> eval -> report.

Each stage writes into its own subdirectory of the run and, when it has finished, a `stage_done.json` there
holding what it was run on: its own part of the config and its inputs (the data's hash, the tools it read,
the finish stamp of the stage whose checkpoint it started from). On the next invocation a stage is
- skipped when it finished on the same config and inputs (a setting added to mtr since, at its default,
  is no change: mtr.rundir.same_settings);
- resumed when it did not finish and its config is unchanged (synthesis and evaluation skip finished
  questions, SFT and GRPO continue from their last checkpoint, the tools stage makes only new questions);
- run afresh otherwise, and so is every stage after it; the stages before it are never touched.
So a killed run continues where it stopped, and changing `grpo.trl.learning_rate` re-runs GRPO and
evaluation, not synthesis.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from mtr.checkpoints import policy_checkpoint
from mtr.config import STAGES, Config
from mtr.data import load_qa, resolve_benchmark
from mtr.embedded import file_sha256
from mtr.jsonl import write_text_atomic
from mtr.metrics import normalize_answer
from mtr.peak_memory import peak_rss_mb, release_memory, reset_peak
from mtr.rundir import checkpoint_stamp, mark_done, same_identity, same_settings, stage_done
from mtr.stages import evaluate as eval_stage
from mtr.stages import filter as filter_stage
from mtr.stages import grpo as grpo_stage
from mtr.stages import sft as sft_stage
from mtr.stages import synth as synth_stage
from mtr.stages import tools as tools_stage

console = Console()

# Rough costs on a 2-core CPU with the embedded 135M model (the demo's stages, benchmarks/results/demo.json,
# entry `tile`: tools 100 s for 12 questions, SFT 174 s for 12 rows, GRPO 102 s for 8 rollouts, eval 78 s for
# 12 questions tools on and off, each with a stage's start; synthesis from the entry `refactor`, with simulated
# tools: 33 s for 12), used
# only to tell the user up front how long a run should take; a server or a GPU is much faster. GRPO's
# solvable-first pass, an episode per training question by the SFT policy: 5.5 s a question with the live
# search (the learning benchmark's 48), 4 s in the demo's hybrid mode (107 questions in 7.5 min).
CPU_SECONDS = {"tools_question": 7.5, "synth_question": 2.8, "synth_question_scripted_live": 0.05,
               "sft_row_epoch": 13.5, "grpo_rollout": 11.5, "eval_on": 3.5, "eval_off": 2.0, "stage_start": 10.0,
               "solvable_question": 5.5}


class Run:
    """The paths and inputs of one run directory, as every stage of the pipeline sees them."""

    def __init__(self, cfg: Config, out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.train_path = resolve_benchmark(cfg.run.train_data)
        self.train_name = cfg.run.train_data if not cfg.run.train_data.endswith(".jsonl") else self.train_path.stem
        self.benchmarks = eval_stage.benchmark_files(cfg) if "eval" in cfg.run.stages else {}
        self.init = policy_checkpoint(cfg)

    def tools_path(self, name: str) -> Path:
        return tools_stage.tools_file(self.out / "tools", name)

    def datasets(self) -> dict[str, tuple[Path, int | None]]:
        """What the tools stage makes tools for: the training questions, and each benchmark evaluated tools-on."""
        sets = {self.train_name: (self.train_path, self.cfg.run.train_limit)}
        if any(self.cfg.eval.mode_of(m) in ("simulated", "hybrid") for m in self.cfg.eval.modes):
            sets.update({b: (p, self.cfg.eval.limit) for b, p in self.benchmarks.items()})
        return sets

    def policy(self, stage: str) -> Path:
        """The checkpoint a stage starts from: the last training stage's before it, else the initial policy
        (GRPO from the initial policy with `run.grpo_init: base`: the cold-start ablation)."""
        if stage == "grpo" and self.cfg.run.grpo_init == "base":
            return self.init
        before = STAGES[:STAGES.index(stage)]
        for s in ("grpo", "sft"):
            if s in before and s in self.cfg.run.stages:
                return self.out / s
        return self.init

    def eval_config(self, model: Path) -> Config:
        return self.cfg.with_policy(model)

    def identity(self, stage: str) -> dict[str, Any]:
        """What a finished stage was run on; the stage is skipped only while this stays the same."""
        cfg = self.cfg

        def sha(path: Path) -> str | None:
            return file_sha256(path) if path.is_file() else None

        def upstream(path: Path) -> str:
            return (checkpoint_stamp(path) if path != self.init else None) or str(path)

        if stage == "tools":
            return {"config": tools_stage.stage_config(cfg),
                    "datasets": {n: [sha(p), lim] for n, (p, lim) in self.datasets().items()}}
        if stage == "synth":
            return {"config": synth_stage.stage_config(cfg), "data": sha(self.train_path),
                    "limit": cfg.run.train_limit, "tools": sha(self.tools_path(self.train_name))}
        if stage == "filter":
            return {"config": filter_stage.stage_config(cfg), "traces": sha(self.out / "synth" / "traces.jsonl")}
        if stage == "sft":
            return {"config": sft_stage.stage_config(cfg), "data": sha(self.out / "filter" / "sft.jsonl")}
        if stage == "grpo":
            return {"config": grpo_stage.stage_config(cfg), "data": sha(self.train_path), "limit": cfg.run.train_limit,
                    "tools": sha(self.tools_path(self.train_name)), "init": upstream(self.policy("grpo"))}
        return {"config": eval_stage.stage_config(self.eval_config(self.policy("eval"))),
                "benchmarks": {b: sha(p) for b, p in self.benchmarks.items()},
                "tools": {b: sha(self.tools_path(b)) for b in self.benchmarks},
                "policy": upstream(self.policy("eval")), "base": cfg.run.eval_base}


def check_overlap(cfg: Config, run: Run) -> None:
    """Training and evaluation questions must not overlap (by id or by question text): a score on a question
    trained on says nothing. `run.allow_overlap: true` lets it pass, loudly."""
    if not run.benchmarks:
        return
    train = load_qa(run.train_path, cfg.run.train_limit)
    ids, texts = {ex.id for ex in train}, {normalize_answer(ex.question) for ex in train}
    for b, path in run.benchmarks.items():
        shared = [ex for ex in load_qa(path, cfg.eval.limit) if ex.id in ids or normalize_answer(ex.question) in texts]
        if not shared:
            continue
        what = (f"run.train_data ({run.train_path.name}) and eval benchmark {b!r} share {len(shared)} question(s), "
                f"e.g. {shared[0].id!r}")
        if not cfg.run.allow_overlap:
            raise ValueError(f"{what}: scores on trained-on questions say nothing; train on a training split "
                             f"(e.g. hotpotqa-train), or set run.allow_overlap: true")
        console.print(f"[yellow]warning:[/yellow] {what} (run.allow_overlap)", highlight=False)


def plan(cfg: Config, n_train: int) -> tuple[list[str], float]:
    """What each stage will do, in words, and the expected seconds on a 2-core CPU with the embedded model."""
    r, lines, total = cfg.run, [], 0.0
    for stage in r.stages:
        total += CPU_SECONDS["stage_start"]
        if stage == "tools":
            lines.append(f"tools: the ToolMaker writes up to {cfg.tools.max_tools} tool(s) per question, once")
            total += CPU_SECONDS["tools_question"] * n_train
        elif stage == "synth":
            lines.append(f"synth: {n_train} questions x {cfg.synth.episodes_per_question} episode(s), "
                         f"teacher {cfg.synth.teacher}")
            fast = cfg.synth.teacher == "scripted" and cfg.synth.tool_mode in ("live", "hybrid")
            total += (CPU_SECONDS["synth_question_scripted_live" if fast else "synth_question"] * n_train
                      * cfg.synth.episodes_per_question)
        elif stage == "filter":
            lines.append("filter: correct, valid, short enough -> sft.jsonl")
        elif stage == "sft":
            s, t = cfg.sft, cfg.sft.trl
            rows = n_train * cfg.synth.episodes_per_question
            batch = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
            steps = t["max_steps"] if t["max_steps"] > 0 else int(rows * t["num_train_epochs"] / batch)
            lines.append(f"sft: {'LoRA' if s.lora_on else 'full'} fine-tuning, {steps} steps of {batch} traces")
            total += CPU_SECONDS["sft_row_epoch"] * steps * batch
        elif stage == "grpo":
            g, t = cfg.grpo, cfg.grpo.trl
            rollouts = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
            line = (f"grpo: {t['max_steps']} steps, {rollouts} rollouts a step in groups "
                    f"of {t['num_generations']}, up to {g.max_tool_calls} tool calls each")
            total += CPU_SECONDS["grpo_rollout"] * t["max_steps"] * rollouts
            if g.question_order == "solvable-first":  # one greedy episode a training question
                line += f"; solvable-first: the initial policy answers the {n_train} questions first"
                total += CPU_SECONDS["solvable_question"] * n_train
            lines.append(line)
        elif stage == "eval":
            sizes = {b: len(load_qa(p, cfg.eval.limit)) for b, p in eval_stage.benchmark_files(cfg).items()}
            policies = 2 if r.eval_base else 1
            lines.append("eval: " + ", ".join(f"{b} ({n})" for b, n in sizes.items()) + f", {' and '.join(cfg.eval.modes)}"
                         + (", trained and initial policy" if r.eval_base else ""))
            for mode in cfg.eval.modes:
                total += policies * sum(sizes.values()) * CPU_SECONDS["eval_on" if mode == "tools-on" else "eval_off"]
    return lines, total


def run_pipeline(cfg: Config, out: Path, overwrite: bool = False, report: bool = True) -> dict[str, Any]:
    """Run the configured stages into `out`; returns {stage: stage_done record}."""
    run = Run(cfg, out)
    out = run.out
    n_train = len(load_qa(run.train_path, cfg.run.train_limit))
    if overwrite and out.exists():
        for stage in (*STAGES, "eval-base"):
            shutil.rmtree(out / stage, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    # the run's top manifest: the latest invocation's whole config (each stage keeps its own part)
    write_text_atomic(out / "manifest.json", json.dumps({"stage": "pipeline", "config": cfg.model_dump(mode="json"),
                                                         "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ")}, indent=2))
    check_overlap(cfg, run)
    lines, seconds = plan(cfg, n_train)
    console.rule(f"mtr run -> {out}")
    for i, line in enumerate(lines, 1):
        console.print(f"  {i}. {line}", highlight=False)
    console.print(f"  expected: about {seconds / 60:.0f} min on a 2-core CPU with the embedded model "
                  "(much less with a GPU or a server); finished stages are skipped", highlight=False)

    records: dict[str, Any] = {}
    n = len(cfg.run.stages)
    upstream_ran = False
    try:
        for i, stage in enumerate(cfg.run.stages, 1):
            d = out / stage
            identity = run.identity(stage)
            done = stage_done(d)
            if done is not None and same_identity(done.get("identity"), identity) and not upstream_ran:
                console.rule(f"stage {i}/{n}: {stage} (done in an earlier invocation, skipped)")
                records[stage] = done
                continue
            if done is not None:
                # finished on other inputs or settings: run again (the tools stage only adds the questions it
                # has not made, unless its own settings changed)
                fresh = stage != "tools" or not same_settings(done.get("identity", {}).get("config"), identity["config"])
            else:
                # unfinished: resumed, unless what came before it ran again or its settings changed
                recorded = recorded_config(d)
                fresh = upstream_ran or (recorded is not None and not same_settings(recorded, identity["config"]))
            console.rule(f"stage {i}/{n}: {stage}" + (" (afresh: its inputs or settings changed)" if fresh else ""))
            t0 = time.perf_counter()
            reset_peak()
            extra = _run_stage(stage, run, fresh)
            done = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": round(peak_rss_mb()), **extra,
                    "identity": identity}
            mark_done(d, **done)
            release_memory()  # the next stage loads its own model
            records[stage] = done
            upstream_ran = upstream_ran or stage != "tools" or extra.get("made_now", 0) > 0
    finally:
        # A failed or interrupted run still gets its report: it shows what finished and says what did not.
        if report:
            from mtr.report import write_report

            try:
                console.print(f"report: {escape(str(write_report(out)))}", highlight=False)
            except Exception as e:  # noqa: BLE001 - the stage's own error matters more than the report's
                console.print(f"[yellow]report not written:[/yellow] {escape(str(e))}", highlight=False)
    return records


def recorded_config(stage_dir: Path) -> dict[str, Any] | None:
    """The config an unfinished stage was started with (its manifest; filter.json for the filter)."""
    for name in ("manifest.json", "filter.json"):
        try:
            return json.loads((stage_dir / name).read_text())["config"]
        except (OSError, json.JSONDecodeError, KeyError):
            continue
    return None


def _run_stage(stage: str, run: Run, fresh: bool) -> dict[str, Any]:
    cfg, out = run.cfg, run.out
    if stage == "tools":
        stats = asyncio.run(tools_stage.make_tools(cfg, run.datasets(), out / "tools", overwrite=fresh))
        return {"made_now": sum(s["made_now"] for s in stats.values())}
    if stage == "synth":
        stats = asyncio.run(synth_stage.synthesize(cfg, run.train_path, out / "synth", limit=cfg.run.train_limit,
                                                   overwrite=fresh, tools_path=_existing(run.tools_path(run.train_name))))
        return {"episodes": stats["episodes"]}
    if stage == "filter":
        if fresh:
            shutil.rmtree(out / "filter", ignore_errors=True)
        res = filter_stage.run_filter(cfg, out / "synth" / "traces.jsonl", out / "filter")
        if res["kept"] == 0:
            raise ValueError(f"{out / 'filter'}: filtering kept no trace of {res['episodes']} "
                             f"(rejected: {res['rejected']}); SFT has nothing to learn from. A small model as "
                             "teacher rarely answers right: try synth.teacher: scripted, or a larger teacher")
        return {"kept": res["kept"], "episodes": res["episodes"]}
    if stage == "sft":
        data = out / "filter" / "sft.jsonl"
        if not data.is_file():
            raise FileNotFoundError(f"{data}: no SFT data; the synth and filter stages run first (run.stages)")
        stats = sft_stage.train_sft(cfg, data, out / "sft", resume=not fresh, overwrite=fresh)
        return {"steps": stats.get("steps"), "loss_first": stats.get("loss_first"), "loss_last": stats.get("loss_last")}
    if stage == "grpo":
        # solvable-first chooses among the run's own training questions (their tools made, their overlap with
        # the evaluation checked), not the whole file
        stats = grpo_stage.train_grpo(cfg, run.train_path, run.policy("grpo"), out / "grpo", limit=cfg.run.train_limit,
                                      resume=not fresh, overwrite=fresh, candidates=cfg.run.train_limit,
                                      tools_path=_existing(run.tools_path(run.train_name)))
        return {"steps": stats.get("steps")}
    if stage == "eval":
        result = {}
        policy = run.policy("eval")
        evals = [("eval", policy)] + ([("eval-base", run.init)] if cfg.run.eval_base and policy != run.init else [])
        tools_dir = out / "tools" if (out / "tools").is_dir() else None
        for name, model in evals:
            console.print(f"eval: policy {model}", highlight=False)
            res = asyncio.run(eval_stage.evaluate(run.eval_config(model), out / name, overwrite=fresh,
                                                  tools_dir=tools_dir))
            result[name] = res["rows"]
        return {"rows": result}
    raise ValueError(f"unknown stage {stage!r}")


def _existing(path: Path) -> Path | None:
    """The tools stage's file when it ran, else None (the stage then makes its tools itself)."""
    return path if path.is_file() else None
