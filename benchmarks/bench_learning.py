"""Does the method make the embedded 135M policy better at using tools? (`make bench-learning`)

    .venv/bin/python benchmarks/bench_learning.py --quick      # every step once, small: under 20 minutes
    .venv/bin/python benchmarks/bench_learning.py --preset main  # base, SFT, SFT + GRPO; 30 questions a benchmark
    .venv/bin/python benchmarks/bench_learning.py              # every arm, two seeds, 100 questions a benchmark
    .venv/bin/python benchmarks/bench_learning.py --docs       # rewrite docs/learning.md from the results file

From the training splits of HotpotQA and 2WikiMultihopQA (never the evaluation questions: mtr.data splits the
shipped data by id), the evidence-reading scripted teacher synthesises traces with the live `search` (the
local BM25 retriever); SFT trains on the kept ones; GRPO trains from there; every arm is evaluated on the
held-out questions of both benchmarks with live tools (and, in the full run, simulated ones too). Arms:

    base          the embedded model as shipped
    sft           SFT only
    sft+grpo      the method: SFT, then GRPO with live tools
    grpo-no-sft   GRPO from the base model (the paper's cold-start ablation)
    no-precheck   SFT + GRPO with the validation pre-check off (the paper's pre-check ablation)
    sim-trained   SFT + GRPO with simulated tools (the ToolActor, grounded in retrieval)
    mixed-trained SFT + GRPO with half the groups simulated, half live
    trl-peer      SFT + GRPO by TRL's own tool loop (GRPOTrainer(tools=...)), same tools and reward
    (sft+grpo is the live-trained arm of the transfer question: all three are evaluated with live tools)
    sft+grpo-d2   the method again from the same SFT policy, its GRPO seeded anew (and -d3): not in the full
                  preset; with them each seed reports its draws' spread of held-out gain over SFT

For each arm and mode: EM, F1, cover EM, answered %, well-formed %, calls per episode with 95 % bootstrap
intervals over questions; the paired difference SFT+GRPO minus SFT and SFT minus base; each GRPO run's reward
curve (total and components) with the first and last quarters' means and standard errors. Every step is a
directory of its own under --work with a stage_done.json: a finished step is skipped, an unfinished one
resumes (synthesis and evaluation skip finished questions, SFT and GRPO continue from their checkpoint), so a
crash costs only the step it hit. Results go to benchmarks/results/learning.json under the preset's name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import re
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from itertools import zip_longest
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
# This checkout's mtr before the one a virtual environment installed: run from a git worktree (a long run
# beside work on main), the benchmark trains with the worktree's code and records its commit, not main's
sys.path.insert(0, str(ROOT / "src"))
DEMO = ROOT / "src" / "mtr" / "configs" / "demo.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "learning.json"
DOC = ROOT / "docs" / "learning.md"
JOBS_RESULTS = ROOT / "benchmarks" / "results" / "jobs.json"  # bench_jobs.py: what --jobs gains here
# each run's score on each question (`stored_scores`): its paired intervals can be checked, and later runs set
# against it, once its work directory is gone (a new machine starts without runs/)
SCORES = ROOT / "benchmarks" / "results" / "learning_scores"
console = Console()

ARMS: dict[str, dict[str, Any]] = {
    "base": {"init": None},
    "sft": {"init": "sft"},
    "sft+grpo": {"init": "sft", "grpo": {"tool_mode": "live"}},
    # TRL's own multi-turn tool loop, same init, questions, tools and Rubric (benchmarks/trl_peer.py)
    "trl-peer": {"init": "sft", "grpo": {"tool_mode": "live"}, "peer": True},
    "grpo-no-sft": {"init": "base", "grpo": {"tool_mode": "live"}},
    "no-precheck": {"init": "sft", "grpo": {"tool_mode": "live", "precheck": False}},
    # the transfer arms train on the method's questions: solvable-first judges them with the live tools
    # (`solvable_mode`), so that an arm differs from the method by the tools it trains against alone. Judged
    # with the ToolActor, which rarely shows the answer, the questions "solved" were those the policy guesses
    # from the question (main-dapo-transfer: none of sim-trained's six was the method's; docs/learning.md)
    "sim-trained": {"init": "sft", "grpo": {"tool_mode": "simulated", "grounding": "retrieval"},
                    "solvable_mode": "live"},
    "mixed-trained": {"init": "sft", "grpo": {"tool_mode": "simulated", "grounding": "retrieval", "live_share": 0.5},
                      "solvable_mode": "live"},
    # the method again from the same SFT policy on the same questions, its GRPO seeded anew (`draw_seed`): how
    # much of one run's held-out gain is the draw (two runs of a seed part after a step or two even at one
    # seed, CPU arithmetic not being bit-for-bit repeatable: docs/learning.md, main-dapo-ablations-2seeds)
    "sft+grpo-d2": {"init": "sft", "grpo": {"tool_mode": "live"}, "draw": 2},
    "sft+grpo-d3": {"init": "sft", "grpo": {"tool_mode": "live"}, "draw": 3},
}
DRAWS = [a for a in ARMS if ARMS[a].get("draw")]
# GRPO (main, full) trains on `grpo_questions` questions, each once, chosen among a pool of the first `grpo_pool`
# training questions of each benchmark (SFT's own first). Until 2026-12-05 it trained on 6 of SFT's questions
# four times over, a quarter of its steps an epoch, so that the reward curve's first and last quarters held the
# same questions (with a new question every step, one hard question moved a quarter's mean more than 8 steps
# of learning did). Of 8 such runs from three SFT policies, 4 fell below SFT's held-out F1; of 9 on 24
# questions of a pool of 100 a benchmark, 2 did (both in seed 2), and the method's gain over SFT on three
# seeds' mean rose from +2.9 to +3.8 F1, its interval above zero (docs/learning.md, *Settings tried* 22). The price:
# the quarters now hold different questions, and their difference no longer shows learning. `quick` keeps
# its 4 steps on one question, where it does.
# GRPO draws the questions the SFT policy answers at least partly right first (with demo.yaml's F1 answer
# reward: three seeds of held-out F1 above SFT's, where the file's order and EM fell below it: docs/learning.md),
# and samples its episodes at temperature 0.7 (now demo.yaml's too; named here so that the benchmark's settings
# stay its own): at 1.0 a third of the 135M policy's training episodes went unanswered (misspelt tags, passages
# copied past the turn budget) where its greedy ones nearly never did, and the reward rose by two standard errors
# in 1 run of 5; at 0.7 in 2 seeds of 3, held-out F1 over SFT alike (docs/learning.md, *Settings tried* 17)
ADOPTED_GRPO = {"question_order": "solvable-first", "trl.temperature": 0.7}
PRESETS: dict[str, dict[str, Any]] = {
    # every step once, small (under 20 minutes here): that the benchmark runs, and what SFT does to the answered
    # share; GRPO's 4 steps on one question (the first the SFT policy answers among 4: `grpo_candidates`, not
    # every training question) show whether its reward moves there, not what it does held out. Sized by three
    # runs (docs/learning.md, *Settings tried* 16): SFT on the traces of 8 or 12 training questions a benchmark
    # left a policy that did not search, or did not answer; 16 with 8 held-out questions a benchmark took 19.8
    # minutes
    "quick": {"train_per_source": 16, "sft_epochs": 1.0, "grpo_steps": 4, "grpo_questions": 1, "grpo_candidates": 4,
              "eval_limit": 6, "arms": ["base", "sft", "sft+grpo"], "seeds": [0], "simulated_eval": [],
              "grpo": ADOPTED_GRPO},
    # the main comparison only, one seed (the runs labelled quick-* in docs/learning.md: the preset was called
    # quick until the small one above took the name)
    "main": {"train_per_source": 24, "sft_epochs": 1.0, "grpo_steps": 24, "grpo_questions": 24, "grpo_pool": 100,
             "eval_limit": 30, "arms": ["base", "sft", "sft+grpo"], "seeds": [0], "simulated_eval": [],
             "grpo": ADOPTED_GRPO},
    # every arm; the main comparison in two seeds; SFT and the method also with simulated tools in the first seed
    # (`simulated_in_seed`; not the base model, which calls no tool: its two evaluations were the same episodes,
    # `full-pool`). Trained as `main` is,
    # evaluated on 100 held-out questions a benchmark (the runs of docs/learning.md at `--eval-limit 100`): until
    # 2026-12-04 it trained on 100 questions a benchmark and for 48 GRPO steps on 12, sizes no run ever measured
    # (48 steps on 6 questions did not add to the held-out gain of 24: docs/learning.md, *Settings tried* 13),
    # estimated at 10 to 13 hours here; these sizes share every step with the main preset's runs
    "full": {"train_per_source": 24, "sft_epochs": 1.0, "grpo_steps": 24, "grpo_questions": 24, "grpo_pool": 100,
             "eval_limit": 100,
             "arms": [a for a in ARMS if a not in DRAWS], "seeds": [0, 1], "simulated_eval": ["sft", "sft+grpo"],
             "grpo": ADOPTED_GRPO},
}
SEEDED = ("sft", "sft+grpo")  # the arms run in every seed; the ablations in the first (with --every-seed, in all)
BENCHMARKS = ["hotpotqa", "2wiki"]
METRICS = ("em", "f1", "cover_em", "answered", "well_formed", "calls")
COMPONENTS = ("answer", "format", "consistency", "efficiency")


# --- the steps -------------------------------------------------------------------------------------------

def run_step(d: Path, identity: dict[str, Any], fn: Callable[[bool], dict[str, Any]],
             on_resume: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run `fn(fresh)` in `d` once: skipped when it finished on this identity, resumed (fresh=False) when it
    stopped on it or goes on from it (an evaluation on more questions), run afresh when its identity changed;
    refused (`WouldDelete`) where that would delete an evaluation of more questions than asked.
    `on_resume` runs first when it goes on from an earlier attempt (`follow_move`)."""
    from mtr.jsonl import write_text_atomic
    from mtr.peak_memory import peak_rss_mb, release_memory, reset_peak
    from mtr.rundir import inputs_shrank, mark_done, same_settings, stage_done

    done = stage_done(d)
    # same_settings: an identity written before an option was added to mtr, which now holds its default, is
    # the same step (the identities' `grpo`, `eval`... are Config sections)
    if done is not None and same_settings(portable(done.get("identity")), portable(identity)):
        console.print(f"[dim]{d.name}: done earlier ({done['wall_s']:.0f} s), skipped[/dim]")
        return done
    # an evaluation finished in more modes than asked (a larger preset's, over the same work directory: the
    # full preset adds simulated tools to the main arms' evaluations) holds this one whole: run afresh, it lost
    # the other modes' episodes (half an hour of a trained policy's simulated ones here), and its results
    # gain those modes' rows, which no comparison reads in place of the live ones. Asked on more questions as
    # well, it still starts afresh (neither held nor continued)
    if done is not None and inputs_shrank(portable(done.get("identity")), portable(identity), "eval.modes"):
        console.print(f"[dim]{d.name}: done earlier in more modes ({done['wall_s']:.0f} s), skipped[/dim]")
        return done
    started = d / "bench_identity.json"
    old = json.loads(started.read_text()) if started.is_file() else done.get("identity") if done else None
    if old is not None and on_more_questions(old, identity):
        held = old["eval"]["limit"]
        # --eval-limit asks for a number: an evaluation of every question (a preset without a limit) has none
        ask = f"ask --eval-limit {held}, or give another --work" if held else "give another --work"
        raise WouldDelete(f"{d}: evaluated on {held or 'all'} questions a benchmark, where this run asks "
                          f"{identity['eval']['limit']}; afresh it would delete those episodes: {ask}")
    fresh = old is not None and not continues(old, identity)
    console.rule(f"{d.name}" + (" (afresh)" if fresh else ""))
    if fresh:
        # the old identity's output goes before the new identity is written: a crash between the two (before
        # the stage itself cleared its directory) left the old output under the new identity, and the next
        # attempt resumed from it (another policy's answers, another run's checkpoints)
        import shutil

        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    write_text_atomic(started, json.dumps(identity, indent=2))
    reset_peak()
    clock = d / "bench_elapsed.json"  # the time of the attempts that stopped before the step finished
    if fresh or (done is not None and clock.is_file()
                 and clock.stat().st_mtime <= (d / "stage_done.json").stat().st_mtime):
        clock.unlink(missing_ok=True)  # another step's time, or (stopped before its removal) counted in `done`
    carried = json.loads(clock.read_text()).get("wall_s", 0.0) if clock.is_file() else 0.0
    if old is not None and not fresh and on_resume is not None:
        on_resume()
    with step_clock(clock, carried) as elapsed:
        extra = fn(fresh)
        spent = elapsed()
    # a step done before and now extended (more questions) took both runs' time
    extended = done is not None and not fresh and continues(done.get("identity") or {}, identity)
    before = done["wall_s"] if extended else 0.0
    mark_done(d, before + spent, peak_rss_mb=round(peak_rss_mb()), identity=identity, **extra)
    clock.unlink(missing_ok=True)
    release_memory()
    return stage_done(d)


@contextmanager
def step_clock(path: Path, carried: float, every_s: float = 30.0) -> Iterator[Callable[[], float]]:
    """The time a step has taken over all its attempts: `carried` (the earlier ones') and this one's, written
    to `path` every `every_s` seconds and on the way out, so that an attempt killed loses at most `every_s`
    of it. Timed from its last attempt alone, a step resumed over three sittings said it took a third of its
    time, and the full preset runs over several."""
    from mtr.jsonl import write_text_atomic

    t0 = time.perf_counter()
    stop = threading.Event()

    def total() -> float:
        return carried + time.perf_counter() - t0

    def write() -> None:
        write_text_atomic(path, json.dumps({"wall_s": round(total(), 1)}))

    def beat() -> None:
        while not stop.wait(every_s):
            write()

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        yield total
    finally:
        stop.set()
        beating.join()
        write()


class WouldDelete(ValueError):
    """A step begun or finished on more than a run asks, which running it afresh would delete."""


def on_more_questions(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an evaluation begun on `old` holds more questions than `new` asks, the same evaluation otherwise
    (its modes aside): mtr.stages.evaluate cannot cut an evaluation to its first questions, and the results read
    every question an evaluation holds, so such a step is neither kept nor run afresh (which would delete the
    episodes: the full preset's 100 questions a benchmark, under a main-preset run of 30 over its work)."""
    from mtr.rundir import limit_grew

    old, new = portable(old), portable(new)
    if not (isinstance(old.get("eval"), dict) and isinstance(new.get("eval"), dict)):
        return False
    modes = old["eval"].get("modes")
    return limit_grew({**new, "eval": {**new["eval"], "modes": modes}}, old, "eval.limit")


def continues(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a step begun on identity `old` goes on as `new`: the same step, or the same evaluation on more
    questions or in more modes (its `eval.limit` or `eval.modes` grown: the episodes done stay,
    mtr.stages.evaluate adds the others)."""
    from mtr.rundir import limit_grew, same_settings

    old, new = portable(old), portable(new)
    return same_settings(old, new) or limit_grew(old, new, "eval.limit", "eval.modes")


def portable(identity: Any) -> Any:
    """A step's identity as it is compared: a checkpoint a step wrote (one with a stamp, `init_done`,
    `policy_done` or `trained_done`: when that step finished) is named by its directory's name and the stamp,
    not its path, so a work directory moved or copied elsewhere keeps its finished steps (by their paths, every
    step ran again, and an evaluation run afresh starts without its answers). The embedded model, which no step
    wrote, stays named by its path."""
    if not isinstance(identity, dict):
        return identity
    out = dict(identity)
    for key in ("init", "policy", "trained"):
        if out.get(f"{key}_done") and isinstance(out.get(key), str):
            out[key] = Path(out[key]).name
    return out


def follow_move(d: Path, checkpoint: Path, inputs: dict[str, Path] | None = None) -> None:
    """Point the stage manifest in `d` at `checkpoint` (its policy and, for training, its `init`) and at
    `inputs`, where it names a checkpoint of the same name elsewhere, or a file of the same content elsewhere:
    the work directory was moved or copied, and `run_step` found the step's identity unchanged (`portable`:
    the same checkpoint by its name and stamp). Without it a step that goes on after the move (an evaluation
    extended to more questions, a training step resumed) is refused by the manifest's check of the old paths."""
    from mtr.embedded import file_sha256
    from mtr.jsonl import write_text_atomic

    path = d / "manifest.json"
    if not path.is_file():
        return
    manifest = json.loads(path.read_text())
    policy = manifest.get("config", {}).get("roles", {}).get("policy", {})
    now = str(checkpoint)

    def same_checkpoint(old: Any) -> bool:
        return isinstance(old, str) and old != now and Path(old).name == checkpoint.name

    changed = False
    if same_checkpoint(policy.get("model")):
        policy["model"], changed = now, True
    if same_checkpoint(manifest.get("init")):
        manifest["init"], changed = now, True
    for key, file in (inputs or {}).items():
        old = manifest.get("inputs", {}).get(key)
        if old and old.get("path") != str(file) and file.is_file() and old.get("sha256") == file_sha256(file):
            old["path"], changed = str(file), True
    if changed:
        write_text_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False))


