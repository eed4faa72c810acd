"""Which GRPO settings make the embedded 135M policy's reward rise on this CPU? (docs/learning.md, *Settings tried*)

    .venv/bin/python benchmarks/grpo_settings.py --init runs/bench-learning/quick/sft-s0 lr3e-5-q4
    .venv/bin/python benchmarks/grpo_settings.py --list

Each named setting runs GRPO from the same SFT checkpoint on the learning benchmark's training questions
(`bench_learning.training_file`), with live tools, and records its reward curve: per step the total and each
component, KL, and the first and last quarters' means with their standard errors. A setting with
`questions` trains on that many questions for several epochs, one quarter of the steps an epoch, so that the
first and last quarters hold the same questions and their difference is the policy's, not the questions'
(each question's first and last visit are also compared, paired). Results: benchmarks/results/grpo_settings.json,
one entry per setting; a finished setting is skipped (delete its directory under --work to run it again).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import PRESETS, ROOT, base_config, reward_curve, run_step, training_file  # noqa: E402


RESULTS = ROOT / "benchmarks" / "results" / "grpo_settings.json"

# name -> what differs from the learning benchmark's GRPO before these trials (group of 4, beta 0.04,
# temperature 1.0, a new question every step); the learning rate is always named, since the default moved
TRIAL_BASE = {"question_order": "file", "answer_metric": "em"}
SETTINGS: dict[str, dict[str, Any]] = {
    "lr1e-5": {"steps": 16, "trl": {"learning_rate": 1e-5}},
    "lr1e-5-q4": {"steps": 16, "questions": 4, "trl": {"learning_rate": 1e-5}},
    "lr3e-5-q4": {"steps": 16, "questions": 4, "trl": {"learning_rate": 3e-5}},
    "lr1e-4-q4": {"steps": 16, "questions": 4, "trl": {"learning_rate": 1e-4}},
    "lr3e-5-q4-g8": {"steps": 16, "questions": 4, "trl": {"learning_rate": 3e-5, "num_generations": 8,
                                                          "gradient_accumulation_steps": 8}},
    "lr3e-5-q4-t07": {"steps": 16, "questions": 4, "trl": {"learning_rate": 3e-5, "temperature": 0.7}},
    # the answer reward as token F1 instead of EM: partial credit, so that a group's answers can differ in
    # correctness where none of them is exactly right
    "lr3e-5-q4-f1": {"steps": 16, "questions": 4, "trl": {"learning_rate": 3e-5}, "grpo": {"answer_metric": "f1"}},
    # questions the SFT policy answers at least partly right (greedy, live tools, token F1 > 0): the ones on
    # which a group's sampled answers can differ in correctness, so that the answer reward has something to say
    "lr3e-5-q4-solvable": {"steps": 16, "questions": 4, "trl": {"learning_rate": 3e-5},
                           "grpo": {"question_order": "solvable-first"}},
}


def paired_visits(reward: list[float], questions: list[str]) -> dict[str, Any] | None:
    """Each question's reward at its first visit against its last: mean difference and its standard error."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r, q in zip(reward, questions):
        first.setdefault(q, r)
        last[q] = r
    diffs = [last[q] - first[q] for q in first]
    if len(diffs) < 2:
        return None
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"questions": len(diffs), "diff": round(statistics.fmean(diffs), 4), "se": round(se, 4)}


def trial_config(spec: dict[str, Any]) -> Any:
    """The learning benchmark's configuration with a trial's settings."""
    cfg = base_config(dict(PRESETS["quick"], grpo_steps=spec["steps"]), 0)
    cfg.grpo.trl.update(spec.get("trl", {}))
    # the group shape checked again, other GRPO settings applied to the order and reward these trials started
    # from (the learning benchmark has since taken both: a trial's name keeps meaning what it measured)
    cfg.grpo = cfg.grpo.model_validate({**cfg.grpo.model_dump(), **TRIAL_BASE, **spec.get("grpo", {})})
    return cfg


def run_setting(name: str, init: Path, work: Path, stopped: bool = False) -> dict[str, Any]:
    """Run a setting (skipped when it finished) and summarise it; with `stopped`, only summarise the steps of
    a run that was stopped by hand (a collapse seen in its log needs no more steps to be recorded)."""
    from mtr.stages.grpo import train_grpo
    from mtr.training import read_log

    spec = SETTINGS[name]
    cfg = trial_config(spec)
    train = training_file(work, PRESETS["quick"]["train_per_source"])
    d = work / name
    identity = {"init": str(init), "grpo": cfg.grpo.model_dump(mode="json"), "questions": spec.get("questions")}
    if stopped:
        done = {"wall_s": sum(e.get("step_time", 0.0) for e in read_log(d) if "reward" in e)}
    else:
        done = run_step(d, identity, lambda fresh: {"steps": train_grpo(
            cfg, train, init, d, limit=spec.get("questions"), resume=not fresh, overwrite=fresh).get("steps")})
    t = cfg.grpo.trl
    curve = reward_curve(d, t["per_device_train_batch_size"] * t["gradient_accumulation_steps"])
    samples = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines() if x.strip()]
    by_step: dict[int, str] = {}
    for s in samples:
        by_step.setdefault(s["step"], s["trace"]["question"])
    questions = [by_step.get(i) for i in range(len(curve["reward"]))]
    selection = ({"candidates": sum(1 for x in train.read_text().splitlines() if x.strip()),
                  "solvable": curve["solvable_questions"]} if "solvable_questions" in curve else None)
    out = {"setting": spec, "init": str(init), "wall_s": round(done["wall_s"], 1), "curve": curve,
           "selection": selection, "date": time.strftime("%Y-%m-%d"), "steps_run": len(curve["reward"]),
           "stopped_by_hand": stopped}
    if curve["quarter_means"]:  # which components moved the total, the calls an episode, the answered share
        out["quarter_means"] = curve["quarter_means"]
    out["calls"] = curve["calls"]
    out["kl_max"] = round(max((x or 0.0) for x in curve["kl"]), 4) if curve["kl"] else None
    if spec.get("questions") and None not in questions:
        out["paired"] = paired_visits(curve["reward"], questions)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="*", help=f"settings to run: {', '.join(SETTINGS)}")
    ap.add_argument("--init", type=Path, default=ROOT / "runs" / "bench-learning" / "quick" / "sft-s0",
                    help="the SFT checkpoint GRPO starts from")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "grpo-settings")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--stopped", action="store_true", help="record the steps of runs stopped by hand, run nothing")
    args = ap.parse_args()
    if args.list or not args.settings:
        for k, v in SETTINGS.items():
            print(f"{k:18} {json.dumps(v)}")
        return
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; --list shows them")
    from mtr.rundir import git_commit

    for name in args.settings:
        res = run_setting(name, args.init, args.work, stopped=args.stopped)
        res["commit"] = (git_commit() or "?")[:7]
        all_results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        all_results[name] = res
        RESULTS.write_text(json.dumps(all_results, indent=2) + "\n")
        q, c = res["curve"]["quarters"], res["curve"]
        q = q or {"first": None, "last": None, "diff": math.nan, "se_diff": math.nan, "rises": None}
        print(f"{name}: first {q['first']} last {q['last']} diff {q['diff']:+.3f} ± {q['se_diff']:.3f} "
              f"rises={q['rises']} paired={res.get('paired')} kl_max={max(x or 0 for x in c['kl']):.4f} "
              f"{c.get('seconds_per_step')} s/step", flush=True)


if __name__ == "__main__":
    main()