def drop_checkpoints(d: Path) -> None:
    """Remove a finished training step's `checkpoint-*` directories: they only serve to resume it, and each
    holds the optimizer's state (a GRPO arm's two came to 3 GB), which a benchmark of many arms piles up
    on a disk that CI and the tests share. The final model at `d` stays."""
    import shutil

    if (d / "stage_done.json").is_file():
        for c in d.glob("checkpoint-*"):
            shutil.rmtree(c, ignore_errors=True)


def base_config(preset: dict[str, Any], seed: int) -> Any:
    """The demo's settings (model, retriever, SFT and GRPO batch shapes), with the utility tools alone and
    the tools live: this benchmark is about the policy, and the ToolMaker's tools would cost a model call each."""
    import yaml

    from mtr.config import parse_config

    data = yaml.safe_load(DEMO.read_text())
    data["seed"] = seed
    data["tools"] = {**data.get("tools", {}), "toolmaker": False, "on_failure": "utilities"}
    data["synth"].update(tool_mode="live", teacher="scripted")
    # SFT's 4 traces as one packed row (sft.share_prompt): about a third less SFT time for ~0.3 GB more on
    # these traces (~1 GB more at the demo's peak), which this benchmark's machine has and a laptop running
    # the demo may not (docs/performance.md)
    # Activations kept, not recomputed in the backward pass: the quick preset's SFT 14 % faster (the same
    # weights) and its GRPO update 8 % cheaper a token, for about 3 GB more at SFT's peak (7.8 GB; runs
    # quick-zen1-keep and quick-zen1-recompute, docs/learning.md; bench_sft_checkpointing.py and
    # bench_grpo_checkpointing.py alone); two such processes side by side (--jobs 2) still fit this machine's 24 GB
    data["sft"]["trl"].update(per_device_train_batch_size=4, gradient_accumulation_steps=1, gradient_checkpointing=False)
    data["grpo"].update(tool_mode="live")
    data["grpo"]["trl"].update(max_steps=preset["grpo_steps"], save_steps=4, gradient_checkpointing=False)
    for key, value in preset.get("grpo", {}).items():  # --grpo KEY=VALUE (trl.KEY for TRL's arguments)
        section, _, name = key.rpartition(".")
        (data["grpo"]["trl"] if section == "trl" else data["grpo"])[name] = value
    data["eval"] = {"benchmarks": BENCHMARKS, "limit": preset["eval_limit"], "modes": ["live"], "max_tool_calls": 2}
    return parse_config(data, str(DEMO) + " (bench_learning)")


def training_file(work: Path, per_source: int, name: str = "train.jsonl") -> Path:
    """The first `per_source` training-split questions of each benchmark, interleaved, in one file."""
    from mtr.data import resolve_benchmark
    from mtr.jsonl import write_text_atomic

    sources = {b: [line for line in resolve_benchmark(f"{b}-train").read_text(encoding="utf-8").splitlines()
                   if line.strip()][:per_source] for b in BENCHMARKS}
    for b, s in sources.items():
        if len(s) < per_source:  # a split that holds fewer gives what it has; the others are not cut to it
            console.print(f"[yellow]{name}: {b}-train holds {len(s)} of the {per_source} training questions "
                          f"asked; all of them are taken[/yellow]")
    lines = [line for group in zip_longest(*sources.values()) for line in group if line is not None]
    out = work / "data" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" for line in lines)
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        write_text_atomic(out, text)
    return out


def check_disjoint(train: Path, cfg: Any) -> None:
    from mtr.data import load_qa, resolve_benchmark

    ids = {ex.id for ex in load_qa(train)}
    for b in BENCHMARKS:
        shared = ids & {ex.id for ex in load_qa(resolve_benchmark(b), cfg.eval.limit)}
        if shared:
            raise SystemExit(f"training and evaluation share {len(shared)} {b} question(s): the split is broken")


def draw_seed(seed: int, arm: str) -> int:
    """The seed of an arm's GRPO: the run's, or for another draw of the method one that no other seed's run
    uses (seeds below 100)."""
    return seed + 100 * (ARMS[arm].get("draw", 1) - 1)


def trl_groups(trl: dict[str, Any]) -> int:
    """How many questions (groups of episodes) one GRPO step of these TRL settings trains on."""
    return trl["per_device_train_batch_size"] * trl["gradient_accumulation_steps"] // trl["num_generations"]


def groups_per_step(preset: dict[str, Any]) -> int:
    """`trl_groups` of the preset's GRPO settings."""
    return trl_groups(base_config(preset, preset["seeds"][0]).grpo.trl)


def preset_settings(preset_name: str, arms: list[str] | None = None, seeds: list[int] | None = None,
                    grpo: dict[str, Any] | None = None, eval_limit: int | None = None, every_seed: bool = False,
                    simulated_eval: list[str] | None = None, grpo_questions: int | None = None,
                    grpo_pool: int | None = None) -> dict[str, Any]:
    """The preset's settings with the command line's over them (what a run's results record as `preset`)."""
    preset = dict(PRESETS[preset_name])
    if arms:  # the preset's settings with other arms (finished steps are shared: a directory per step)
        preset["arms"] = [a for a in ARMS if a in arms or a == "base" or a == "sft"]
    if seeds:  # the main comparison (SFT only, SFT + GRPO) in these seeds; the ablations in the first
        preset["seeds"] = seeds
    if every_seed:  # the ablations too, in every seed
        preset["every_seed"] = True
    if grpo:  # GRPO settings of every GRPO arm, over the preset's and the configuration's
        groups = groups_per_step(preset)
        preset["grpo"] = {**preset.get("grpo", {}), **grpo}
        preset["grpo_steps"] = grpo.get("trl.max_steps", preset["grpo_steps"])  # what the results then say
        # more groups a step draw as many times more questions: each is seen as often as with one
        preset["grpo_questions"] = preset["grpo_questions"] * groups_per_step(preset) // groups
    if eval_limit:  # more held-out questions (a finished evaluation of fewer is extended, not redone)
        preset["eval_limit"] = eval_limit
    if simulated_eval is not None:  # these arms with simulated tools too (a live evaluation is extended, not redone)
        preset["simulated_eval"] = simulated_eval
    if grpo_questions:  # the questions GRPO trains on (e.g. 6 with --grpo-pool 24: the runs before the pool)
        preset["grpo_questions"] = grpo_questions
    if grpo_pool:  # GRPO chooses its questions among the first N training questions of each benchmark
        preset["grpo_pool"] = grpo_pool
        preset.pop("grpo_candidates", None)  # the pool's questions, not the file's first few (quick's)
    return preset


def run_arms(preset_name: str, work: Path, arms: list[str] | None = None, seeds: list[int] | None = None,
             grpo: dict[str, Any] | None = None, eval_limit: int | None = None,
             every_seed: bool = False, seed_work: dict[int, Path] | None = None,
             simulated_eval: list[str] | None = None, grpo_questions: int | None = None,
             grpo_pool: int | None = None, against: Path | str | None = None,
             only: set[tuple[str, int]] | None = None, seed_scores: dict[int, str] | None = None) -> dict[str, Any]:
    """Every step of the preset's arms in `work` (a directory per step; a finished one is skipped), and the
    results. `seed_work` names another directory for a seed's own steps (SFT, GRPO, evaluation; not the base
    model's): seeds run one at a time in their own work directories then come together in one run, their
    steps skipped, for the comparisons over seeds (without copying their checkpoints into one directory).
    `only`: run the shared steps (synthesis, filter, each seed's SFT) and then only these (arm, seed) units'
    steps, and return no results (`--jobs`: the units run in processes of their own, then a last pass finds
    every step done and gathers the results). `seed_scores` ({seed: run}): a seed run and recorded before,
    whose steps are gone (another machine), taken from that run's stored results and scores (`stored_seed`)
    into this run's comparisons over seeds rather than run here."""
    from mtr.checkpoints import policy_checkpoint
    from mtr.embedded import file_sha256
    from mtr.rubric import Rubric
    from mtr.rundir import checkpoint_stamp
    from mtr.stages.evaluate import benchmark_files, evaluate
    from mtr.stages.filter import run_filter
    from mtr.stages.grpo import train_grpo
    from mtr.stages.sft import train_sft
    from mtr.stages.synth import synthesize
    from trl_peer import train_trl_peer

    preset = preset_settings(preset_name, arms, seeds, grpo, eval_limit, every_seed, simulated_eval,
                             grpo_questions, grpo_pool)
    cfg0 = base_config(preset, preset["seeds"][0])
    train = training_file(work, preset["train_per_source"])
    check_disjoint(train, cfg0)
    data_id = file_sha256(train)
    # GRPO's questions: chosen among SFT's, or among a larger pool whose first questions are SFT's (the solvable
    # ones among SFT's 48 were 7 in seed 0: more questions need more candidates)
    grpo_train = train
    if preset.get("grpo_pool"):
        grpo_train = training_file(work, preset["grpo_pool"], "grpo-train.jsonl")
        check_disjoint(grpo_train, cfg0)
    grpo_data_id = file_sha256(grpo_train)
    stages: dict[str, dict[str, Any]] = {}

    def synth(fresh: bool) -> dict[str, Any]:
        stats = asyncio.run(synthesize(cfg0, train, work / "synth", overwrite=fresh))
        return {"episodes": stats["episodes"]}

    stages["synth"] = run_step(work / "synth", {"data": data_id, "synth": cfg0.synth.model_dump(mode="json"),
                                                "retriever": cfg0.retriever.model_dump(mode="json")}, synth)
    traces = work / "synth" / "traces.jsonl"
    stages["filter"] = run_step(work / "filter", {"traces": file_sha256(traces),
                                                  "filter": cfg0.filter.model_dump(mode="json")},
                                lambda fresh: {k: v for k, v in run_filter(cfg0, traces, work / "filter").items()
                                               if k in ("kept", "episodes", "rejected")})
    sft_rows = work / "filter" / "sft.jsonl"
    candidates = preset.get("grpo_candidates")  # the questions solvable-first chooses among (None: all)
    kept = stages["filter"]["kept"]
    batch = cfg0.sft.trl["per_device_train_batch_size"] * cfg0.sft.trl["gradient_accumulation_steps"]
    sft_steps = max(1, math.ceil(kept * preset["sft_epochs"] / batch))
    base = policy_checkpoint(cfg0)
    checkpoints: dict[str, Path] = {"base": base}
    results: dict[str, Any] = {"arms": {}, "curves": {}}
    eval_dirs: dict[str, Path] = {}

    for seed in preset["seeds"]:
        if only and all(s != seed for _, s in only) or seed in (seed_scores or {}):
            continue  # another process's unit (its SFT ran before the units started), or a stored seed
        cfg = base_config(preset, seed)
        cfg.sft.trl.update(max_steps=sft_steps, save_steps=max(4, sft_steps // 4))
        tag = f"s{seed}"
        own = (seed_work or {}).get(seed, work)
        sft_dir = own / f"sft-{tag}"
        stages[f"sft-{tag}"] = run_step(
            sft_dir, {"data": file_sha256(sft_rows), "sft": cfg.sft.model_dump(mode="json"), "seed": seed},
            lambda fresh, cfg=cfg, d=sft_dir: {"steps": train_sft(cfg, sft_rows, d, resume=not fresh,
                                                                   overwrite=fresh).get("steps")},
            on_resume=lambda d=sft_dir: follow_move(d, base, {"data": sft_rows}))
        drop_checkpoints(sft_dir)
        checkpoints["sft"] = sft_dir
        for arm in arms_in_seed(preset, seed):
            if only is not None and (arm, seed) not in only:
                continue
            spec = ARMS[arm]
            name = f"{arm}@{tag}" if arm != "base" else arm
            model = checkpoints[spec["init"] or "base"]
            if "grpo" in spec:
                gcfg = cfg.model_copy(deep=True)
                gcfg.grpo = gcfg.grpo.model_copy(update=spec["grpo"])
                gcfg.seed = draw_seed(seed, arm)
                gdir = own / f"grpo-{arm}-{tag}"
                trainer = train_trl_peer if spec.get("peer") else train_grpo
                judged = {"solvable_mode": spec["solvable_mode"]} if spec.get("solvable_mode") else {}
                # an arm that starts from the method's policy on its questions, judged with the same tools
                # (another draw, the TRL peer, the transfer arms, the pre-check ablation where its setting
                # changed no episode): the initial policy's greedy answers, by
                # which solvable-first chooses, are the method's (one pass a seed, not one an arm: on a pool of
                # 200 questions a pass costs what an evaluation does)
                method = own / f"grpo-sft+grpo-{tag}"
                shared = ({"solvable_from": method / "solvable.jsonl"}
                          if arm != "sft+grpo" and same_start(method, grpo_data_id, model, gcfg.grpo,
                                                              spec.get("solvable_mode")) else {})
                # `candidates` and `solvable_mode` only where set: steps run before they existed stay the same
                stages[f"grpo-{arm}-{tag}"] = run_step(
                    gdir, {"data": grpo_data_id, "grpo": gcfg.grpo.model_dump(mode="json"), "seed": gcfg.seed,
                           "init": str(model), "trainer": trainer.__name__,
                           "init_done": checkpoint_stamp(model), "questions": preset["grpo_questions"],
                           **({"candidates": candidates} if candidates else {}), **judged},
                    lambda fresh, gcfg=gcfg, d=gdir, m=model, trainer=trainer, judged=judged, shared=shared, method=method: {
                        "steps": trainer(gcfg, grpo_train, m, d, limit=preset["grpo_questions"], resume=not fresh,
                                         overwrite=fresh, candidates=candidates, **judged, **shared).get("steps"),
                        # for the estimate: how much of the pass its step's time does not hold
                        "took_answers": answers_taken(d / "solvable.jsonl", method / "solvable.jsonl") if shared else 0},
                    on_resume=lambda d=gdir, m=model: follow_move(d, m, {"data": grpo_train}))
                drop_checkpoints(gdir)
                rollouts = gcfg.grpo.trl["per_device_train_batch_size"] * gcfg.grpo.trl["gradient_accumulation_steps"]
                results["curves"][name] = reward_curve(gdir, rollouts, Rubric.from_config(gcfg.grpo),
                                                       replay_players(gcfg.grpo, gcfg.retriever))
                if each_question_once(preset) and not spec.get("peer"):  # the quarters can't tell learning
                    rdir = own / f"replay-{arm}-{tag}"
                    stages[f"replay-{arm}-{tag}"] = run_step(
                        rdir, {"policy": str(gdir), "policy_done": checkpoint_stamp(gdir), "data": grpo_data_id,
                               "grpo": gcfg.grpo.model_dump(mode="json"), "seed": gcfg.seed},
                        lambda fresh, gcfg=gcfg, g=gdir, d=rdir: {
                            "replay": replay_quarter(gcfg, g, grpo_train, d)})
                    curve = results["curves"][name]
                    curve["replay"] = stages[f"replay-{arm}-{tag}"].get("replay")
                    if replays_both_quarters(arm):
                        ldir = own / f"replay-last-{arm}-{tag}"
                        stages[f"replay-last-{arm}-{tag}"] = run_step(
                            ldir, {"policy": str(model), "policy_done": checkpoint_stamp(model), "trained": str(gdir),
                                   "trained_done": checkpoint_stamp(gdir), "data": grpo_data_id,
                                   "grpo": gcfg.grpo.model_dump(mode="json"), "seed": gcfg.seed},
                            lambda fresh, gcfg=gcfg, g=gdir, d=ldir, m=model: {
                                "replay": replay_quarter(gcfg, g, grpo_train, d, policy=m, last=True)})
                        curve["replay_last"] = stages[f"replay-last-{arm}-{tag}"].get("replay")
                        both = paired_rise(replay_pairs(gdir, rdir) + replay_pairs(gdir, ldir, last=True))
                        if both:
                            curve["replay_both"] = both
                model = gdir
            modes = ["live"] + (["simulated"] if simulated_in_seed(preset, arm, seed) else [])
            ecfg = cfg.with_policy(model)
            ecfg.eval = ecfg.eval.model_copy(update={"modes": modes, "grounding": "retrieval"})
            edir = (own if arm != "base" else work) / f"eval-{arm}-{tag}"
            policy_done = checkpoint_stamp(model)
            stages[f"eval-{arm}-{tag}"] = run_step(
                edir, {"eval": ecfg.eval.model_dump(mode="json"), "policy": str(model), "policy_done": policy_done},
                lambda fresh, ecfg=ecfg, d=edir: {"n": sum(r["n"] for r in asyncio.run(
                    evaluate(ecfg, d, overwrite=fresh))["rows"])},
                on_resume=lambda d=edir, m=model, c=ecfg: follow_move(
                    d, m, {f"benchmark:{k}": v for k, v in benchmark_files(c).items()}))
            results["arms"][name] = summarise_eval(edir)
            eval_dirs[name] = edir
    if only is not None:
        return {}
    stored: dict[str, dict[str, dict[str, float]]] = {}  # the stored seeds' evaluations, live tools
    taken: dict[str, list[str]] = {}  # run -> the evaluations taken from its stored scores
    for seed, label in (seed_scores or {}).items():
        seed_results = stored_seed(label, seed, preset)
        stored.update(seed_results["scores"])
        taken.setdefault(label, []).extend(seed_results["scores"])
        results["arms"].update(seed_results["arms"])
        results["curves"].update(seed_results["curves"])
    # an evaluation's episodes (`n`, which only evaluations record): a step kept from a run in more modes holds
    # more than this run asked
    results["stages"] = {k: {"wall_s": round(v["wall_s"], 1), "peak_rss_mb": v.get("peak_rss_mb"),
                             **{x: v[x] for x in ("took_answers", "n") if x in v}}
                         for k, v in stages.items()}
    results["filter"] = {k: stages["filter"].get(k) for k in ("episodes", "kept", "rejected")}
    results["sft_steps"] = sft_steps
    results["comparisons"] = comparisons(eval_dirs, preset, stored)
    results["sim_vs_live"] = sim_vs_live(eval_dirs)
    results["draws"] = draw_spread(eval_dirs, preset, stored)
    if against is not None:
        # this run's own seeds: a stored seed's draws are not here to set against another's
        results["draws_against"] = draws_against(
            eval_dirs, {**preset, "seeds": [s for s in preset["seeds"] if s not in (seed_scores or {})]}, against)
    results["targets"] = targets(results, preset)
    results["preset"] = preset
    results["config"] = cfg0.model_dump(mode="json")
    if seed_scores:
        results["seed_scores"] = {str(seed): label for seed, label in seed_scores.items()}
    # main() writes it to SCORES, not to the results file
    results["question_scores"] = with_stored_scores(stored_scores(eval_dirs), taken)
    return results


def arms_in_seed(preset: dict[str, Any], seed: int) -> list[str]:
    """The arms a seed runs: all of the preset's in the first seed; in the others the main comparison (SFT
    only, SFT + GRPO) and the method's other draws, and the ablations too with `every_seed` (not the base
    model: greedy, it answers the same in every seed)."""
    if seed == preset["seeds"][0]:
        return list(preset["arms"])
    return [a for a in preset["arms"] if a in SEEDED or a in DRAWS or (preset.get("every_seed") and a != "base")]


def simulated_in_seed(preset: dict[str, Any], arm: str, seed: int) -> bool:
    """Whether the arm's evaluation in this seed runs with simulated tools too: the preset's `simulated_eval`
    arms in its first seed, in every seed with `every_seed`, as the ablations. How far the ToolActor's world
    reads from the live one is the simulator's figure more than the seed's (`full-pool`: SFT's and the
    method's gaps alike in both seeds, docs/learning.md), and the second seed's cost a quarter hour of the
    full preset's three."""
    return arm in preset["simulated_eval"] and (seed == preset["seeds"][0] or bool(preset.get("every_seed")))


# --- --jobs: the arms' steps in processes of their own ----------------------------------------------------
# On 2 cores one process uses them poorly: a 135M model's matrices are too small for torch to keep two threads
# busy. Two processes of one thread each, on two arms, did 1.4-1.5 times the work of one process of two
# (benchmarks/bench_jobs.py, docs/performance.md). A unit is an arm in a seed: its
# GRPO, replay and evaluation, which only its own later steps read.

def units_in_order(preset: dict[str, Any]) -> list[tuple[str, int]]:
    """The (arm, seed) units of a preset in the order `--jobs` starts them: the method first in every seed (the
    arms that take its solvable-first answers wait for its pass: `answers_written`), then the other GRPO arms, the TRL peer, the
    slowest, first; then the arms that only evaluate, the base model last: it rarely searches and answers in a
    few tokens, the shortest unit, and the last unit runs beside nothing (the full preset estimated 3 minutes
    shorter than with the base model before SFT)."""
    def rank(unit: tuple[str, int]) -> int:
        spec = ARMS[unit[0]]
        return (0 if unit[0] == "sft+grpo" else 1 if spec.get("peer") else 2 if "grpo" in spec
                else 4 if unit[0] == "base" else 3)

    return sorted(((arm, seed) for seed in preset["seeds"] for arm in arms_in_seed(preset, seed)), key=rank)


def unit_needs(unit: tuple[str, int], preset: dict[str, Any]) -> tuple[str, int] | None:
    """The unit that must finish first, or have written its solvable-first answers (`answers_written`): the
    method in the same seed, for an arm that takes its answers."""
    arm, seed = unit
    return ("sft+grpo", seed) if shares_answers(arm) and "sft+grpo" in arms_in_seed(preset, seed) else None


def next_unit(pending: list[tuple[str, int]], units: list[tuple[str, int]],
              needs: Callable[[tuple[str, int]], tuple[str, int] | None], done: Any, running: Any,
              met: Callable[[tuple[str, int]], bool] | None = None) -> tuple[str, int] | None:
    """The first pending unit whose need has finished, or has written what it is needed for (`met`: the method's
    solvable-first answers, `answers_written`), or is no unit of the run; with nothing running and none ready,
    the first pending one (its need came later in the order: it then answers for itself)."""
    def ready(u: tuple[str, int]) -> bool:
        need = needs(u)
        return need is None or need in done or need not in units or (need in running and met is not None
                                                                     and met(need))

    first = next((u for u in pending if ready(u)), None)
    return pending[0] if first is None and not running and pending else first


def run_units(units: list[tuple[str, int]], needs: Callable[[tuple[str, int]], tuple[str, int] | None],
              start: Callable[[tuple[str, int]], Any], jobs: int, poll_s: float = 1.0,
              on_change: Callable[[set, set, dict], None] | None = None,
              met: Callable[[tuple[str, int]], bool] | None = None) -> dict[tuple[str, int], int]:
    """Start `units` in order, at most `jobs` at once, each once what it needs has finished, or, running, has
    written what it is needed for (`met`); `start(unit)` gives a process (`poll()` -> exit status or None).
    After a failure nothing new starts and the running ones finish. Returns the failed units' exit status ({}
    when all finished). Hand-written: a process pool would run the units in the parent's interpreter, where a
    crash takes the others with it and their logs mix."""
    pending, running, done, failed = list(units), {}, set(), {}
    try:
        while pending or running:
            for unit, proc in list(running.items()):
                rc = proc.poll()
                if rc is not None:
                    del running[unit]
                    (done.add(unit) if rc == 0 else failed.__setitem__(unit, rc))
            while not failed and len(running) < jobs:
                ready = next_unit(pending, units, needs, done, running, met)
                if ready is None:
                    break
                pending.remove(ready)
                running[ready] = start(ready)
            if failed and not running:
                break
            if on_change:
                on_change(set(running), done, failed)
            if running:
                time.sleep(poll_s)
    finally:  # an error or a signal here: no unit goes on without the run that started it
        for proc in running.values():
            if proc.poll() is None:
                proc.terminate()
    return failed


def units_makespan(units: list[tuple[str, int]], needs: Callable[[tuple[str, int]], tuple[str, int] | None],
                   seconds: dict[tuple[str, int], float], jobs: int,
                   early: dict[tuple[str, int], float] | None = None) -> float:
    """How long `run_units` takes for units of these durations: the same order and waits, in simulated time.
    `early`: seconds after a unit starts at which what others need of it is written (`met`: the method's
    solvable-first pass), so that they may start beside it."""
    pending, running, finished, now = list(units), {}, {}, 0.0
    started: dict[tuple[str, int], float] = {}
    early = early or {}

    def met(unit: tuple[str, int]) -> bool:
        return unit in early and now >= started[unit] + early[unit]

    while pending or running:
        while len(running) < jobs:
            ready = next_unit(pending, units, needs, finished, running, met)
            if ready is None:
                break
            pending.remove(ready)
            started[ready], running[ready] = now, now + seconds[ready]
        # the next moment something changes: a unit ends, or a running one's answers are written
        written = [started[u] + early[u] for u in running if u in early and started[u] + early[u] > now]
        now = min([*running.values(), *(written if pending and len(running) < jobs else [])])
        for unit in [u for u, end in running.items() if end <= now]:
            finished[unit] = running.pop(unit)
    return now


def answers_written(preset: dict[str, Any], work: Path, method: Path) -> bool:
    """Whether the method's GRPO step in `method` has answered every question solvable-first chooses among
    (its `solvable.jsonl`): an arm that takes those answers may start then, beside the method's training and
    evaluation, not after them. Run alone in a seed (the other units done), the peer or an ablation then waits
    for the pass, not for the whole unit, which was a third of the method's time beside an idle core. An arm
    that starts on answers the method's step does not share (another initial policy: `same_start`) answers
    for itself, as when its need is no unit of the run."""
    from mtr.jsonl import json_lines

    source = work / "data" / ("grpo-train.jsonl" if preset.get("grpo_pool") else "train.jsonl")
    answers = method / "solvable.jsonl"
    if not (source.is_file() and answers.is_file()):
        return False
    wanted = [r["id"] for _, r in json_lines(source) if r is not None][:preset.get("grpo_candidates") or None]
    return set(wanted) <= {r["id"] for _, r in json_lines(answers) if r is not None and "id" in r}


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container's CPU set limits), else the CPU's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_jobs(preset: dict[str, Any], work: Path, jobs: int, argv: list[str],
             seed_work: dict[int, Path] | None = None) -> None:
    """Each unit of the preset as `bench_learning.py ARGV --unit ARM@SEED` in a process of its own, `jobs` at a
    time, each with the CPU's cores shared out (OMP_NUM_THREADS), its output in work/jobs/ARM-sSEED.log. The
    caller has run the shared steps; a unit already finished costs its process a few seconds of skipping.
    llama.cpp (the simulated tools) keeps its own default, half the CPU's threads: set through a role's
    `n_threads`, the share would enter the steps' manifests, and a step begun with another share would refuse
    to go on."""
    import os
    import subprocess
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    threads = max(1, usable_cores() // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logs = work / "jobs"
    logs.mkdir(parents=True, exist_ok=True)
    units = units_in_order(preset)

    def log_of(unit: tuple[str, int]) -> Path:
        return logs / f"{unit[0]}-s{unit[1]}.log"

    def start(unit: tuple[str, int]) -> Any:
        with log_of(unit).open("a", encoding="utf-8") as out:  # the child holds its own descriptor
            # the parent's working directory: relative --work, --seed-work... name the same directories there
            return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv, "--unit",
                                     f"{unit[0]}@{unit[1]}"], stdout=out, stderr=subprocess.STDOUT, env=env)

    console.print(f"{len(units)} units, {jobs} at a time, {threads} thread{'s' if threads > 1 else ''} each; "
                  f"their output in {logs}/")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("units", total=len(units))

        def show(running: set, done: set, failed: dict) -> None:
            bar.update(task, completed=len(done), description="running " + ", ".join(
                f"{a}@s{s}" for a, s in sorted(running)) if running else "units")

        written: set[tuple[str, int]] = set()  # units whose answers are all written (they stay so)

        def met(unit: tuple[str, int]) -> bool:
            if unit not in written and answers_written(
                    preset, work, (seed_work or {}).get(unit[1], work) / f"grpo-{unit[0]}-s{unit[1]}"):
                written.add(unit)
            return unit in written

        failed = run_units(units, lambda u: unit_needs(u, preset), start, jobs, on_change=show, met=met)
    if failed:
        unit, rc = next(iter(failed.items()))
        lines = [x for x in log_of(unit).read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
        raise SystemExit(f"unit {unit[0]}@s{unit[1]} failed (exit {rc}): {lines[-1] if lines else 'no output'} "
                         f"(whole log: {log_of(unit)}); its finished steps are kept, run again to resume")


# --- the figures -----------------------------------------------------------------------------------------

def question_key(record: dict[str, Any]) -> str:
    """A held-out question's name across evaluations and modes: `benchmark|id`."""
    return f"{record['benchmark']}|{record['id']}"


def question_scores(eval_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{mode: {benchmark|id: {metric: value}}} from an evaluation's predictions (EM, F1, cover EM in %)."""
    from mtr.jsonl import read_jsonl

    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in read_jsonl(eval_dir / "predictions.jsonl", latest_by="key"):
        out.setdefault(r["mode"], {})[question_key(r)] = {
            "em": 100.0 * r["em"], "f1": 100.0 * r["f1"], "cover_em": 100.0 * r["cover_em"],
            "answered": 100.0 * r.get("answered", 0), "well_formed": 100.0 * r.get("well_formed", 0),
            "calls": float(r.get("calls", 0))}
    return out


def summarise_eval(eval_dir: Path) -> dict[str, Any]:
    """Per mode, overall and per benchmark: each metric's mean and 95 % bootstrap interval, and n."""
    from mtr.metrics import bootstrap_ci

    summary: dict[str, Any] = {}
    for mode, scores in question_scores(eval_dir).items():
        groups = {"all": list(scores)} | {b: [k for k in scores if k.startswith(b + "|")] for b in BENCHMARKS}
        summary[mode] = {g: {"n": len(keys), **{m: [round(v, 2) for v in bootstrap_ci([scores[k][m] for k in keys])]
                                                for m in METRICS}}
                         for g, keys in groups.items() if keys}
        # episodes and answered episodes by the number of calls made: where answers go missing
        by_calls: dict[str, list[int]] = {}
        for v in scores.values():
            n_answered = by_calls.setdefault(str(int(v["calls"])), [0, 0])
            n_answered[0] += 1
            n_answered[1] += int(v["answered"] > 0)
        summary[mode]["all"]["by_calls"] = dict(sorted(by_calls.items()))
    return summary


def comparisons(eval_dirs: dict[str, Path], preset: dict[str, Any],
                stored: dict[str, dict[str, dict[str, float]]] | None = None) -> list[dict[str, Any]]:
    """Paired differences on the same questions (live tools): SFT - base and SFT+GRPO - SFT per seed, each
    ablation against the method in the first seed (then in the others, where `--every-seed` ran them), and
    last, with two seeds or more, the same differences of the seeds' mean score on each question (named
    `@s0+s1`): SFT+GRPO - SFT, then each ablation run in several seeds against the method. Last, each
    ablation that trains GRPO from the SFT policy against SFT itself, per seed then over the seeds: its own
    gain, which the method's draw of GRPO says nothing about (the pre-check ablation, which met next to no
    invalid call, is in effect a second draw of the method: docs/learning.md, `main-dapo-ablations-2seeds`).
    Then each ablation that trains GRPO from the base model (the cold start) against the base model, per seed.
    These come after the rest so that a row's index in a run recorded before them stays the same. `stored`:
    evaluations of seeds taken from a recorded run (`stored_seed`), by name, beside the work directories'."""
    seeds = [f"s{seed}" for seed in preset["seeds"]]
    ablations = [a for a in ARMS if a not in ("base", *SEEDED)]
    from_sft = [a for a in ablations if ARMS[a]["init"] == "sft"]
    pairs = [p for t in seeds for p in (("base", f"sft@{t}"), (f"sft@{t}", f"sft+grpo@{t}"))]
    pairs += [(f"sft+grpo@{t}", f"{a}@{t}") for t in seeds for a in ablations]
    scores = {n: question_scores(d).get("live", {}) for n, d in eval_dirs.items()} | (stored or {})

    def rows(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return [paired_row(a, b, scores[a], scores[b]) for a, b in pairs if a in scores and b in scores]

    out = rows(pairs) + seed_means(scores, seeds, [("sft", "sft+grpo")] + [("sft+grpo", x) for x in ablations])
    out += rows([(f"sft@{t}", f"{x}@{t}") for t in seeds for x in from_sft])
    out += seed_means(scores, seeds, [("sft", x) for x in from_sft])
    # and last (since 2026-12-06), the cold start against the base model it started from: what GRPO alone did
    from_base = [a for a in ablations if ARMS[a]["init"] == "base"]
    return out + rows([("base", f"{x}@{t}") for t in seeds for x in from_base])


def seed_means(scores: dict[str, dict[str, dict[str, float]]], seeds: list[str],
               pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """For each pair of arms run in two seeds or more, the paired difference of their seeds' mean score on each
    question (named `arm@s0+s1`)."""
    out = []
    for a, b in pairs:
        both = [t for t in seeds if f"{a}@{t}" in scores and f"{b}@{t}" in scores]
        if len(both) > 1:
            # one question's score averaged over the seeds: seed-to-seed variation stays inside each question,
            # and the interval is over questions, as for one seed
            tag = "+".join(both)
            out.append(paired_row(f"{a}@{tag}", f"{b}@{tag}", seed_mean([scores[f"{a}@{t}"] for t in both]),
                                  seed_mean([scores[f"{b}@{t}"] for t in both])))
    return out


def draw_spread(eval_dirs: dict[str, Path], preset: dict[str, Any],
                stored: dict[str, dict[str, dict[str, float]]] | None = None) -> dict[str, Any]:
    """Each seed in which the method was drawn more than once (`sft+grpo-d2`, ...) from the same SFT policy:
    each draw's held-out gain over SFT (F1, EM; live tools, paired on the same questions), their standard
    deviation over the draws, and the draws' mean score on each question against SFT (named
    `sft+grpo-d1..dN@sK`: its interval is over questions and holds none of the draw-to-draw spread, which the
    standard deviation measures).

    Each GRPO arm from the SFT policy run beside the draws (an ablation, the TRL peer) is set against them too
    (`ablations`): its own gain's place among the draws' (how many it is above), and its score minus the
    draws' mean on each question, per seed and over the seeds where all ran. The first draw alone varies as
    much as the difference asked about (docs/learning.md, `full-pool-ablations-2seeds`); their mean is the
    steadier reference. `stored`: as `comparisons`'."""
    scores = {n: question_scores(d).get("live", {}) for n, d in eval_dirs.items()} | (stored or {})
    others = [a for a in ARMS if "grpo" in ARMS[a] and ARMS[a]["init"] == "sft" and a != "sft+grpo" and a not in DRAWS]
    out: dict[str, Any] = {}
    for t in [f"s{seed}" for seed in preset["seeds"]]:
        names = [n for n in [f"sft+grpo@{t}"] + [f"{a}@{t}" for a in DRAWS] if n in scores]
        if len(names) < 2 or f"sft@{t}" not in scores:
            continue
        rows = [paired_row(f"sft@{t}", n, scores[f"sft@{t}"], scores[n]) for n in names]
        gains = {m: [r[m][0] for r in rows] for m in ("f1", "em")}
        drawn_mean, mean_name = seed_mean([scores[n] for n in names]), f"sft+grpo-d1..d{len(names)}@{t}"
        out[t] = {"draws": names, **{f"{m}_gains": v for m, v in gains.items()},
                  **{f"{m}_sd": round(statistics.stdev(v), 2) for m, v in gains.items()},
                  "mean": paired_row(f"sft@{t}", mean_name, scores[f"sft@{t}"], drawn_mean)}
        ablations = {}
        for arm in (a for a in others if f"{a}@{t}" in scores):
            gain = paired_row(f"sft@{t}", f"{arm}@{t}", scores[f"sft@{t}"], scores[f"{arm}@{t}"])["f1"][0]
            ablations[arm] = {"f1_gain": gain, "above_draws": sum(gain > g for g in gains["f1"]),
                              "row": paired_row(mean_name, f"{arm}@{t}", drawn_mean, scores[f"{arm}@{t}"])}
        if ablations:
            out[t]["ablations"] = ablations
    if len(out) >= 2:  # over the seeds: each seed's draws' mean, then the seeds' mean, against SFT's mean
        drawn = list(out)
        both = "+".join(drawn)
        means = seed_mean([seed_mean([scores[n] for n in out[t]["draws"]]) for t in drawn])
        out["all"] = {"seeds": drawn, "draws": sum(len(out[t]["draws"]) for t in drawn),
                      "gains_above_zero": sum(g > 0 for t in drawn for g in out[t]["f1_gains"]),
                      "mean": paired_row(f"sft@{both}", f"sft+grpo-draws@{both}",
                                         seed_mean([scores[f"sft@{t}"] for t in drawn]), means)}
        ablations = {arm: paired_row(f"sft+grpo-draws@{both}", f"{arm}@{both}", means,
                                     seed_mean([scores[f"{arm}@{t}"] for t in drawn]))
                     for arm in others if all(arm in out[t].get("ablations", {}) for t in drawn)}
        if ablations:
            out["all"]["ablations"] = ablations
    return out


# GRPO settings that solvable-first's judge does not read: it answers in its own mode (`solvable_mode`, else
# the tools the arm trains against), so what the arm trains against besides does not enter its answers
TRAINING_TOOLS = ("tool_mode", "grounding", "live_share")
# nor the pre-check, which changes an episode only where it calls a tool with invalid arguments: the answers
# record it (`invalid_args`), and an arm with the other setting takes those of the episodes that made no such
# call (`take_answers`) and answers the rest itself
ANSWER_BLIND = TRAINING_TOOLS + ("precheck",)


def judged_by(grpo: dict[str, Any], solvable_mode: str | None) -> dict[str, Any]:
    """The GRPO settings that make solvable-first's greedy answers, where the pre-check does not: the judge's
    tool mode, and every setting but the pre-check and those of the tools trained against (with a live judge:
    a simulated one reads `grounding` too)."""
    judge = solvable_mode or grpo.get("tool_mode")
    return {**{k: v for k, v in grpo.items()
               if k not in ANSWER_BLIND or (judge != "live" and k in ("grounding", "live_share"))},
            "judge_mode": judge}


def same_start(method: Path, data_id: str, init: Path, grpo: Any, solvable_mode: str | None = None) -> bool:
    """Whether the method's GRPO step in `method` started as an arm about to start would: the same questions,
    the same initial policy (its path and finish stamp), judged with the same tools, and the same GRPO
    settings but for the seed, which a greedy answer does not read, and the tools the arm trains against
    (`judged_by`). Only then are its solvable-first answers the arm's (an SFT policy trained again since, or
    other settings, and the arm answers afresh)."""
    from mtr.rundir import checkpoint_stamp, same_settings

    started = method / "bench_identity.json"
    if not started.is_file():
        return False
    theirs = json.loads(started.read_text())
    return (theirs.get("data") == data_id and theirs.get("init") == str(init)
            and theirs.get("init_done") == checkpoint_stamp(init)
            and same_settings(portable(judged_by(theirs.get("grpo") or {}, theirs.get("solvable_mode"))),
                              portable(judged_by(grpo.model_dump(mode="json"), solvable_mode))))


def answers_taken(mine: Path, theirs: Path) -> int:
    """How many of an arm's solvable-first answers (`mine`) it took from the method's (`theirs`, take_answers)
    rather than made: with the other pre-check setting, or from a method that ran before the answers recorded
    it, fewer than all or none."""
    from mtr.jsonl import json_lines

    if not (mine.is_file() and theirs.is_file()):
        return 0
    ref = {r["id"]: r for _, r in json_lines(theirs) if r is not None}
    return sum(r is not None and ref.get(r["id"]) == r for _, r in json_lines(mine))


def shares_answers(arm: str) -> bool:
    """Whether an arm takes the method's solvable-first answers in its seed (`same_start`, as the presets run
    it): another draw, the TRL peer, the arms trained against simulated tools (judged live), the pre-check
    ablation (those of episodes that called no tool with invalid arguments: `take_answers`); not the cold
    start (another initial policy)."""
    spec, method = ARMS[arm], ARMS["sft+grpo"]
    return (arm != "sft+grpo" and "grpo" in spec and spec["init"] == method["init"]
            and judged_by(spec["grpo"], spec.get("solvable_mode")) == judged_by(method["grpo"], None))


def live_answers(d: Path) -> dict[str, Any]:
    """{benchmark|id: prediction} of an evaluation with live tools."""
    from mtr.jsonl import read_jsonl

    return {question_key(r): r.get("prediction") for r in read_jsonl(d / "predictions.jsonl", latest_by="key") if r["mode"] == "live"}


def evals_in_work(other: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The finished evaluations of a work directory (`eval-<arm>-sK`), as `evals_stored` gives a stored run's:
    {arm@sK: {"scores": {question: metrics}, "answers": {question: prediction}}}, live tools. One stopped halfway
    is left out: it would set a part of the questions against the rest."""
    from mtr.rundir import stage_done

    out = {}
    for d in sorted(other.glob("eval-*-s*")):
        arm, _, seed = d.name[len("eval-"):].rpartition("-s")
        if arm in ARMS and seed.isdigit() and stage_done(d) is not None:
            out[f"{arm}@s{seed}"] = {"scores": question_scores(d).get("live", {}),
                                     "answers": live_answers(d)}
    return out


def stored_scores(eval_dirs: dict[str, Path]) -> dict[str, Any]:
    """What each evaluation scored on each question, compact (the full preset has ~25 evaluations of the same
    200 questions): the questions named once, `benchmark|id`; then per arm and tool mode, lists aligned with
    them (null where it did not evaluate one) of EM, F1 and answered as fractions, and the prediction, which
    `draws_against` compares to tell the same SFT policy."""
    from mtr.jsonl import read_jsonl

    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for name, d in eval_dirs.items():
        for r in read_jsonl(d / "predictions.jsonl", latest_by="key"):
            rows.setdefault(name, {}).setdefault(r["mode"], {})[question_key(r)] = r
    keys = sorted({k for modes in rows.values() for by_key in modes.values() for k in by_key})

    def number(x: Any) -> float | int:
        x = round(float(x), 6)
        return int(x) if x.is_integer() else x

    arms: dict[str, Any] = {}
    for name, modes in rows.items():
        for mode, by_key in modes.items():
            arms.setdefault(name, {})[mode] = {
                **{m: [number(by_key[k].get(m, 0)) if k in by_key else None for k in keys]
                   for m in ("em", "f1", "answered")},
                "prediction": [by_key[k].get("prediction") if k in by_key else None for k in keys]}
    return {"questions": keys, "arms": arms}


def with_stored_scores(own: dict[str, Any], taken: dict[str, list[str]], scores_dir: Path | None = None) -> dict[str, Any]:
    """This run's `stored_scores` with the evaluations it took from recorded runs (`taken`: run -> names, from
    their stored scores) added, all of them on the union of their questions: a later run can set itself
    against the whole of this one."""
    if not taken:
        return own
    sources = {label: json.loads(scores_file(label, scores_dir).read_text()) for label in taken}
    keys = sorted(set(own["questions"]).union(*(src["questions"] for src in sources.values())))

    def aligned(questions: list[str], lists: dict[str, list]) -> dict[str, list]:
        at = {k: i for i, k in enumerate(questions)}
        return {m: [v[at[k]] if k in at else None for k in keys] for m, v in lists.items()}

    arms = {name: {mode: aligned(own["questions"], lists) for mode, lists in modes.items()}
            for name, modes in own["arms"].items()}
    for label, names in taken.items():
        src = sources[label]
        for name in names:
            arms[name] = {mode: aligned(src["questions"], lists) for mode, lists in src["arms"][name].items()}
    return {"questions": keys, "arms": arms}


# what a seed taken from a recorded run must share with this run: the experiment's sizes and GRPO settings
SHARED_SETTINGS = ("train_per_source", "sft_epochs", "grpo_steps", "grpo_questions", "grpo_pool", "grpo_candidates",
                   "eval_limit", "grpo")


def stored_seed(label: str, seed: int, preset: dict[str, Any], results_file: Path | None = None,
                scores_dir: Path | None = None) -> dict[str, Any]:
    """Seed `seed`'s arms of this run's preset (`arms_in_seed`), as run `label` recorded them: their summaries
    (`arms`), reward curves (`curves`) and live scores on each question (`scores`, from its stored scores). For a
    seed run on a machine whose work directories are gone: this run's comparisons over seeds take it as if its
    steps had been found done here. The recorded run must have run the same experiment (`SHARED_SETTINGS`) and
    every arm asked in that seed; else a one-line error naming what differs."""
    results_file = results_file or RESULTS
    runs = json.loads(results_file.read_text()) if results_file.is_file() else {}
    flag = f"--seed-scores {seed}={label}"
    if label not in runs:
        raise SystemExit(f"{flag}: no run {label!r} in {results_file}")
    run = runs[label]
    if seed not in run.get("preset", {}).get("seeds", []):
        raise SystemExit(f"{flag}: run {label} ran seeds {run.get('preset', {}).get('seeds')}, not {seed}")
    for key in SHARED_SETTINGS:
        if run["preset"].get(key) != preset.get(key):
            raise SystemExit(f"{flag}: run {label} ran with {key} {run['preset'].get(key)!r}, this run with "
                             f"{preset.get(key)!r}: not one experiment")
    # and the settings the preset leaves to the configuration (learning rates, reward, LoRA, the policy), up to
    # those added to mtr since, at their defaults (`same_settings`: how a step tells it ran as it would now)
    from mtr.rundir import same_settings

    ours = base_config(preset, preset["seeds"][0]).model_dump(mode="json")
    theirs = run.get("config", {})
    for section in ("grpo", "sft", "roles"):
        if not same_settings({section: theirs.get(section)}, {section: ours[section]}):
            raise SystemExit(f"{flag}: run {label} ran with other {section} settings than this run's: not one "
                             f"experiment")
    try:
        evals = evals_stored(label, scores_dir)
    except ValueError as e:
        raise SystemExit(f"{flag}: {e}") from None
    names = [f"{arm}@s{seed}" for arm in arms_in_seed(preset, seed) if arm != "base"]
    missing = [n for n in names if n not in evals or n not in run.get("arms", {})]
    if missing:
        raise SystemExit(f"{flag}: run {label} holds no evaluation of {', '.join(missing)}")
    return {"scores": {n: evals[n]["scores"] for n in names}, "arms": {n: run["arms"][n] for n in names},
            "curves": {n: run["curves"][n] for n in names if n in run.get("curves", {})}}


def scores_file(label: str, scores_dir: Path | None = None) -> Path:
    return (scores_dir or SCORES) / f"{label}.json"


def evals_stored(label: str, scores_dir: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """A stored run's evaluations (`stored_scores`, in `scores_dir`), live tools, as `evals_in_work` gives a
    work directory's: scores in % as `question_scores` gives them (EM, F1, answered)."""
    path = scores_file(label, scores_dir)
    try:
        stored = json.loads(path.read_text())
        keys = stored["questions"]
        out = {}
        for name, modes in stored["arms"].items():
            live = modes.get("live")
            if live is None:
                continue
            held = [(i, k) for i, k in enumerate(keys) if live["f1"][i] is not None]
            out[name] = {"scores": {k: {m: 100.0 * live[m][i] for m in ("em", "f1", "answered")} for i, k in held},
                         "answers": {k: live["prediction"][i] for i, k in held}}
        return out
    except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: not a run's stored scores ({type(e).__name__}: {e})") from None


def draws_against(eval_dirs: dict[str, Path], preset: dict[str, Any], other: Path | str,
                  scores_dir: Path | None = None) -> dict[str, Any]:
    """This run's draws of the method set against another run's from the same SFT policy (`other`: its work
    directory, or its label where its scores are stored, `stored_scores`: the same draws at other settings),
    per seed both have: the paired difference of the two sets' mean score on each question (named
    `<other>:d1..dN@sK` against `d1..dM@sK`), and the share of questions SFT answered alike in both runs (100
    where they are the same policy; a different SFT policy makes the row meaningless, and says so here)."""
    stored = not isinstance(other, Path)
    theirs_all = evals_stored(other, scores_dir) if stored else evals_in_work(other)
    name = other if stored else other.name
    out: dict[str, Any] = {("run" if stored else "work"): name}
    for t in [f"s{seed}" for seed in preset["seeds"]]:
        arms = ["sft+grpo", *DRAWS]
        mine = [question_scores(eval_dirs[f"{a}@{t}"]).get("live", {}) for a in arms if f"{a}@{t}" in eval_dirs]
        theirs = [theirs_all[f"{a}@{t}"]["scores"] for a in arms if f"{a}@{t}" in theirs_all]
        mine, theirs = [r for r in mine if r], [r for r in theirs if r]
        shared_keys = set.intersection(*(set(r) for r in mine + theirs)) if mine and theirs else set()
        if not shared_keys or f"sft@{t}" not in eval_dirs or f"sft@{t}" not in theirs_all:
            # said, not raised: the run's own results are worth more than this one line of them
            console.print(f"[yellow]--draws-against {other}: no finished evaluations of the method's draws and "
                          f"of SFT in seed {t[1:]} on questions this run evaluated (eval-sft+grpo*-{t}, "
                          f"eval-sft-{t}); that seed is left out[/yellow]")
            continue
        a, b = live_answers(eval_dirs[f"sft@{t}"]), theirs_all[f"sft@{t}"]["answers"]
        shared = set(a) & set(b)
        out[t] = {"same_sft_pct": round(100.0 * sum(a[k] == b[k] for k in shared) / max(1, len(shared)), 1),
                  "row": paired_row(f"{name}:d1..d{len(theirs)}@{t}", f"d1..d{len(mine)}@{t}",
                                    seed_mean(theirs), seed_mean(mine))}
    return out


def sim_vs_live(eval_dirs: dict[str, Path]) -> list[dict[str, Any]]:
    """Each arm evaluated with both tools: its score with simulated tools minus with live ones, paired on the
    same questions. What a user who has no live tools would misread by evaluating in the simulated world."""
    out = []
    for name, d in eval_dirs.items():
        by_mode = question_scores(d)
        if "live" in by_mode and "simulated" in by_mode:
            out.append(paired_row(name, f"{name} (simulated)", by_mode["live"], by_mode["simulated"]))
    return out


def seed_mean(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """{question: {metric: mean over the runs}} for the questions every run scored, of the metrics all of them
    hold (a run's stored scores hold EM, F1 and answered alone: `evals_stored`)."""
    keys = set.intersection(*(set(r) for r in runs))
    return {k: {m: statistics.fmean(r[k][m] for r in runs) for m in runs[0][k] if all(m in r[k] for r in runs)}
            for k in sorted(keys)}


def paired_row(a: str, b: str, sa: dict[str, dict[str, float]], sb: dict[str, dict[str, float]]) -> dict[str, Any]:
    from mtr.metrics import paired_bootstrap_diff

    row: dict[str, Any] = {"a": a, "b": b}
    for m in ("em", "f1", "answered"):
        d, lo, hi, n = paired_bootstrap_diff({k: v[m] for k, v in sa.items()}, {k: v[m] for k, v in sb.items()})
        row[m] = [round(d, 2), round(lo, 2), round(hi, 2)]
        row["n"] = n
    return row


def reward_curve(grpo_dir: Path, rollouts: int, rubric: Any = None, live: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per step: the total reward, each component's mean, KL, the step's wall time and the policy's tokens
    (tool observations not counted, in mtr's rollout as in TRL's loop); the first and last quarters of the
    steps; seconds a step and the policy's tokens per second of step, alike for mtr and the TRL peer. With the
    run's `rubric`, its logged training episodes by the calls they made (`episodes_by_calls`); what the tools
    showed them (`observed_passages`, with `live` players for the simulated calls' reality gap)."""
    from mtr.rubric import trl_log_key
    from mtr.training import read_log

    steps = [e for e in read_log(grpo_dir) if "reward" in e]
    curve: dict[str, Any] = {"reward": [e["reward"] for e in steps], "reward_std": [e.get("reward_std") for e in steps],
                             "kl": [e.get("kl") for e in steps], "rollouts": rollouts}
    for c in COMPONENTS:
        curve[c] = [e.get(trl_log_key(c)) for e in steps]
    # the share of training episodes answered, and of groups whose answer reward did not differ (no advantage
    # to follow from correctness)
    curve["answered_pct"] = [e.get("episode/answered_pct") for e in steps]
    curve["calls"] = [e.get("episode/tool_calls") for e in steps]  # a policy that stops searching shows here
    def spread(e: dict[str, Any], c: str) -> float | None:  # the component's standard deviation in the group
        return e.get(trl_log_key(c).replace("/mean", "/std"))

    curve["answer_flat_steps"] = sum(spread(e, "answer") == 0 for e in steps)
    # which components told a group's episodes apart, step by step: TRL divides a group's rewards by their
    # standard deviation, so the one that differs drives the step whatever its weight
    varied = [{c for c in COMPONENTS if (spread(e, c) or 0) > 0} for e in steps]
    curve["varied_steps"] = {c: sum(c in v for v in varied) for c in COMPONENTS}
    curve["varied_alone_steps"] = {c: sum(v == {c} for v in varied) for c in COMPONENTS}
    curve["answered_pct_mean"] = (round(statistics.fmean(curve["answered_pct"]), 1)
                                  if steps and None not in curve["answered_pct"] else None)
    curve["quarters"] = quarters(curve["reward"])
    # what rose: each component's (and the calls', the answered share's) mean over the first and the last quarter
    curve["quarter_means"] = {c: [round(m, 4) for m in pair] for c in (*COMPONENTS, "calls", "answered_pct")
                              if (pair := quarter_means(curve[c]))}
    times = [e.get("step_time") for e in steps]
    tokens = [(e.get("completions/mean_length") or 0) * rollouts for e in steps]
    if steps and all(t for t in times):
        curve["seconds_per_step"] = round(statistics.fmean(times), 1)
        curve["policy_tokens_per_s"] = round(sum(tokens) / sum(times), 1)
    stats_file = grpo_dir / "train_stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    if stats.get("rollout_s") is not None and steps and steps[-1].get("num_tokens") and not stats.get("resumed_from"):
        # the update's time (all but the rollout) per token of the episodes it scores (TRL's num_tokens: prompt
        # and completion, no padding)
        curve["update_ms_per_token"] = round(1000 * (stats["train_runtime_s"] - stats["rollout_s"])
                                             / steps[-1]["num_tokens"], 2)
    for key in ("padding_pct", "solvable_questions"):
        if stats.get(key) is not None:
            curve[key] = stats[key]
    if rubric is not None and (grpo_dir / "samples.jsonl").is_file():
        curve["by_calls"] = episodes_by_calls(grpo_dir / "samples.jsonl", rubric)
    if (grpo_dir / "samples.jsonl").is_file():
        curve["passages"] = observed_passages(grpo_dir / "samples.jsonl", live)
        curve["question_ids"] = trained_questions(grpo_dir / "samples.jsonl")
        curve["invalid_calls"] = invalid_calls(grpo_dir / "samples.jsonl")
    return curve


def invalid_calls(samples: Path) -> dict[str, int]:
    """The calls of GRPO's logged training episodes, and how many of them called an existing tool with invalid
    arguments: what the pre-check stops (with it off, they are played). Where there are none, the pre-check
    ablation could not differ from the method but by its draw."""
    calls = [s for _, t in logged_traces(samples)[0] for s in t.steps if s.call is not None]
    return {"calls": len(calls),  # validate_call checks the arguments only of a tool that exists
            "invalid": sum(any(c.code == "args_valid" and not c.ok for c in s.checks) for s in calls)}


def trained_questions(samples: Path) -> list[str]:
    """The questions of GRPO's logged training episodes (their ids, sorted)."""
    return sorted({trace.id.split("#")[0] for _, trace in logged_traces(samples)[0]})


def retrieval_players(retriever: Any) -> dict[str, Any]:
    """The live players of `search` and `lookup` on a retriever configuration (loaded once in a process)."""
    from mtr.env import shared_retriever
    from mtr.livetools import live_players

    players = live_players(shared_retriever(retriever), retriever.top_k, retriever.max_chars)
    return {name: players[name] for name in ("search", "lookup")}


def replay_players(grpo: Any, retriever: Any) -> dict[str, Any] | None:
    """The live players to ask a GRPO arm's simulated calls again (the same calls' reality gap in
    `observed_passages`); None for an arm trained against live tools, whose calls the retriever answered."""
    return retrieval_players(retriever) if grpo.tool_mode == "simulated" else None


def tools_kind(player: str | None) -> str:
    """`live` or `simulated` for a step's `player` (`live:<retriever>`, `toolactor`); `other` for anything else."""
    return "simulated" if player == "toolactor" else "live" if (player or "").startswith("live") else "other"


def observed_passages(samples: Path, live: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """What the tools showed GRPO's logged training episodes (`logged_traces`), `live` (the retriever) and
    `simulated` (the ToolActor) apart (`tools_kind` of each step's `player`): how many passages (`results`
    items), their text's median length in characters, and the % whose text is no longer than its title (a
    passage that names an article and says nothing of it: a policy cannot learn a fact from it); and, of the
    observations in episodes whose answer only a tool can give (`answer_to_find`), how many and the % whose
    text holds a gold answer (normalised, as `mtr audit` reads it). With `live` (`live_players`), those of the
    simulated ones are answered again by the retriever: the % that would have held a gold answer
    (`live_answer_pct`), the same calls' reality gap. An observation that is not a JSON object with a list of
    results is left out."""
    from mtr.audit import contains_any, observation_text

    texts: dict[str, list[tuple[str, str]]] = {}
    held: dict[str, list[bool]] = {}
    replay: list[tuple[Any, Any]] = []
    for _, trace in logged_traces(samples)[0]:
        to_find = answer_to_find(trace)
        for step in trace.steps:
            try:
                results = json.loads(step.observation or "").get("results")
            except (ValueError, AttributeError):
                continue
            if not isinstance(results, list):
                continue
            kind = tools_kind(step.player)
            texts.setdefault(kind, [])
            held.setdefault(kind, [])
            for item in results:
                if isinstance(item, dict):
                    texts[kind].append((str(item.get("title") or "").strip(), str(item.get("text") or "").strip()))
            if not to_find:
                continue
            held[kind].append(contains_any(observation_text(step.observation), trace.answers))
            if kind == "simulated" and live and step.call is not None and step.call.name in live:
                replay.append((trace, step.call))

    async def answered_live() -> list[bool]:
        return [contains_any(observation_text((await live[call.name].observe(trace, None, call, {}))[0]),
                             trace.answers) for trace, call in replay]

    out = {}
    for player, items in sorted(texts.items()):
        out[player] = {"passages": len(items),
                       "median_chars": statistics.median(len(t) for _, t in items) if items else None,
                       "title_only_pct": round(100 * sum(len(t) <= len(title) for title, t in items) / len(items), 1)
                       if items else None,
                       "answer_observations": len(held[player]),
                       "answer_pct": round(100 * sum(held[player]) / len(held[player]), 1) if held[player] else None}
    if replay:
        again = asyncio.run(answered_live())
        out["simulated"]["live_answer_pct"] = round(100 * sum(again) / len(again), 1)
    return out


def answer_to_find(trace: Any) -> bool:
    """Whether a passage that holds the episode's gold answer told the policy something: not when the answer is
    yes or no (the words occur in any passage) or is in the question (a comparison's two names)."""
    from mtr.audit import contains_any
    from mtr.metrics import normalize_answer

    return not ({normalize_answer(a) for a in trace.answers} & {"yes", "no"}
                or contains_any(normalize_answer(trace.question), trace.answers))


def logged_traces(samples: Path) -> tuple[list[tuple[Any, Any]], int]:
    """The training episodes GRPO logged (`samples.jsonl`: two of each step's group) as (step, Trace), and how
    many lines were not a whole record (cut short by a crash while written: counted, not guessed at). An
    episode logged twice (a step run again after a resume) counts once."""
    from mtr.trace import Trace

    seen: set[tuple[Any, str]] = set()
    out: list[tuple[Any, Any]] = []
    unreadable = 0
    for line in samples.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            trace = Trace.model_validate(record["trace"])
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        if (record.get("step"), trace.id) not in seen:
            seen.add((record.get("step"), trace.id))
            out.append((record.get("step"), trace))
    return out, unreadable


def logged_episodes(samples: Path, rubric: Any) -> tuple[list[tuple[Any, str, int, dict[str, float]]], int]:
    """The logged training episodes (`logged_traces`) as (step, question, calls, the run's rubric's scores), and
    how many lines were not a whole record."""
    traces, unreadable = logged_traces(samples)
    return [(step, trace.id.split("#")[0], len(trace.calls), rubric.score(trace)) for step, trace in traces], unreadable


def episodes_by_calls(samples: Path, rubric: Any) -> dict[str, dict[str, Any]]:
    """What a second search earned in training, component by component (whether the other components took back
    what its answers gained; docs/learning.md). From the logged episodes
    (`logged_episodes`), each reward component's mean (before its weight) and the total's:

    - by the calls an episode made (`"1"`, `"2"`...: over every question, pooled);
    - `more_calls`: within a group (one question, one step), the episode with more calls minus the one with
      fewer, over the groups whose two logged episodes differ in calls: what GRPO's advantage compares.
    `unreadable`: lines that were not a whole record."""
    episodes, unreadable = logged_episodes(samples, rubric)
    keys = (*COMPONENTS, "total")

    def means(rows: list[dict[str, float]]) -> dict[str, Any]:
        return {"n": len(rows), **{k: round(statistics.fmean(x[k] for x in rows), 4) for k in keys}}

    pooled: dict[int, list[dict[str, float]]] = {}
    groups: dict[tuple[Any, str], list[tuple[int, dict[str, float]]]] = {}
    for step, question, calls, scores in episodes:
        pooled.setdefault(calls, []).append(scores)
        groups.setdefault((step, question), []).append((calls, scores))
    out: dict[str, dict[str, Any]] = {str(c): means(rows) for c, rows in sorted(pooled.items())}
    diffs = []
    for members in groups.values():
        members.sort(key=lambda m: m[0])
        (fewer, a), (more, b) = members[0], members[-1]
        if more > fewer:
            diffs.append({k: b[k] - a[k] for k in keys})
    if diffs:
        out["more_calls"] = means(diffs)
    if unreadable:
        out["unreadable"] = {"n": unreadable}
    return out


def mean_se(xs: list[float]) -> tuple[float, float]:
    """The mean and its standard error."""
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))


def quarters(values: list[float]) -> dict[str, Any] | None:
    """The first and last quarters' mean step reward, each with its standard error (over steps), and whether
    the last exceeds the first by at least two standard errors of the difference."""
    k = len(values) // 4
    if k < 2:
        return None
    (m1, se1), (m2, se2) = mean_se(values[:k]), mean_se(values[-k:])
    se = math.hypot(se1, se2)
    return {"steps": k, "first": [round(m1, 4), round(se1, 4)], "last": [round(m2, 4), round(se2, 4)],
            "diff": round(m2 - m1, 4), "se_diff": round(se, 4), "rises": m2 - m1 > 0 and m2 - m1 >= 2 * se}


def each_question_once(preset: dict[str, Any]) -> bool:
    """Whether GRPO sees each of its questions in one step only, one question a step: its reward curve's
    quarters then hold different questions, and `replay_quarter` pairs a question's group with itself
    (with two groups a step, training logs two episodes of the first group only, and a step's reward mixes
    two questions)."""
    return groups_per_step(preset) == 1 and preset["grpo_questions"] >= preset["grpo_steps"]


def quarter_groups(grpo_dir: Path, last: bool = False) -> list[tuple[int, str, float]]:
    """(step, question id, the group's mean total reward) for each step of the first (`last`: the last) quarter
    of GRPO's steps whose question the samples logged; empty for a run of more than one group a step (a step's
    reward then mixes questions)."""
    from mtr.training import read_log

    steps = {e["step"]: e["reward"] for e in read_log(grpo_dir) if "reward" in e and "step" in e}
    asked = {}  # a step's rollout is logged at the global step before its update: log step - 1
    for step, trace in logged_traces(grpo_dir / "samples.jsonl")[0] if (grpo_dir / "samples.jsonl").is_file() else []:
        asked.setdefault(step, set()).add(trace.id.split("#")[0])
    k = len(steps) // 4
    if k == 0 or any(len(q) > 1 for q in asked.values()):
        return []
    chosen = sorted(steps)[-k:] if last else sorted(steps)[:k]
    return [(s, next(iter(asked[s - 1])), steps[s]) for s in chosen if s - 1 in asked]


def replay_quarter(cfg: Any, grpo_dir: Path, data: Path, out: Path, policy: Path | None = None,
                   last: bool = False) -> dict[str, Any] | None:
    """A quarter of GRPO's questions sampled again, each as training sampled it (a group of `num_generations` at
    its temperature, in the same Environment, scored by the same Rubric), and paired with the reward that
    question's group got in training (`replay_reading`): the first quarter's from the trained policy
    (`grpo_dir`), or with `last` the last quarter's from the initial one (`policy`, a checkpoint: the arms
    that start from SFT). With each question seen once (a pool), the curve's quarters hold different questions
    and their difference says nothing of learning; this compares the same questions before and after the steps
    between. The episodes go to `out/episodes.jsonl` (a crash loses none; a re-run samples only the questions
    not yet there)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mtr.backends import BackendPool
    from mtr.checkpoints import load_tokenizer
    from mtr.data import load_qa
    from mtr.env import Environment
    from mtr.jsonl import JsonlAppender
    from mtr.rollout import RolloutAgent
    from mtr.rubric import Rubric

    if last and policy is None:
        raise ValueError("replay_quarter: the last quarter is sampled again from the initial policy: give its "
                         "checkpoint (policy=)")
    groups = quarter_groups(grpo_dir, last)
    if len(groups) < 2:
        return None
    g, t = cfg.grpo, cfg.grpo.trl
    n = t["num_generations"]
    by_id = {ex.id: ex for ex in load_qa(data)}
    done = JsonlAppender(out / "episodes.jsonl", id_key="id")
    try:
        todo = [(s, q) for s, q, _ in groups if q not in done.done]
        if todo:
            source = Path(policy) if last else grpo_dir
            model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
            tok = load_tokenizer(source)
            pool = BackendPool(cfg)
            env = Environment.from_config(cfg, "grpo", pool)
            rubric = Rubric.from_config(g)
            try:
                for step, qid in todo:  # a group at a time, as training rolled them out
                    agent = RolloutAgent.with_model(model, tok, t["temperature"], g.max_turn_tokens,
                                                    t["max_completion_length"], n)
                    # seeds apart from training's; the same world as the question's training step had
                    seeds = [cfg.seed + 10**6 + 1000 * step + i for i in range(n)]
                    traces = asyncio.run(env.rollout_group([by_id[qid]] * n, agent, seeds,
                                                           [f"{qid}#{i}" for i in range(n)],
                                                           worlds=[cfg.seed + 1000 * (step - 1)] * n))
                    done.write({"id": qid, "step": step, "totals": [rubric.score(tr)["total"] for tr in traces]})
            finally:
                env.close()
                asyncio.run(pool.aclose())
    finally:
        done.close()
    return replay_reading(grpo_dir, out, last)


def replay_pairs(grpo_dir: Path, out: Path, last: bool = False) -> list[tuple[float, float]]:
    """(before, after) for each question of a quarter replayed into `out` (`replay_quarter`): the first quarter's
    reward in training and its replay from the trained policy; the last quarter's replay from the initial
    policy and its reward in training."""
    from mtr.jsonl import read_jsonl

    path = out / "episodes.jsonl"
    if not path.is_file():
        return []
    replayed = {r["id"]: statistics.fmean(r["totals"]) for r in read_jsonl(path, latest_by="id")}
    pairs = [(r, replayed[q]) for _, q, r in quarter_groups(grpo_dir, last) if q in replayed]  # (training, replay)
    return [(b, a) for a, b in pairs] if last else pairs


def paired_rise(pairs: list[tuple[float, float]]) -> dict[str, Any] | None:
    """The mean of after minus before over (before, after) pairs, its standard error, and whether it is above
    zero by two of them; None for fewer than two pairs."""
    if len(pairs) < 2:
        return None
    diff, se = mean_se([b - a for a, b in pairs])
    return {"questions": len(pairs), "diff": round(diff, 4), "se": round(se, 4), "rises": diff > 0 and diff >= 2 * se}


def replay_reading(grpo_dir: Path, out: Path, last: bool = False) -> dict[str, Any] | None:
    """A replayed quarter's pairs (`replay_pairs`): the first quarter's as `trained` -> `replayed` (the trained
    policy), the last's as `initial` (the initial policy) -> `trained`; the mean paired rise and its standard
    error (`paired_rise`)."""
    pairs = replay_pairs(grpo_dir, out, last)
    rise = paired_rise(pairs)
    if rise is None:
        return None
    names = ("initial", "trained") if last else ("trained", "replayed")
    return {"questions": rise["questions"], **{k: round(statistics.fmean(p[i] for p in pairs), 4)
                                               for i, k in enumerate(names)},
            **{k: rise[k] for k in ("diff", "se", "rises")}}


# the arms whose reward target is read on both quarters (the method's draws, whose target it is): the last
# quarter's questions sampled again from the initial policy as well, a replay more (about two minutes here).
# With six questions, one quarter's reading left the rise within two standard errors in two seeds of three
# where the mean rose in all three (docs/learning.md, main-pool-3seeds); both quarters' pairs together hold
# twice the questions, each still before and after the same steps between
def replays_both_quarters(arm: str) -> bool:
    return arm == "sft+grpo" or arm in DRAWS


def targets(results: dict[str, Any], preset: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, as the results say."""
    arms, out = results["arms"], {}
    for seed in preset["seeds"]:
        t = f"s{seed}"
        base, sft = arms.get("base", {}).get("live", {}).get("all"), arms.get(f"sft@{t}", {}).get("live", {}).get("all")
        if base and sft:
            out[f"sft_beats_base@{t}"] = {m: sft[m][1] > base[m][2] for m in ("f1", "answered")}
        curve = results["curves"].get(f"sft+grpo@{t}", {})
        if curve.get("quarters") and not each_question_once(preset):  # else quarters of different questions
            out[f"reward_rises@{t}"] = curve["quarters"]["rises"]
        if curve.get("replay"):  # the first quarter's questions again, from the trained policy
            out[f"replayed_reward_rises@{t}"] = curve["replay"]["rises"]
        if curve.get("replay_both"):  # and the last quarter's from the initial policy: twice the questions
            out[f"replayed_both_rises@{t}"] = curve["replay_both"]["rises"]
    return out


def candidate_questions(preset: dict[str, Any]) -> int:
    """How many training questions solvable-first has a GRPO arm's initial policy answer: `grpo_candidates`,
    or every question of GRPO's file (the pool's, else SFT's)."""
    return preset.get("grpo_candidates") or (preset.get("grpo_pool") or preset["train_per_source"]) * len(BENCHMARKS)


# what an estimate records of the preset it estimated: a preset's sizes change, its estimates stay in the file
ESTIMATED_SIZES = ("train_per_source", "grpo_steps", "grpo_questions", "grpo_pool", "eval_limit", "seeds")


def estimate(preset_name: str, measured: dict[str, Any], jobs: dict[str, Any] | None = None,
             also: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """How long a preset would take here, from a finished run's measured steps: SFT seconds a step, each GRPO
    arm's seconds a step, each arm's evaluation seconds a question (the same arm in another seed costs the
    same; an arm never measured costs as the method's GRPO and SFT's evaluation). A GRPO arm's step also
    holds solvable-first's pass, its initial policy's greedy answer to every candidate question: priced as
    that policy's evaluation a question, it is taken out of the measured steps and counted once a GRPO arm
    that answers afresh (those that take the method's answers, `shares_answers`, count none, the pre-check
    ablation's few questions with an invalid call left out; a measured step
    says how many it took, `took_answers`, once a flag; one from before it said so is taken to have answered
    afresh unless a draw). With each question seen once, each GRPO arm's replay of its first quarter (but the
    peer's) is priced at the measured replay's seconds a group, else a GRPO group's, and the method's draws'
    replay of their last quarter at its own measured rate, else the first's. Synthesis and filtering
    (scripted teacher, seconds) are left out. `jobs` ({"jobs": N, "grpo"|"eval": {"slowdown": x}}, from
    benchmarks/results/jobs.json): also how long `--jobs N` takes, each unit's steps slowed by the slowdown
    measured for one process beside the others, the units run in run_jobs's order (`with_jobs`).

    `also`: more runs, searched in their order, which may have run with `--jobs` (the full preset's, whose
    arms a one-process run rarely holds): a step `measured` lacks (an arm it did not run: the TRL peer, slower
    a step than the method), and an evaluation it ran in fewer modes than the preset asks (a simulated episode
    costs more than a live one), are taken from the first that holds it, a step that ran beside another
    divided by the slowdown `jobs` measured for its kind. Without them they are priced as the method's GRPO
    and SFT's live evaluation: short for the peer and the simulated episodes, long for the ablations'
    evaluations. Several, because one CPU's runs seldom hold every arm, and an arm's step is not priced alike
    on two CPUs (the TRL peer's step, alone on the older CPU, took half as long again as the faster machine's)."""
    p, m, also = PRESETS[preset_name], measured, list(also or ())
    if m.get("jobs", 1) > 1:
        raise ValueError(f"its steps ran {m['jobs']} at a time (--jobs), each slowed by the others: not one "
                         "process's seconds to estimate from")
    for i, run in enumerate(also):
        if run.get("jobs", 1) > 1 and not jobs:
            raise ValueError(f"run {i + 2}'s steps ran {run['jobs']} at a time (--jobs): its seconds need the "
                             f"slowdown of one process beside another ({JOBS_RESULTS.name}), and there is none")
    stages, mp = m["stages"], m["preset"]
    first = f"s{mp['seeds'][0]}"
    # a run of some arms only (e.g. --arms base,sft) has no rate for what it did not run
    missing = [k for k in (f"sft-{first}", f"grpo-sft+grpo-{first}", f"eval-sft-{first}") if k not in stages]
    if missing:
        raise ValueError(f"the run measured no {', '.join(missing)} (its steps: {', '.join(stages)}); "
                         f"an estimate needs SFT, the method's GRPO and SFT's evaluation in seed {first[1:]}")
    sft_rate = stages[f"sft-{first}"]["wall_s"] / m["sft_steps"]
    kept_share = m["filter"]["kept"] / m["filter"]["episodes"]
    batch = 4  # an SFT step of 4 traces (base_config: one packed row)
    sft_steps = max(1, math.ceil(p["train_per_source"] * len(BENCHMARKS) * kept_share * p["sft_epochs"] / batch))

    def found(stem: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The step `stem` of each run's first seed, as one process's seconds, with the run it is from: the
        measured run's first, then `also`'s in their order."""
        out = []
        for run in (m, *also):
            step = run["stages"].get(f"{stem}-s{run['preset']['seeds'][0]}")
            if step is not None:
                kind = "eval" if stem.startswith("eval-") else "grpo"
                slowed = jobs[kind]["slowdown"] if run.get("jobs", 1) > 1 else 1.0
                out.append(({**step, "wall_s": step["wall_s"] / slowed}, run))
        return out

    def modes_of(step: dict[str, Any], run: dict[str, Any], arm: str) -> int:
        """How many tool modes an evaluation ran in: by the episodes it holds, else by its run's preset."""
        if step.get("n"):
            return max(1, round(step["n"] / (run["preset"]["eval_limit"] * len(BENCHMARKS))))
        return 2 if arm in run["preset"].get("simulated_eval", ()) else 1  # older runs: live only

    def eval_rate(arm: str, modes: int = 1) -> float:
        """Seconds an episode of the arm's evaluation (else SFT's), from one that ran in as many modes as asked
        where there is one: a simulated episode is not a live one's price."""
        used = arm if found(f"eval-{arm}") else "sft"
        steps = found(f"eval-{used}")
        step, run = next(((s, r) for s, r in steps if modes_of(s, r, used) >= modes), steps[0])
        return step["wall_s"] / (step.get("n") or run["preset"]["eval_limit"] * len(BENCHMARKS) * modes_of(step, run, used))

    def order_of(run: dict[str, Any]) -> str:  # the order a run chose its questions in (before the option: the file's)
        return run.get("config", {}).get("grpo", {}).get("question_order", "file")

    order = base_config(p, p["seeds"][0]).grpo.question_order

    def answer_pass(arm: str, preset: dict[str, Any], question_order: str, taken: float) -> float:
        """Solvable-first's pass over the candidates, but the share `taken` from the method's answers."""
        if question_order != "solvable-first":
            return 0.0
        return eval_rate(ARMS[arm]["init"] or "base") * candidate_questions(preset) * (1.0 - taken)

    def taken_share(took: bool | int, run: dict[str, Any]) -> float:  # `took_answers`: a flag before it was a count
        return float(took) if isinstance(took, bool) else min(1.0, took / max(1, candidate_questions(run["preset"])))

    def grpo_step(arm: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The arm's measured GRPO step (else the method's): the arm it measured, the step, its run."""
        used = arm if found(f"grpo-{arm}") else "sft+grpo"
        return (used, *found(f"grpo-{used}")[0])

    def grpo_rate(arm: str) -> float:  # seconds a group of episodes
        used, step, run = grpo_step(arm)
        took = step.get("took_answers", bool(ARMS[used].get("draw")))
        steps_s = step["wall_s"] - answer_pass(used, run["preset"], order_of(run), taken_share(took, run))
        # a run of two groups a step estimates a preset of one, and the other way round (proportional: the
        # groups of a step roll out in one batch, so it errs long for more groups, short for fewer)
        t = run.get("config", {}).get("grpo", {}).get("trl")
        return max(0.0, steps_s) / (run["preset"]["grpo_steps"] * (trl_groups(t) if t else 1))

    def replay_s(arm: str) -> float:  # a quarter's groups sampled again: the first's, and the last's for some
        if ARMS[arm].get("peer") or not each_question_once(p):
            return 0.0
        rate, total = grpo_rate(arm), 0.0
        for kind in ("replay", "replay-last") if replays_both_quarters(arm) else ("replay",):
            measured_replay = found(f"{kind}-{grpo_step(arm)[0]}")
            if measured_replay:  # else (the last quarter's, unmeasured) at the rate before it
                step, run = measured_replay[0]
                rate = step["wall_s"] / max(1, run["preset"]["grpo_steps"] // 4)
            total += rate * (p["grpo_steps"] // 4)
        return total

    groups = groups_per_step(p)
    parts: dict[str, float] = {"sft": sft_rate * sft_steps * len(p["seeds"]), "grpo": 0.0, "eval": 0.0}
    beside: dict[tuple[str, int], float] = {}  # each unit's seconds beside other units (--jobs)
    for seed in p["seeds"]:
        for arm in arms_in_seed(p, seed):
            grpo_s = 0.0
            if "grpo" in ARMS[arm]:
                grpo_s = (grpo_rate(arm) * p["grpo_steps"] * groups
                          + answer_pass(arm, p, order, float(shares_answers(arm))) + replay_s(arm))
            modes = 2 if simulated_in_seed(p, arm, seed) else 1
            eval_s = eval_rate(arm, modes) * p["eval_limit"] * len(BENCHMARKS) * modes
            parts["grpo"] += grpo_s
            parts["eval"] += eval_s
            if jobs:
                beside[(arm, seed)] = grpo_s * jobs["grpo"]["slowdown"] + eval_s * jobs["eval"]["slowdown"]
    out = {"preset": preset_name, "from": m.get("commit"), "sizes": {k: p.get(k) for k in ESTIMATED_SIZES},
           "sft_steps": sft_steps, **{f"{k}_s": round(v) for k, v in parts.items()},
           "total_s": round(sum(parts.values()))}
    if jobs:  # the units side by side, in run_jobs's order and waits; the shared steps (SFT) before them alone
        # the arms that take the method's answers start once its pass has written them
        early = {u: answer_pass(u[0], p, order, 0.0) * jobs["grpo"]["slowdown"] for u in beside
                 if u[0] == "sft+grpo" and order == "solvable-first"}
        span = units_makespan(units_in_order(p), lambda u: unit_needs(u, p), beside, jobs["jobs"], early)
        out["with_jobs"] = {"jobs": jobs["jobs"], "slowdown": {k: jobs[k]["slowdown"] for k in ("grpo", "eval")},
                            "total_s": round(parts["sft"] + span)}
    return out


# --- docs/learning.md ------------------------------------------------------------------------------------

SECTION = re.compile(r"(<!--learning:(?P<name>[\w-]+)-->\n)(?P<body>.*?)(<!--/learning-->)", re.S)


def fmt_ci(v: list[float], digits: int = 1) -> str:
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def machine_phrase(res: dict[str, Any]) -> str:
    """Where a run ran: the CPU's name, the vector instructions torch's kernels used there (a run recorded
    before 2026-12-06 did not say; CPUs of one name differ in them, and steps' times with them: `quick-zen1`),
    its cores; and whether its decoding computed a few rows' products weight-major (`weight_major`, since
    2026-12-06: the floats' order, and a decoding step's time, differ from torch's own product)."""
    kernels = f", torch's {res['cpu_kernels']} kernels" if res.get("cpu_kernels") else ""
    major = ", decoding's products weight-major (W @ x.T)" if res.get("weight_major") else ""
    return f"{res['cpu']}{kernels}{major}, {res['cores']} cores"


def lora_phrase(lora: dict[str, Any] | None) -> str:
    """GRPO's LoRA adapter, where it trained one (none: every weight)."""
    if not lora:
        return ""
    return f", LoRA rank {lora.get('r', 8)} (alpha {lora.get('lora_alpha', 8)}, dropout {lora.get('lora_dropout', 0.0):g})"


def grpo_questions_phrase(res: dict[str, Any]) -> str:
    """' on N questions, K a step' for a run's GRPO (nothing for runs that did not record their questions)."""
    n, pool = res["preset"].get("grpo_questions"), res["preset"].get("grpo_pool")
    among = f" chosen among the first {pool} training questions of each benchmark" if pool else ""
    return f" on {n} question{'s' if n != 1 else ''}{among}, {trl_groups(res['config']['grpo']['trl'])} a step" if n else ""


def group_phrase(trl: dict[str, Any]) -> str:
    """How many episodes a GRPO group held: runs of 4 and of 8 read alike otherwise (main-g8-*)."""
    return f"a group of {trl['num_generations']} episodes a question"


def stored_seeds_phrase(res: dict[str, Any]) -> str:
    """The seeds a run took from recorded runs (`--seed-scores`), whose machine, date and steps were theirs."""
    taken = res.get("seed_scores") or {}
    if not taken:
        return ""
    return " " + "; ".join(f"Seed {seed} is run `{label}`'s, as recorded (its machine, its steps' times)"
                           for seed, label in taken.items()) + "."


def doc_sections(all_results: dict[str, Any]) -> dict[str, str]:
    """The generated parts of docs/learning.md, one per preset that has results: its arms table, its
    comparisons, its reward curves' quarters and its stages' wall times."""
    sections = {}
    for name, res in all_results.items():
        g = res["config"]["grpo"]  # a run recorded before these options existed ran in the file's order, on EM
        lines = [f"Run `{name}` of {res['date']} (commit {res['commit']}, {machine_phrase(res)}); "
                 f"training: {res['filter']['kept']} SFT traces kept of {res['filter']['episodes']}, "
                 f"{res['sft_steps']} SFT steps, {res['preset']['grpo_steps']} GRPO steps{grpo_questions_phrase(res)} ("
                 f"{group_phrase(g['trl'])}; questions: "
                 f"{g.get('question_order', 'file')} order, answer reward: {g.get('answer_metric', 'em').upper()}, "
                 f"learning rate {g['trl']['learning_rate']:g}{lora_phrase(g.get('lora'))}, sampled at temperature "
                 f"{g['trl'].get('temperature', 1.0):g}); evaluation: {res['preset']['eval_limit']} held-out "
                 f"questions of each of {', '.join(BENCHMARKS)}; "
                 f"policy {res['config']['roles']['policy']['model']} (the embedded model is SmolLM2-135M-Instruct), "
                 "tools live (`search` and `lookup` by the local BM25 retriever, `calculate` computed). "
                 "In % except calls; mean [95 % bootstrap interval]." + stored_seeds_phrase(res), "",
                 "| arm | tools | n | EM | F1 | cover EM | answered | well-formed | calls / ep. |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for arm, modes in res["arms"].items():
            for mode, groups in modes.items():
                a = groups["all"]
                lines.append(f"| {arm} | {mode} | {a['n']} | {fmt_ci(a['em'])} | {fmt_ci(a['f1'])} | "
                             f"{fmt_ci(a['cover_em'])} | {fmt_ci(a['answered'])} | {fmt_ci(a['well_formed'])} | "
                             f"{fmt_ci(a['calls'], 2)} |")
        lines += ["", "Episodes answered, by the calls they made (live tools): " + "; ".join(
            f"{arm}: " + ", ".join(f"{c} call{'s' if c != '1' else ''} {a}/{n}"
                                  for c, (n, a) in m["live"]["all"]["by_calls"].items())
            for arm, m in res["arms"].items() if "by_calls" in m.get("live", {}).get("all", {})) + "."]
        if res["comparisons"]:
            lines += ["", "Paired differences, B minus A, on the same questions (live tools):", "",
                      "| A | B | n | EM | F1 | answered |", "|---|---|---:|---:|---:|---:|"]
            lines += [f"| {c['a']} | {c['b']} | {c['n']} | {fmt_ci(c['em'])} | {fmt_ci(c['f1'])} | "
                      f"{fmt_ci(c['answered'])} |" for c in res["comparisons"]]
        for t, d in res.get("draws", {}).items():
            if t == "all":
                lines += ["", f"Over the seeds ({', '.join(x[1:] for x in d['seeds'])}): {d['gains_above_zero']} of "
                          f"{d['draws']} draws above SFT in F1; each seed's draws' mean on each question, averaged "
                          f"over the seeds, minus SFT's: F1 {fmt_ci(d['mean']['f1'])}, EM {fmt_ci(d['mean']['em'])}, "
                          f"answered {fmt_ci(d['mean']['answered'])}."]
                if d.get("ablations"):
                    lines += ["", "Each arm trained from the SFT policies beside the draws, minus the draws' mean on "
                              "each question over the same seeds: " + "; ".join(
                                  f"{arm} F1 {fmt_ci(r['f1'])}, EM {fmt_ci(r['em'])}" for arm, r in d["ablations"].items())
                              + "."]
                continue
            lines += ["", f"The method drawn {len(d['draws'])} times from seed {t[1:]}'s SFT policy (GRPO seeded anew each "
                      f"time), each draw's gain over SFT: F1 {', '.join(f'{g:+.1f}' for g in d['f1_gains'])} (standard "
                      f"deviation {d['f1_sd']:.1f}), EM {', '.join(f'{g:+.1f}' for g in d['em_gains'])} (standard "
                      f"deviation {d['em_sd']:.1f}); the draws' mean on each question minus SFT: F1 "
                      f"{fmt_ci(d['mean']['f1'])}, EM {fmt_ci(d['mean']['em'])} (an interval over questions: the spread "
                      "of the draws is not in it)."]
            if d.get("ablations"):
                lines[-1] += " Beside them, from the same SFT policy: " + "; ".join(
                    f"{arm} {a['f1_gain']:+.1f} F1 over SFT, above {a['above_draws']} of the {len(d['draws'])} draws, "
                    f"minus the draws' mean {fmt_ci(a['row']['f1'])}" for arm, a in d["ablations"].items()) + "."
        against = res.get("draws_against", {})
        for t, d in ((t, d) for t, d in against.items() if t not in ("work", "run")):
            r = d["row"]
            other = f"run directory `{against['work']}`" if "work" in against else f"run `{against['run']}`"
            lines += ["", f"This run's draws against {other}'s from seed {t[1:]}'s SFT policy "
                      f"(SFT answered {d['same_sft_pct']:.0f} % of the questions alike in both), each set's mean on each "
                      f"question, {r['b']} minus {r['a']}: F1 {fmt_ci(r['f1'])}, EM {fmt_ci(r['em'])}, answered "
                      f"{fmt_ci(r['answered'])} (n {r['n']})."]
        if res.get("sim_vs_live"):
            lines += ["", "The same policy with simulated tools (the ToolActor, grounded in retrieval) minus with live "
                      "ones, on the same questions:", "",
                      "| arm | n | EM | F1 | answered |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {c['a']} | {c['n']} | {fmt_ci(c['em'])} | {fmt_ci(c['f1'])} | {fmt_ci(c['answered'])} |"
                      for c in res["sim_vs_live"]]
        curves = {k: v for k, v in res["curves"].items() if v.get("quarters")}
        if curves:
            lines += ["", "GRPO total reward per step, first and last quarter of the steps (mean ± standard error "
                      "over steps), and the speed of a step (the policy's own tokens, observations not counted):", "",
                      "| run | steps a quarter | first | last | difference | rises by 2 SE | s / step | policy tokens/s |",
                      "|---|---:|---:|---:|---:|---|---:|---:|"]
            for k, v in curves.items():
                q = v["quarters"]
                lines.append(f"| {k} | {q['steps']} | {q['first'][0]:.3f} ± {q['first'][1]:.3f} | "
                             f"{q['last'][0]:.3f} ± {q['last'][1]:.3f} | {q['diff']:+.3f} ± {q['se_diff']:.3f} | "
                             f"{'yes' if q['rises'] else 'no'} | {v.get('seconds_per_step', '')} | "
                             f"{v.get('policy_tokens_per_s', '')} |")
            extra = {"answer_flat_steps": "steps whose answer reward was the same for the whole group",
                     "solvable_questions": "training questions the initial policy answered at least partly right "
                     "(solvable-first)",
                     "padding_pct": "padding a batch padded to its longest episode would hold, %",
                     "update_ms_per_token": "the update's time per scored token (ms; all but the rollout)"}
            for key, words in extra.items():
                got = {k: v[key] if key != "answer_flat_steps" else f"{v[key]} of {len(v['reward'])}"
                       for k, v in curves.items() if v.get(key) is not None}
                if got:
                    lines += ["", f"{words[0].upper()}{words[1:]}: " + ", ".join(f"{k} {x}" for k, x in got.items())
                              + "."]
            replayed = {k: v["replay"] for k, v in curves.items() if v.get("replay")}
            if replayed:
                lines += ["", "The first quarter's questions again, each a group sampled from the trained policy as "
                          "training sampled it, against the reward its group got in training (mean over the "
                          "questions ± standard error of the paired difference): " + "; ".join(
                              f"{k} {r['trained']:.3f} -> {r['replayed']:.3f} on {r['questions']} questions, "
                              f"{r['diff']:+.3f} ± {r['se']:.3f}{', rises by 2 SE' if r['rises'] else ''}"
                              for k, r in replayed.items()) + "."]
            last = {k: v for k, v in curves.items() if v.get("replay_last") or v.get("replay_both")}
            if last:

                def rise(r: dict[str, Any]) -> str:
                    return (f"{r['diff']:+.3f} ± {r['se']:.3f} on {r['questions']} questions"
                            f"{', rises by 2 SE' if r['rises'] else ''}")

                readings = []
                for k, v in last.items():
                    parts = []
                    if r := v.get("replay_last"):
                        parts.append(f"{r['initial']:.3f} -> {r['trained']:.3f}, {rise(r)}")
                    if b := v.get("replay_both"):
                        parts.append(f"both quarters {rise(b)}")
                    readings.append(f"{k} " + ", ".join(parts))
                lines += ["", "The last quarter's questions again, each a group sampled from the initial policy, "
                          "against the reward its group got in training; then both quarters' questions together, "
                          "each after the steps between minus before them (the reward target's reading): "
                          + "; ".join(readings) + "."]
            moved = {k: v["quarter_means"] for k, v in curves.items() if v.get("quarter_means")}
            if moved:
                parts = []
                for k, m in moved.items():
                    items = [f"{c} {a:.2f} -> {b:.2f}" for c, (a, b) in m.items()]
                    if kl := kl_quarters(curves[k]):
                        items.append(f"KL {kl[0]:.4f} -> {kl[1]:.4f}")
                    parts.append(f"{k}: {', '.join(items)}")
                lines += ["", "What moved, first -> last quarter (each component's mean, before its weight; calls "
                          "an episode; KL to the reference policy): " + "; ".join(parts) + "."]
            told = {k: v for k, v in curves.items() if v.get("varied_steps")}
            if told:
                parts = ["{}: {}".format(k, ", ".join(f"{c} {n} ({v['varied_alone_steps'][c]})"
                                                      for c, n in v["varied_steps"].items())) for k, v in told.items()]
                lines += ["", "Steps in which a component told the group's episodes apart (in brackets: it alone): "
                          + "; ".join(parts) + "."]
            logged = {k: {c: b for c, b in v["by_calls"].items() if c.isdigit()}
                      for k, v in curves.items() if v.get("by_calls")}
            if logged:
                parts = ["{}: {}".format(k, ", ".join(
                    f"{c} call{'s' if c != '1' else ''} {b['n']} (answer {b['answer']:.2f}, consistency "
                    f"{b['consistency']:.2f}, total {b['total']:.2f})" for c, b in m.items())) for k, m in logged.items()]
                lines += ["", "Training episodes GRPO logged (two a step), by the calls they made: how many, and their "
                          "mean reward (answer and consistency before their weights; the total with them): "
                          + "; ".join(parts) + "."]
            invalid = {k: v["invalid_calls"] for k, v in curves.items() if v.get("invalid_calls")}
            if invalid:
                lines += ["", "Calls with invalid arguments to an existing tool in the training episodes GRPO logged (what "
                          "the pre-check stops; without it they are played): " + "; ".join(
                              f"{k} {d['invalid']} of {d['calls']}" for k, d in invalid.items()) + "."]
            within = {k: v["by_calls"]["more_calls"] for k, v in curves.items()
                      if v.get("by_calls", {}).get("more_calls")}
            if within:
                parts = [f"{k}: {d['n']} groups, answer {d['answer']:+.2f}, consistency {d['consistency']:+.2f}, "
                         f"efficiency {d['efficiency']:+.2f}, total {d['total']:+.2f}" for k, d in within.items()]
                lines += ["", "Within a group (one question, one step) whose two logged episodes made different numbers of "
                          "calls, the one with more minus the one with fewer (what GRPO's advantage compares): "
                          + "; ".join(parts) + "."]
            lines += passages_lines(curves)
            lines += questions_lines(curves)
            lines += ["", f"![reward curves](img/learning-{name}.png)"]
        lines += ["", "Wall time of each step (s): " + ", ".join(f"{k} {v['wall_s']:.0f}" for k, v in res["stages"].items())
                  + f"; in all {sum(v['wall_s'] for v in res['stages'].values()) / 60:.0f} min."]
        sections[name] = "\n".join(lines) + "\n"
    return sections


def quarter_means(values: list[float | None]) -> tuple[float, float] | None:
    """The mean over the first and the last quarter of a run's steps; None under four steps or where a step
    was logged without the value."""
    k = len(values) // 4
    if not k or None in values:
        return None
    return statistics.fmean(values[:k]), statistics.fmean(values[-k:])


def kl_quarters(curve: dict[str, Any]) -> tuple[float, float] | None:
    """The mean KL to the reference policy over the first and the last quarter of GRPO's steps: how far each
    part of the run had moved the policy (a LoRA adapter moves it less at a given reward)."""
    return quarter_means(curve.get("kl") or [])


def passages_lines(curves: dict[str, Any]) -> list[str]:
    """The docs' line on what the tools showed each GRPO run in training (`observed_passages`); none for runs
    recorded before it was measured (the gold-answer shares for runs measured before those were)."""
    shown = {k: v["passages"] for k, v in curves.items() if v.get("passages")}
    if not shown:
        return []

    def player(who: str, p: dict[str, Any]) -> str:
        text = f"{who} {p['passages']} passages"
        if p.get("median_chars") is not None:
            text += (f", median {p['median_chars']:.0f} characters, "
                     f"{p['title_only_pct']:.0f} % no longer than their title")
        if p.get("answer_pct") is not None:
            text += f", a gold answer in {p['answer_pct']:.0f} % of {p['answer_observations']} observations"
        if p.get("live_answer_pct") is not None:
            text += f" (the retriever, asked the same calls: {p['live_answer_pct']:.0f} %)"
        return text

    parts = ["{}: {}".format(k, ", ".join(player(who, p) for who, p in m.items())) for k, m in shown.items()]
    return ["", "Passages the tools returned in the training episodes GRPO logged, by who played the tools "
            "(live: the retriever; simulated: the ToolActor), and how often an observation held a gold answer "
            "(of questions whose answer is not yes, no or in the question): " + "; ".join(parts) + "."]


def questions_lines(curves: dict[str, Any]) -> list[str]:
    """The docs' line on which questions each GRPO arm trained on, against the method's in the same seed (an
    arm that trained on others differs from it by more than its setting); none without the method's ids."""
    parts = []
    for name, curve in curves.items():
        arm, _, tag = name.partition("@")
        method = curves.get(f"sft+grpo@{tag}", {}).get("question_ids")
        if arm != "sft+grpo" and method and curve.get("question_ids"):
            shared = len(set(curve["question_ids"]) & set(method))
            parts.append(f"{name} {shared} of its {len(curve['question_ids'])}")
    if not parts:
        return []
    return ["", "Training questions shared with the method's GRPO run in the same seed (the logged episodes' "
            "questions): " + "; ".join(parts) + "."]


def plot_digest(res: dict[str, Any]) -> str:
    """What a run's plot is drawn from: its curves, the code that draws them and matplotlib's version."""
    import hashlib
    import inspect

    import matplotlib

    what = [res["curves"], inspect.getsource(plot_curves), matplotlib.__version__]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def plot_curves(name: str, res: dict[str, Any], out: Path) -> bool:
    """The run's reward curves (each component, and the calls where logged) to `out`; False, nothing drawn,
    where `out` already holds them: the PNG keeps the digest of what it was drawn from, and redrawing
    every run's plot made `--docs` a minute of matplotlib."""
    digest = plot_digest(res)
    if out.is_file():
        from PIL import Image

        with Image.open(out) as img:
            if img.info.get("mtr-digest") == digest:
                return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = res["curves"]
    panels = ("reward", *COMPONENTS) + (("calls",) if all(c.get("calls") for c in curves.values()) else ())
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3), constrained_layout=True)
    for run, c in curves.items():
        for ax, key in zip(axes, panels):
            ys = [y for y in c[key] if y is not None]
            line, = ax.plot(range(1, len(ys) + 1), ys, marker=".", label=run)
            if key == "reward" and None not in c["reward_std"]:  # the step's standard error over its episodes
                se = [sd / math.sqrt(c["rollouts"]) for sd in c["reward_std"]]
                ax.fill_between(range(1, len(ys) + 1), [y - e for y, e in zip(ys, se)],
                                [y + e for y, e in zip(ys, se)], color=line.get_color(), alpha=0.15)
            titles = {"reward": "total reward (± s.e. of the step)", "calls": "tool calls an episode"}
            ax.set_title(titles.get(key, key))
            ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, metadata={"mtr-digest": digest})
    plt.close(fig)
    return True


def update_doc(doc: Path = DOC, results_file: Path = RESULTS, plots: bool = True) -> str:
    """docs/learning.md with its generated sections rewritten from the results file."""
    all_results = json.loads(results_file.read_text())
    sections = doc_sections(all_results)
    text = doc.read_text()

    def body(m: re.Match) -> str:
        return m.group(1) + sections.get(m.group("name"), "(no results yet)\n") + m.group(4)

    new = SECTION.sub(body, text)
    if plots:
        for name, res in all_results.items():
            if any(v.get("quarters") for v in res["curves"].values()):
                plot_curves(name, res, doc.parent / "img" / f"learning-{name}.png")
    return new


def main() -> None:
    # no abbreviations: a unit's command line is the run's less --jobs, which an abbreviation would slip past
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=list(PRESETS), default="full",
                       help="quick: every step once, small (under 20 minutes here); main: the main comparison, one "
                       "seed (over an hour here: docs/learning.md); full: every arm, two seeds")
    which.add_argument("--quick", action="store_true", help="the same as --preset quick")
    ap.add_argument("--work", type=Path, help="where the steps run (default runs/bench-learning/<preset>)")
    ap.add_argument("--arms", help=f"comma-separated arms instead of the preset's (base and sft always run): "
                    f"{', '.join(ARMS)}")
    ap.add_argument("--seeds", help="comma-separated seeds for the main comparison instead of the preset's")
    ap.add_argument("--seed-work", action="append", default=[], metavar="SEED=DIR",
                    help="run seed SEED's own steps (SFT, GRPO, evaluation) in DIR instead of --work, e.g. to bring "
                    "seeds run apart into one run's comparisons over seeds (repeatable)")
    ap.add_argument("--seed-scores", action="append", default=[], metavar="SEED=RUN",
                    help="take seed SEED's arms from run RUN of the results (its recorded figures and stored scores, "
                    "the same experiment) into this run's comparisons over seeds instead of running them: a seed "
                    "run on another machine, its work directory gone (repeatable; not the run's first seed)")
    ap.add_argument("--every-seed", action="store_true",
                    help="run the ablation arms and the simulated evaluations in every seed too, not only in the "
                    "first (each arm is then also compared with the method on each question's mean over the seeds)")
    ap.add_argument("--grpo", action="append", default=[], metavar="KEY=VALUE",
                    help="a GRPO setting of every GRPO arm instead of the configuration's, e.g. "
                    "question_order=solvable-first, answer_metric=f1, trl.learning_rate=1e-5 (repeatable)")
    ap.add_argument("--eval-limit", type=int, metavar="N",
                    help="evaluate on the first N held-out questions of each benchmark instead of the preset's "
                    "(evaluations of fewer are extended)")
    ap.add_argument("--grpo-questions", type=int, metavar="N",
                    help="train each GRPO arm on N questions instead of the preset's (with solvable-first, the first "
                    "N the SFT policy answers at least partly right, then the others)")
    ap.add_argument("--grpo-pool", type=int, metavar="N",
                    help="let GRPO choose its questions among the first N training questions of each benchmark "
                    "(SFT's first, then questions SFT never saw) instead of SFT's own")
    ap.add_argument("--draws-against", metavar="DIR|RUN",
                    help="set this run's draws of the method against those of the run whose work directory is DIR, "
                    "or of run RUN of the results, from its stored scores (the same SFT policy at other settings): "
                    "the two sets' mean on each question, paired")
    ap.add_argument("--simulated-eval", metavar="ARMS",
                    help="comma-separated arms to evaluate with simulated tools too (the ToolActor, grounded in "
                    "retrieval), beside live ones, in the first seed (with --every-seed, in all), instead of the "
                    "preset's (full: sft, sft+grpo); a finished live evaluation is extended, not redone")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run N arms at once, each in a process of its own with the cores shared out (default 1; "
                    "2 on 2 cores did 1.4-1.5 times the work: docs/performance.md); their output in WORK/jobs/")
    ap.add_argument("--unit", help=argparse.SUPPRESS)  # ARM@SEED: one unit of --jobs, run by run_jobs
    ap.add_argument("--label", help="the results' name in learning.json and docs/learning.md (default: the preset's)")
    ap.add_argument("--merge", type=Path, metavar="FILE",
                    help="only copy the run --label from the results file FILE (a worktree's: a long run there "
                    "leaves this checkout free to edit) into this one, and rewrite docs/learning.md")
    ap.add_argument("--docs", action="store_true", help="only rewrite docs/learning.md from the results file")
    ap.add_argument("--estimate", metavar="RUN",
                    help="only estimate how long the main and full presets take here from the finished run RUN of "
                    "the results file (its measured steps), and keep the estimates with that run")
    ap.add_argument("--estimate-also", metavar="RUN[,RUN...]",
                    help="with --estimate: take the steps its run lacks (arms it did not run, evaluations in fewer "
                    "tool modes) from the first of these finished runs that holds them, which may have run with "
                    "--jobs (then divided by the slowdown benchmarks/results/jobs.json measured)")
    ap.add_argument("--rescore", metavar="RUN",
                    help="only score the logged training episodes of run RUN's GRPO arms by the calls they made "
                    "(by_calls) from its work directories (--work, --seed-work), with its recorded settings, and "
                    "rewrite docs/learning.md: for a run merged from elsewhere or recorded before by_calls existed")
    args = ap.parse_args()
    if args.rescore:
        if not args.work:
            raise SystemExit("--rescore: say where the run's steps are with --work (and --seed-work SEED=DIR)")
        done = rescore_run(args.rescore, work_dir(args.work, ""), args.seed_work)
        print(f"{args.rescore}: scored the logged episodes of {', '.join(done) or 'no GRPO arm'}; wrote {DOC}")
        return
    if args.estimate:
        all_results = json.loads(RESULTS.read_text())
        also_names = [r for r in (args.estimate_also or "").split(",") if r]
        for flag, run in (("--estimate", args.estimate), *(("--estimate-also", r) for r in also_names)):
            if run not in all_results:
                raise SystemExit(f"{flag}: no run {run!r} in {RESULTS}; runs: {', '.join(all_results)}")
        also = [all_results[r] for r in also_names]
        jobs = None
        if JOBS_RESULTS.is_file():  # bench_jobs.py's figures: --jobs priced too
            j = json.loads(JOBS_RESULTS.read_text())
            jobs = {"jobs": j["jobs"], **j["parts"]}
        for name in ("main", "full"):  # the presets a user runs whole (quick's GRPO is too small to time by)
            try:
                est = estimate(name, all_results[args.estimate], jobs, also)
            except ValueError as e:
                raise SystemExit(f"--estimate {args.estimate}: {e}") from None
            if also:
                est["also"] = ",".join(also_names)
            all_results[args.estimate].setdefault("estimates", {})[name] = est
            print(f"the {name} preset here, from run {args.estimate}"
                  + (f" and {', '.join(also_names)}" if also else "") + ": "
                  f"{est['total_s'] / 3600:.1f} h (SFT "
                  f"{est['sft_s'] / 3600:.1f} h, GRPO {est['grpo_s'] / 3600:.1f} h, evaluation {est['eval_s'] / 3600:.1f} h)"
                  + (f"; with --jobs {est['with_jobs']['jobs']}: {est['with_jobs']['total_s'] / 3600:.1f} h"
                     if "with_jobs" in est else ""))
        RESULTS.write_text(json.dumps(all_results, indent=2) + "\n")
        return
    if args.merge:
        merge_run(args.merge, args.label)
        print(f"merged {args.label} from {args.merge} into {RESULTS}; wrote {DOC}")
        return
    if args.docs:
        DOC.write_text(update_doc())
        print(f"wrote {DOC}")
        return
    import os
    import sys

    from mtr.jsonl import write_text_atomic
    from mtr.rundir import git_commit

    name = "quick" if args.quick else args.preset
    work = work_dir(args.work, name)
    t0 = time.perf_counter()
    arms = args.arms.split(",") if args.arms else None
    unknown = sorted(set(arms or []) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {unknown}; arms are {', '.join(ARMS)}")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise SystemExit(f"--eval-limit {args.eval_limit}: expected a number of questions, at least 1")
    simulated = [a for a in args.simulated_eval.split(",") if a] if args.simulated_eval is not None else None
    unknown = sorted(set(simulated or []) - set(ARMS))
    if unknown:
        raise SystemExit(f"--simulated-eval: unknown arm(s) {unknown}; arms are {', '.join(ARMS)}")
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    against: Path | str | None = None
    if args.draws_against:  # a work directory, else a run whose scores are stored
        against = work_dir(Path(args.draws_against), "") if Path(args.draws_against).is_dir() else args.draws_against
        if isinstance(against, str):  # read now, not after the run's hours of steps
            if not scores_file(against).is_file():
                raise SystemExit(f"--draws-against {args.draws_against}: neither a work directory of this benchmark "
                                 f"nor a run with stored scores (no {scores_file(against)})")
            try:
                evals_stored(against)
            except ValueError as e:
                raise SystemExit(f"--draws-against {args.draws_against}: {e}") from None
    for flag, value in (("--grpo-questions", args.grpo_questions), ("--grpo-pool", args.grpo_pool)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag} {value}: expected a number of questions, at least 1")
    if args.grpo_pool is not None and args.grpo_pool < PRESETS[name]["train_per_source"]:
        raise SystemExit(f"--grpo-pool {args.grpo_pool}: a pool holds SFT's {PRESETS[name]['train_per_source']} "
                         f"training questions of each benchmark and more; give at least that")
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: expected a number of processes, at least 1")
    grpo = parse_grpo_overrides(args.grpo)
    seed_scores = parse_seed_scores(args.seed_scores, seeds or PRESETS[name]["seeds"], args.seed_work)
    seed_dirs = parse_seed_work(args.seed_work, seeds or PRESETS[name]["seeds"])
    preset = preset_settings(name, arms, seeds, grpo, args.eval_limit, args.every_seed, simulated,
                             args.grpo_questions, args.grpo_pool)
    for seed, label in seed_scores.items():  # checked now, not after the run's hours of steps
        stored_seed(label, seed, preset)

    def run(only: set[tuple[str, int]] | None = None) -> dict[str, Any]:
        try:
            return run_arms(name, work, arms, seeds, grpo, args.eval_limit, args.every_seed, seed_dirs, simulated,
                            args.grpo_questions, args.grpo_pool, against, only, seed_scores)
        except WouldDelete as e:
            raise SystemExit(str(e)) from None

    if args.unit:  # one unit of a parent's --jobs: its steps only, no results
        arm, _, seed = args.unit.partition("@")
        run({(arm, int(seed))})
        return
    if args.jobs > 1:  # the shared steps here, the units in processes of their own, then the results below
        run(set())
        # the stored seeds run nowhere: their units are not started
        run_jobs({**preset, "seeds": [s for s in preset["seeds"] if s not in seed_scores]}, work, args.jobs,
                 without_jobs(sys.argv[1:]), seed_dirs)
    res = run()
    res.update(date=time.strftime("%Y-%m-%d"), commit=(git_commit() or "?")[:7], cpu=cpu_name(),
               cpu_kernels=cpu_kernels(), weight_major=weight_major_pays(), cores=os.cpu_count(), jobs=args.jobs,
               wall_s=round(time.perf_counter() - t0, 1))
    all_results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    label = args.label or name
    SCORES.mkdir(parents=True, exist_ok=True)
    write_text_atomic(scores_file(label), json.dumps(res.pop("question_scores"), separators=(",", ":")) + "\n")
    all_results[label] = res
    RESULTS.write_text(json.dumps(all_results, indent=2) + "\n")
    DOC.write_text(update_doc())
    console.print(doc_sections({label: res})[label], highlight=False)
    console.print(f"results: {RESULTS}; docs: {DOC}", highlight=False)


def without_jobs(argv: list[str]) -> list[str]:
    """A command line less its --jobs (a unit's process runs its own steps only)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--jobs":
            skip = True
        elif not a.startswith("--jobs="):
            out.append(a)
    return out


def work_dir(given: Path | None, preset_name: str) -> Path:
    """The steps' directory, absolute: `runs/x` and `/repo/runs/x` name the same steps in the paths a step's
    identity records (when they were compared whole, a relative one made every step start afresh)."""
    return Path(given or ROOT / "runs" / "bench-learning" / preset_name).resolve()


def merge_run(source: Path, label: str | None, results_file: Path = RESULTS, doc: Path = DOC) -> None:
    """Copy run `label` of the results file `source` into `results_file` (kept beside the other runs, or
    replacing the run of that name) and rewrite `doc` from it."""
    from mtr.jsonl import write_text_atomic

    if not label:
        raise SystemExit("--merge: say which run to copy with --label")
    try:
        theirs = json.loads(Path(source).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"--merge {source}: not a readable results file ({e})") from None
    if label not in theirs:
        raise SystemExit(f"--merge {source}: no run {label!r}; runs: {', '.join(theirs) or 'none'}")
    ours = json.loads(results_file.read_text()) if results_file.is_file() else {}
    ours[label] = theirs[label]
    scores, ours_dir = scores_file(label, Path(source).parent / SCORES.name), results_file.parent / SCORES.name
    if scores.is_file():  # beside the source's results, as beside RESULTS
        ours_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(scores_file(label, ours_dir), scores.read_text())
    write_text_atomic(results_file, json.dumps(ours, indent=2) + "\n")
    write_text_atomic(doc, update_doc(doc, results_file))


def rescore_run(label: str, work: Path, seed_work: list[str] | None = None,
                results_file: Path = RESULTS, doc: Path = DOC) -> list[str]:
    """Score the logged training episodes of run `label`'s GRPO arms by the calls they made (`by_calls`; also
    the passages they read and their calls with invalid arguments),
    from the work directories it ran in (`work`, and `--seed-work SEED=DIR` items for the run's own seeds),
    with the rubric of its own recorded settings: for a run whose results came from code before `by_calls`
    existed, or merged from a machine that kept its work directories. Returns the curves filled in; a curve
    whose arm left no `samples.jsonl` there is refused in one line, nothing written."""
    from mtr.config import GRPOStageConfig, RetrieverConfig
    from mtr.jsonl import write_text_atomic
    from mtr.rubric import Rubric
    from mtr.training import read_log

    all_results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if label not in all_results:
        raise SystemExit(f"--rescore: no run {label!r} in {results_file}; runs: {', '.join(all_results) or 'none'}")
    res = all_results[label]
    seed_dirs = parse_seed_work(seed_work or [], res.get("preset", {}).get("seeds") or [])
    try:
        settings = GRPOStageConfig.model_validate(res["config"]["grpo"])
        retriever = RetrieverConfig.model_validate(res["config"]["retriever"])
    except (KeyError, ValueError) as e:
        raise SystemExit(f"--rescore {label}: its recorded config.grpo or config.retriever is not one this mtr "
                         f"reads ({type(e).__name__}: {str(e).splitlines()[0]})") from None

    found: dict[str, Path] = {}
    stored_seeds = {int(seed) for seed in res.get("seed_scores", {})}
    for name, curve in res["curves"].items():
        arm, _, tag = name.partition("@")
        if ARMS.get(arm, {}).get("peer") or int(tag[1:] or -1) in stored_seeds:
            continue  # TRL's own loop logs no episodes; a stored seed's were scored by the run that ran it
        gdir = seed_dirs.get(int(tag[1:]), work) / f"grpo-{arm}-{tag}"
        if not (gdir / "samples.jsonl").is_file():
            raise SystemExit(f"--rescore {label}: curve {name} has no logged episodes at {gdir / 'samples.jsonl'} "
                             f"(give the seed's work directory with --work / --seed-work)")
        # runs of a preset share a work directory by default: a later run's GRPO there replaced this one's
        if [e["reward"] for e in read_log(gdir) if "reward" in e] != curve.get("reward"):
            raise SystemExit(f"--rescore {label}: the GRPO run in {gdir} is not the one of curve {name} "
                             f"(its logged rewards differ from the run's)")
        found[name] = gdir / "samples.jsonl"
    for name, samples in found.items():
        arm = name.partition("@")[0]
        # the arm's own settings, as run_arms gave them (none of the arms changes the rubric today)
        arm_settings = settings.model_copy(update=ARMS.get(arm, {}).get("grpo", {}))
        res["curves"][name]["by_calls"] = episodes_by_calls(samples, Rubric.from_config(arm_settings))
        res["curves"][name]["passages"] = observed_passages(samples, replay_players(arm_settings, retriever))
        res["curves"][name]["question_ids"] = trained_questions(samples)
        res["curves"][name]["invalid_calls"] = invalid_calls(samples)
    write_text_atomic(results_file, json.dumps(all_results, indent=2) + "\n")
    write_text_atomic(doc, update_doc(doc, results_file))
    return list(found)


def parse_seed_scores(items: list[str], seeds: list[int], seed_work: list[str]) -> dict[int, str]:
    """`--seed-scores SEED=RUN` items as {seed: run}: a seed of the run's, not its first (which runs the base
    model and the ablations here), not also given a work directory, taken from a run whose scores are stored."""
    out: dict[int, str] = {}
    worked = {item.partition("=")[0].strip() for item in seed_work}
    for item in items:
        seed, sep, label = item.partition("=")
        if not sep or not label or not seed.strip().lstrip("-").isdigit():
            raise SystemExit(f"--seed-scores {item!r}: expected SEED=RUN, e.g. 1=full-pool-peer-2seeds")
        n = int(seed)
        if n not in seeds or n == seeds[0]:
            raise SystemExit(f"--seed-scores {item!r}: seed {n} is not one of the run's seeds after its first "
                             f"({','.join(map(str, seeds))}); the first runs here")
        if seed.strip() in worked:
            raise SystemExit(f"--seed-scores {item!r}: seed {n} is also given a work directory (--seed-work)")
        if not scores_file(label).is_file():
            raise SystemExit(f"--seed-scores {item!r}: run {label} has no stored scores ({scores_file(label)})")
        out[n] = label
    return out


def parse_seed_work(items: list[str], seeds: list[int]) -> dict[int, Path]:
    """`--seed-work SEED=DIR` items as {seed: absolute directory}; a seed the run does not run is refused."""
    out: dict[int, Path] = {}
    for item in items:
        seed, sep, d = item.partition("=")
        if not sep or not d or not seed.strip().lstrip("-").isdigit():
            raise SystemExit(f"--seed-work {item!r}: expected SEED=DIR, e.g. 1=runs/bench-learning/main-s1")
        n = int(seed)
        if n not in seeds:
            raise SystemExit(f"--seed-work {item!r}: seed {n} is not one of the run's seeds "
                             f"({','.join(map(str, seeds))})")
        out[n] = work_dir(Path(d), "")  # resolved as --work is
    return out


def parse_grpo_overrides(items: list[str]) -> dict[str, Any]:
    """`--grpo KEY=VALUE` items as a mapping, values read as JSON, else YAML (numbers, booleans, strings);
    mtr's own settings checked as the configuration checks them (TRL's, when GRPO starts)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--grpo {item!r}: expected KEY=VALUE, e.g. answer_metric=f1")
        try:
            out[key] = json.loads(value)  # numbers as JSON reads them (YAML reads 1e-5 as a string)
        except json.JSONDecodeError:
            out[key] = yaml.safe_load(value)
    steps = out.get("trl.max_steps")  # the run's own step count (TRL would check it only once GRPO starts)
    if steps is not None and (type(steps) is not int or steps < 1):
        raise SystemExit(f"--grpo trl.max_steps={steps!r}: expected a whole number of steps, at least 1")
    try:
        base_config({**PRESETS["quick"], "grpo": out}, 0)
    except ValueError as e:  # the configuration's own one-line error
        raise SystemExit(f"--grpo: {e}") from None
    return out


def weight_major_pays() -> bool:
    """Whether this process's decoding computes a few rows' products weight-major (`kvcache.WEIGHT_MAJOR`)."""
    from mtr.backends.kvcache import weight_major_used

    return weight_major_used()


def cpu_kernels() -> str:
    """The vector instructions torch's CPU kernels use here (AVX2, AVX512, ...): what sets a step's time
    among machines whose CPUs share a name."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_name() -> str:
    from mtr.llamacpp_build import cpu_info

    return cpu_info()[0] or platform.machine()


if __name__ == "__main__":
    main()
