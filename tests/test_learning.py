"""The learning benchmark's statistics and bookkeeping (benchmarks/bench_learning.py, mtr.metrics): the
intervals, the reward curve's quarters, the step runner's skip/resume/afresh, the generated docs."""

import json
import math
import statistics
import sys
from functools import partial
from pathlib import Path

import pytest

from mtr.metrics import bootstrap_ci, paired_bootstrap_diff

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_learning as bl  # noqa: E402


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_questions():
    few = [1.0, 0.0] * 10
    many = [1.0, 0.0] * 500
    m, lo, hi = bootstrap_ci(few)
    assert m == 0.5 and lo < 0.5 < hi
    m2, lo2, hi2 = bootstrap_ci(many)
    assert m2 == 0.5 and (hi2 - lo2) < (hi - lo) / 3
    assert bootstrap_ci([3.0] * 7) == (3.0, 3.0, 3.0)
    assert bootstrap_ci(few, seed=1) == bootstrap_ci(few, seed=1)  # reproducible
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_paired_difference_uses_only_shared_questions_and_keeps_the_sign():
    a = {f"q{i}": 0.0 for i in range(40)}
    b = {f"q{i}": 1.0 if i % 2 else 0.0 for i in range(40)} | {"extra": 100.0}
    d, lo, hi, n = paired_bootstrap_diff(a, b)
    assert n == 40 and d == 0.5 and 0 < lo < d < hi
    d, lo, hi, _ = paired_bootstrap_diff(b, a)
    assert d == -0.5 and hi < 0
    with pytest.raises(ValueError):
        paired_bootstrap_diff({"x": 1.0}, {"y": 1.0})


def test_quarters_say_whether_the_reward_rose_by_two_standard_errors():
    rising = [0.1, 0.12, 0.09, 0.11, 0.2, 0.3, 0.4, 0.5, 0.52, 0.49, 0.51, 0.5]
    q = bl.quarters(rising)
    assert q["steps"] == 3 and q["rises"] and q["diff"] == pytest.approx(0.5 - 0.1033, abs=1e-3)
    noisy = [0.1, 0.5, 0.3, 0.2, 0.4, 0.3, 0.2, 0.4, 0.5, 0.1, 0.3, 0.2]
    assert not bl.quarters(noisy)["rises"]
    assert bl.quarters([0.1, 0.2, 0.3]) is None  # too few steps for a standard error
    assert not bl.quarters([0.0] * 8)["rises"]  # a flat curve does not rise, however small its error


def test_run_step_skips_resumes_and_restarts(tmp_path):
    calls = []

    def fn(fresh):
        calls.append(fresh)
        return {"x": len(calls)}

    d = tmp_path / "step"
    assert bl.run_step(d, {"a": 1}, fn)["x"] == 1
    assert bl.run_step(d, {"a": 1}, fn)["x"] == 1 and calls == [False]  # done: skipped
    bl.run_step(d, {"a": 2}, fn)  # finished on another identity: afresh
    assert calls == [False, True]
    (d / "stage_done.json").unlink()  # stopped before it finished, same identity: resumed
    bl.run_step(d, {"a": 2}, fn)
    assert calls == [False, True, False]
    (d / "stage_done.json").unlink()  # stopped, then its settings changed: afresh
    bl.run_step(d, {"a": 3}, fn)
    assert calls[-1] is True

    # afresh, killed before the stage cleared its old output: the next attempt (now "resumed") has none of it
    (d / "predictions.jsonl").write_text("{}\n")
    (d / "checkpoint-4").mkdir()

    def killed(fresh):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bl.run_step(d, {"a": 4}, killed)
    assert not (d / "predictions.jsonl").exists() and not (d / "checkpoint-4").exists()
    bl.run_step(d, {"a": 4}, fn)
    assert calls[-1] is False and bl.run_step(d, {"a": 4}, fn)["x"] == len(calls)


def test_an_evaluation_on_more_questions_continues_and_on_fewer_is_refused(tmp_path):
    calls = []

    def fn(fresh):
        calls.append(fresh)
        return {}

    d = tmp_path / "eval"
    ident = {"eval": {"limit": 30, "modes": ["live"]}, "policy": "p"}
    bl.run_step(d, ident, fn)
    done = json.loads((d / "stage_done.json").read_text())
    (d / "stage_done.json").write_text(json.dumps({**done, "wall_s": 100.0}))
    grown = {"eval": {"limit": 100, "modes": ["live"]}, "policy": "p"}
    bl.run_step(d, grown, fn)  # the 30 done stay: continued, and its time is both runs'
    assert calls == [False, False]
    assert json.loads((d / "stage_done.json").read_text())["wall_s"] >= 100.0
    with pytest.raises(bl.WouldDelete):  # fewer: refused, not run afresh over the 100 done
        bl.run_step(d, {"eval": {"limit": 50, "modes": ["live"]}, "policy": "p"}, fn)
    assert calls == [False, False]
    bl.run_step(d, {"eval": {"limit": 100, "modes": ["live"]}, "policy": "q"}, fn)  # another policy: afresh
    assert calls[-1] is True and bl.continues(ident, {**grown, "eval": {"limit": None, "modes": ["live"]}})
    assert not bl.continues(ident, {"eval": {"limit": 100, "modes": ["simulated"]}, "policy": "p"})
    # a mode added (simulated tools beside live ones), with more questions or not: continued
    assert bl.continues(ident, {"eval": {"limit": 30, "modes": ["live", "simulated"]}, "policy": "p"})
    assert bl.continues(ident, {"eval": {"limit": 100, "modes": ["live", "simulated"]}, "policy": "p"})
    assert not bl.continues({"eval": {"limit": 30, "modes": ["live", "simulated"]}, "policy": "p"}, ident)
    assert not bl.continues(ident, {"eval": {"limit": 100, "modes": ["live", "simulated"]}, "policy": "q"})


def test_an_evaluation_finished_in_more_modes_is_kept_for_a_run_that_asks_fewer(tmp_path):
    """A run that asks live tools only over an evaluation finished with simulated ones too skips it: afresh, it
    would throw away the other mode's episodes. So too when mtr added an evaluation setting since, which the run
    holds at its default. More questions, or another policy, start afresh; fewer questions are refused, the
    episodes kept."""
    from mtr.rundir import inputs_shrank

    calls = []

    def fn(fresh):
        calls.append(fresh)
        return {}

    d = tmp_path / "eval"
    both = {"eval": {"limit": 100, "modes": ["live", "simulated"]}, "policy": "p"}
    bl.run_step(d, both, fn)
    (d / "episodes-of-both-modes").write_text("kept")  # what running afresh would remove
    live = {"eval": {"limit": 100, "modes": ["live"]}, "policy": "p"}
    assert bl.run_step(d, live, fn)["identity"] == both and calls == [False]  # skipped, kept
    # a setting added to mtr since the evaluation finished, at its default in the run's identity
    assert bl.run_step(d, {"eval": {**live["eval"], "grounding": "none"}, "policy": "p"}, fn)["identity"] == both
    assert calls == [False] and (d / "episodes-of-both-modes").is_file()
    # ... not at its default: another evaluation
    assert not inputs_shrank(both, {"eval": {**live["eval"], "grounding": "retrieval"}, "policy": "p"}, "eval.modes")
    assert not inputs_shrank(both, {"eval": {"limit": 200, "modes": ["live"]}, "policy": "p"}, "eval.modes")
    # fewer questions: not kept (the results would read all 100), not run afresh (that would delete them)
    for modes in (["live"], ["live", "simulated"]):
        with pytest.raises(bl.WouldDelete, match=r"evaluated on 100 questions a benchmark, where this run asks 50; "
                           r"afresh it would delete those episodes: ask --eval-limit 100"):
            bl.run_step(d, {"eval": {"limit": 50, "modes": modes}, "policy": "p"}, fn)
    assert calls == [False] and (d / "episodes-of-both-modes").is_file()
    # ... also when begun and not finished, on more questions than asked
    bl.run_step(d, {**live, "policy": "q"}, fn)
    assert calls[-1] is True and not (d / "episodes-of-both-modes").exists()
    (d / "stage_done.json").unlink()
    with pytest.raises(bl.WouldDelete):
        bl.run_step(d, {"eval": {"limit": 30, "modes": ["live"]}, "policy": "q"}, fn)
    # fewer questions of another policy: another evaluation, afresh
    bl.run_step(d, {"eval": {"limit": 30, "modes": ["live"]}, "policy": "r"}, fn)
    assert calls[-1] is True and len(calls) == 3
    assert not bl.on_more_questions({"init": "x"}, {"init": "x"})  # not an evaluation
    # every question (a preset without a limit): no --eval-limit asks for that, so none is named
    every = tmp_path / "eval-every"
    bl.run_step(every, {"eval": {"limit": None, "modes": ["live"]}, "policy": "p"}, fn)
    with pytest.raises(bl.WouldDelete, match=r"evaluated on all questions a benchmark, where this run asks 30; "
                       r"afresh it would delete those episodes: give another --work$"):
        bl.run_step(every, {"eval": {"limit": 30, "modes": ["live"]}, "policy": "p"}, fn)


def test_a_setting_added_at_its_default_does_not_restart_a_finished_step(tmp_path):
    from mtr.config import Config
    from mtr.rundir import same_settings

    calls = []

    def fn(fresh):
        calls.append(fresh)
        return {}

    now = {"data": "sha", "grpo": Config().grpo.model_dump(mode="json"), "seed": 0, "init": "runs/sft-s0"}
    before = {**now, "grpo": {k: v for k, v in now["grpo"].items() if k != "consistency_when_right"}}
    d = tmp_path / "grpo"
    bl.run_step(d, before, fn)
    bl.run_step(d, now, fn)  # the option did not exist, and its default is what the step ran with: skipped
    assert calls == [False] and bl.continues(before, now)
    assert not same_settings(before, {**now, "grpo": {**now["grpo"], "consistency_when_right": True}})
    assert not same_settings(before, {**now, "grpo": {**now["grpo"], "no_such_option": False}})
    assert not same_settings(before, {**now, "seed": 1}) and not same_settings(None, now)
    bl.run_step(d, {**now, "grpo": {**now["grpo"], "consistency_when_right": True}}, fn)
    assert calls == [False, True]
    # an evaluation recorded before a setting existed, now on more questions: continued, not redone
    ev = Config().eval.model_dump(mode="json")
    old_eval = {k: v for k, v in {**ev, "limit": 30}.items() if k != "grounding"}
    assert bl.continues({"eval": old_eval, "policy": "p"}, {"eval": {**ev, "limit": 100}, "policy": "p"})


def test_merge_copies_one_run_and_rewrites_the_docs(tmp_path):
    if not bl.RESULTS.is_file():
        pytest.skip("no learning results yet")
    run = next(iter(json.loads(bl.RESULTS.read_text()).values()))
    ours, theirs, doc = tmp_path / "ours.json", tmp_path / "other" / "theirs.json", tmp_path / "learning.md"
    theirs.parent.mkdir()
    ours.write_text(json.dumps({"kept": run}))
    theirs.write_text(json.dumps({"new": {**run, "date": "2099-01-01"}, "other": run}))
    doc.write_text("# doc\n<!--learning:new-->\n<!--/learning-->\n")
    (tmp_path / "other" / "learning_scores").mkdir()
    bl.scores_file("new", tmp_path / "other" / "learning_scores").write_text('{"questions": []}\n')
    bl.merge_run(theirs, "new", ours, doc)
    assert json.loads(ours.read_text()) == {"kept": run, "new": {**run, "date": "2099-01-01"}}
    # its per-question scores come along, beside the results merged into
    assert bl.scores_file("new", tmp_path / "learning_scores").read_text() == '{"questions": []}\n'
    assert "Run `new` of 2099-01-01" in doc.read_text()
    with pytest.raises(SystemExit, match="no run 'gone'; runs: new, other"):
        bl.merge_run(theirs, "gone", ours, doc)
    with pytest.raises(SystemExit, match="--label"):
        bl.merge_run(theirs, None, ours, doc)


def test_a_finished_training_step_loses_its_checkpoints_and_keeps_its_model(tmp_path):
    d = tmp_path / "grpo"
    (d / "checkpoint-4").mkdir(parents=True)
    (d / "checkpoint-4" / "optimizer.pt").write_bytes(b"x")
    (d / "model.safetensors").write_bytes(b"m")
    bl.drop_checkpoints(d)  # not finished: the checkpoint is what resumes it
    assert (d / "checkpoint-4" / "optimizer.pt").is_file()
    bl.run_step(d, {"a": 1}, lambda fresh: {})
    bl.drop_checkpoints(d)
    assert not (d / "checkpoint-4").exists() and (d / "model.safetensors").is_file()


def _prediction(bench, qid, em, f1, answered, calls, mode="live"):
    return {"key": f"{bench}|{mode}|{qid}", "benchmark": bench, "mode": mode, "id": qid, "em": em, "f1": f1,
            "cover_em": em, "answered": answered, "well_formed": answered, "calls": calls}


def _f1_eval_dir(root, name, f1s):
    """An evaluation directory whose HotpotQA questions q0, q1... scored these F1s (answered, one call)."""
    d = root / name
    d.mkdir()
    rows = [_prediction("hotpotqa", f"q{i}", 0.0, f1, 1, 1) for i, f1 in enumerate(f1s)]
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_summaries_and_comparisons_from_predictions(tmp_path):
    a, b = tmp_path / "eval-a", tmp_path / "eval-b"
    for d, good in ((a, False), (b, True)):
        d.mkdir()
        rows = [_prediction(bench, f"{bench}{i}", float(good and i % 2), 0.5 if good else 0.0, int(good), 1 + good)
                for bench in bl.BENCHMARKS for i in range(10)]
        rows.append(_prediction("hotpotqa", "hotpotqa0", 1.0, 1.0, 1, 0))  # a later record of the same key wins
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = bl.summarise_eval(b)
    assert s["live"]["all"]["n"] == 20 and s["live"]["hotpotqa"]["n"] == 10
    assert s["live"]["all"]["answered"][0] == 100.0 and s["live"]["all"]["by_calls"] == {"0": [1, 1], "2": [19, 19]}
    assert s["live"]["all"]["em"][0] == pytest.approx(100 * 11 / 20)
    rows = bl.comparisons({"sft@s0": a, "sft+grpo@s0": b}, {"seeds": [0]})
    assert len(rows) == 1 and rows[0]["n"] == 20 and rows[0]["answered"][0] == pytest.approx(95.0)


def test_an_arm_evaluated_with_both_tools_is_compared_with_itself(tmp_path):
    both, live_only = tmp_path / "eval-sft", tmp_path / "eval-base"
    for d in (both, live_only):
        d.mkdir()
    rows = [_prediction("hotpotqa", f"q{i}", 0.0, f1, 1, 1) for i, f1 in enumerate([0.2, 0.4, 0.0])]
    rows += [_prediction("hotpotqa", f"q{i}", 0.0, f1, 1, 2, mode="simulated") for i, f1 in enumerate([0.6, 0.4])]
    (both / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (live_only / "predictions.jsonl").write_text(json.dumps(_prediction("hotpotqa", "q0", 0.0, 0.0, 0, 0)) + "\n")
    [row] = bl.sim_vs_live({"base": live_only, "sft@s0": both})
    # simulated minus live on the questions both scored (q0: +0.4, q1: 0)
    assert (row["a"], row["b"], row["n"]) == ("sft@s0", "sft@s0 (simulated)", 2)
    assert row["f1"][0] == pytest.approx(20.0)
    assert bl.summarise_eval(both)["simulated"]["all"]["n"] == 2


def test_two_seeds_are_also_compared_on_each_questions_mean_over_the_seeds(tmp_path):
    eval_dir = partial(_f1_eval_dir, tmp_path)
    dirs = {"sft@s0": eval_dir("a0", [0.0, 0.0, 0.2]), "sft+grpo@s0": eval_dir("b0", [1.0, 0.0, 0.2]),
            "sft@s1": eval_dir("a1", [0.0, 0.5, 0.2]), "sft+grpo@s1": eval_dir("b1", [0.0, 0.5, 0.2, 1.0])}
    rows = bl.comparisons(dirs, {"seeds": [0, 1]})
    assert [(r["a"], r["b"]) for r in rows] == [("sft@s0", "sft+grpo@s0"), ("sft@s1", "sft+grpo@s1"),
                                                ("sft@s0+s1", "sft+grpo@s0+s1")]
    pooled = rows[-1]  # per question (b0 - a0 + b1 - a1) / 2 = 0.5, 0, 0; q3 is in one seed only
    assert pooled["n"] == 3 and pooled["f1"][0] == pytest.approx(100 * 0.5 / 3, abs=0.01)
    assert rows[0]["f1"][0] == pytest.approx(100 / 3, abs=0.01) and rows[1]["f1"][0] == 0.0


def test_docs_tables_are_generated_from_the_results_file():
    results = ROOT / "benchmarks" / "results" / "learning.json"
    if not results.is_file():
        pytest.skip("no learning results yet")
    assert bl.update_doc(plots=False) == bl.DOC.read_text(), \
        "docs/learning.md is stale: run benchmarks/bench_learning.py --docs"
    for name, res in json.loads(results.read_text()).items():
        assert f"Run `{name}` of {res['date']}" in bl.DOC.read_text()


def test_the_docs_plots_are_drawn_from_the_results_file_and_not_redrawn_unchanged(tmp_path):
    from PIL import Image

    results = ROOT / "benchmarks" / "results" / "learning.json"
    if not results.is_file():
        pytest.skip("no learning results yet")
    runs = json.loads(results.read_text())
    for name, res in runs.items():  # each plot the docs show holds the digest of the run it draws
        if any(v.get("quarters") for v in res["curves"].values()):
            with Image.open(bl.DOC.parent / "img" / f"learning-{name}.png") as img:
                assert img.info.get("mtr-digest") == bl.plot_digest(res), \
                    f"docs/img/learning-{name}.png is stale: run benchmarks/bench_learning.py --docs"
    res = next(r for r in runs.values() if any(v.get("quarters") for v in r["curves"].values()))
    out = tmp_path / "curve.png"
    assert bl.plot_curves("r", res, out) is True and out.stat().st_size > 1000
    assert bl.plot_curves("r", res, out) is False  # the same curves: nothing drawn
    changed = json.loads(json.dumps(res))
    curve = next(iter(changed["curves"].values()))
    curve["reward"][0] += 1.0
    assert bl.plot_curves("r", changed, out) is True
    with Image.open(out) as img:
        assert img.info["mtr-digest"] == bl.plot_digest(changed)


def test_a_trl_completion_is_scored_as_mtr_scores_its_own_episodes():
    """The TRL peer's reward: its completion read back into a Trace, validated as the Environment would."""
    import trl_peer

    from mtr.rubric import Rubric
    from mtr.toolmaker import utility_tools

    schemas = utility_tools(["search", "lookup", "calculate"])
    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Who wrote Hamlet?"}]
    obs = json.dumps({"results": [{"title": "Hamlet", "text": "Hamlet is a tragedy by William Shakespeare."}]})
    good = [{"role": "assistant", "reasoning_content": "search it", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "Hamlet"}}}]},
            {"role": "tool", "name": "search", "content": obs},
            {"role": "assistant", "content": "<answer>William Shakespeare</answer>"}]
    bad_call = [{"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"q": 1}}}]},
                {"role": "tool", "name": "search", "content": obs},
                {"role": "assistant", "content": "<answer>William Shakespeare</answer>"}]
    rubric = Rubric({"answer": 1.0, "format": 0.5, "consistency": 0.5, "efficiency": 0.2})
    t = trl_peer.episode_of(prompt, good, ["William Shakespeare"], schemas)
    assert t.steps[0].thought == "search it" and t.final_answer == "William Shakespeare"
    s = rubric.score(t)
    assert s["answer"] == 1.0 and s["format"] == 1.0 and s["consistency"] == 1.0
    s = rubric.score(trl_peer.episode_of(prompt, bad_call, ["William Shakespeare"], schemas))
    # the invalid call is not well-formed, and its observation cannot support the answer
    assert s["answer"] == 1.0 and s["format"] < 1.0 and s["consistency"] == 0.0
    unanswered = rubric.score(trl_peer.episode_of(prompt, [{"role": "assistant", "content": "hmm"}],
                                                  ["William Shakespeare"], schemas))
    assert unanswered["answer"] == 0.0 and unanswered["format"] == 0.0


@pytest.mark.parametrize("name", list(bl.PRESETS))
def test_grpo_sees_each_question_once_from_a_pool_or_a_quarter_of_its_steps_an_epoch(name):
    """With a pool, each of GRPO's questions is one step's group; without (quick), the reward curve's first
    and last quarters compare the same questions, a quarter of the steps an epoch."""
    p = bl.PRESETS[name]
    steps, groups = p["grpo_steps"], bl.groups_per_step(p)
    if p.get("grpo_pool"):
        assert steps * groups == p["grpo_questions"] and p["grpo_pool"] >= p["train_per_source"]
        assert "grpo_candidates" not in p  # candidates would cut the pool to the file's first few
    else:
        assert steps % 4 == 0 and steps // 4 * groups == p["grpo_questions"]


def test_two_groups_a_grpo_step_train_on_twice_the_questions():
    """A step of two groups (8 episodes of 4) draws twice the questions, so that each is seen as often as with
    one; other settings (more steps) keep the preset's questions, as the runs with them did."""
    two = bl.preset_settings("main", grpo={"trl.per_device_train_batch_size": 8})
    assert bl.groups_per_step(two) == 2 and two["grpo_questions"] == 2 * bl.PRESETS["main"]["grpo_questions"]
    assert two["grpo_steps"] * 2 == two["grpo_questions"]  # each once, as the preset's one group a step
    quick = bl.preset_settings("quick", grpo={"trl.per_device_train_batch_size": 8})
    assert quick["grpo_steps"] // 4 * 2 == quick["grpo_questions"]  # a quarter of the steps still an epoch
    accumulated = bl.preset_settings("main", grpo={"trl.per_device_train_batch_size": 4,
                                                   "trl.gradient_accumulation_steps": 2})
    assert accumulated["grpo_questions"] == two["grpo_questions"]
    longer = bl.preset_settings("main", grpo={"trl.max_steps": 48})
    assert (longer["grpo_steps"], longer["grpo_questions"]) == (48, bl.PRESETS["main"]["grpo_questions"])


def test_grpo_may_train_on_more_questions_chosen_from_a_pool_that_begins_with_sfts(tmp_path, monkeypatch, capsys):
    import mtr.data

    # two small training splits of their own: the shared data may not be beside a clone
    splits = {}
    for b, n in (("hotpotqa", 12), ("2wiki", 7)):
        splits[f"{b}-train"] = tmp_path / f"{b}-train.jsonl"
        splits[f"{b}-train"].write_text("".join(json.dumps({"id": f"{b}{i}", "question": f"Q{i}?", "answers": ["a"]})
                                                + "\n" for i in range(n)))
    monkeypatch.setattr(mtr.data, "resolve_benchmark", lambda name: splits[name])
    main = bl.preset_settings("main")
    assert (main["grpo_questions"], main["grpo_pool"]) == (bl.PRESETS["main"]["grpo_questions"],
                                                           bl.PRESETS["main"]["grpo_pool"])
    narrow = bl.preset_settings("main", grpo_questions=6, grpo_pool=24)
    assert (narrow["grpo_questions"], narrow["grpo_pool"]) == (6, 24)
    # quick's GRPO chooses among the file's first 4 questions; given a pool, among the pool's
    assert "grpo_candidates" in bl.preset_settings("quick")
    assert "grpo_candidates" not in bl.preset_settings("quick", grpo_pool=16)
    sft = bl.training_file(tmp_path, 3).read_text().splitlines()
    # a pool of SFT's size is SFT's file, byte for byte: the runs from before the pool keep their steps' identity
    same = bl.training_file(tmp_path, 3, "grpo-train.jsonl").read_bytes()
    assert same == (tmp_path / "data" / "train.jsonl").read_bytes()
    pool = bl.training_file(tmp_path, 5, "grpo-train.jsonl").read_text().splitlines()
    # SFT's questions first, in SFT's order, then questions SFT never saw, both benchmarks interleaved
    assert len(pool) == 10 and pool[:6] == sft and not set(pool[6:]) & set(sft)
    assert (tmp_path / "data" / "train.jsonl").read_text().splitlines() == sft
    import subprocess

    work = tmp_path / "work"
    out = subprocess.run([sys.executable, str(Path(bl.__file__)), "--preset", "main", "--work", str(work),
                          "--grpo-pool", "0"], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == \
        "--grpo-pool 0: expected a number of questions, at least 1" and not work.exists()
    out = subprocess.run([sys.executable, str(Path(bl.__file__)), "--preset", "main", "--work", str(work),
                          "--grpo-pool", "10"], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == "--grpo-pool 10: a pool holds SFT's 24 " \
        "training questions of each benchmark and more; give at least that" and not work.exists()
    # a pool larger than a benchmark's training split takes all it holds, says so, and cuts no other split
    capsys.readouterr()
    pool = bl.training_file(tmp_path, 10, "grpo-train.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in pool[-4:]] == ["2wiki6", "hotpotqa7", "hotpotqa8", "hotpotqa9"]
    assert len(pool) == 17 and pool[:6] == sft
    assert "2wiki-train holds 7 of the 10 training questions asked" in " ".join(capsys.readouterr().out.split())


def test_paired_visits_compare_each_questions_first_and_last_step():
    import grpo_settings as gs

    reward = [0.0, 0.2, 0.5, 0.7, 0.9]
    questions = ["a", "b", "a", "b", "c"]
    out = gs.paired_visits(reward, questions)
    # a: 0.5 - 0.0, b: 0.7 - 0.2, c: once (difference 0)
    assert out["questions"] == 3 and out["diff"] == pytest.approx((0.5 + 0.5 + 0.0) / 3, abs=1e-4)
    assert out["se"] > 0
    assert gs.paired_visits([0.1], ["a"]) is None


def measured_run() -> dict:
    """A finished run's measured steps, as the results file holds them: SFT, the method's GRPO, two evaluations."""
    return {"commit": "abc", "sft_steps": 10, "filter": {"episodes": 40, "kept": 40},
            "preset": {"seeds": [0], "grpo_steps": 8, "eval_limit": 10},
            "stages": {"sft-s0": {"wall_s": 100.0}, "grpo-sft+grpo-s0": {"wall_s": 80.0},
                       "eval-sft-s0": {"wall_s": 40.0}, "eval-base-s0": {"wall_s": 20.0}}}


def test_the_full_preset_is_estimated_from_a_runs_measured_steps():
    measured = measured_run()
    est = bl.estimate("full", measured)
    p = bl.PRESETS["full"]
    questions = p["eval_limit"] * len(bl.BENCHMARKS)
    sft_steps = -(-p["train_per_source"] * len(bl.BENCHMARKS) // 4)  # every trace kept
    assert est["sft_steps"] == sft_steps and est["sft_s"] == 10 * sft_steps * len(p["seeds"])
    # the sizes it estimated go with it: the preset may change, the estimate in the results file stays
    assert est["sizes"] == {"train_per_source": p["train_per_source"], "grpo_steps": p["grpo_steps"],
                            "grpo_questions": p["grpo_questions"], "grpo_pool": p["grpo_pool"],
                            "eval_limit": p["eval_limit"], "seeds": p["seeds"]}
    grpo_arms = [a for a in p["arms"] if "grpo" in bl.ARMS[a]] + [a for a in bl.SEEDED if "grpo" in bl.ARMS[a]]
    # unmeasured arms at the method's rate; the pool answered once by the method in each seed and by the cold
    # start (the other arms take the method's answers), at the evaluation's seconds a question of the policy
    # answering: SFT's 2, the base model's 1 (grpo-no-sft)
    fresh = ["sft+grpo", "grpo-no-sft"] + ["sft+grpo"] * (len(p["seeds"]) - 1)
    assert sorted(a for a in grpo_arms if not bl.shares_answers(a)) == sorted(fresh)

    def answers_s(sft_rate: float) -> float:
        return sum((1.0 if bl.ARMS[a]["init"] == "base" else sft_rate) * bl.candidate_questions(p) for a in fresh)

    answer_s = answers_s(2.0)
    # each question seen once: every GRPO arm but the peer samples its first quarter's groups again, and the
    # method its last quarter's too, none measured here, each at a GRPO group's seconds
    replayed = [a for a in grpo_arms if a != "trl-peer"] + [a for a in grpo_arms if bl.replays_both_quarters(a)]
    assert len(replayed) == len(grpo_arms) - 1 + len(p["seeds"])
    replay_s = 10 * p["grpo_steps"] // 4 * len(replayed)
    assert bl.candidate_questions(p) == p["grpo_pool"] * len(bl.BENCHMARKS) and "grpo-no-sft" in grpo_arms
    assert est["grpo_s"] == 10 * p["grpo_steps"] * len(grpo_arms) + answer_s + replay_s
    # the simulated evaluations in the first seed only: the second seed's are live
    evals = [(a, 2 if a in p["simulated_eval"] else 1) for a in p["arms"]] + [(a, 1) for a in bl.SEEDED]
    want = sum((1.0 if a == "base" else 2.0) * questions * modes for a, modes in evals)
    assert est["eval_s"] == round(want) and est["total_s"] == est["sft_s"] + est["grpo_s"] + est["eval_s"]
    # a run that evaluated SFT with simulated tools too: its evaluation's time holds twice the episodes
    measured["preset"]["simulated_eval"] = ["sft"]
    halved = bl.estimate("full", measured)
    want = sum(1.0 * questions * modes for _, modes in evals)  # SFT's 40 s over 20 questions twice: base's rate
    assert halved["eval_s"] == round(want) and halved["sft_s"] == est["sft_s"]
    # ... as a step that says how many episodes it holds does, whatever its run asked (kept from a run in more
    # modes: the main preset's run over the full preset's work directory)
    measured["preset"]["simulated_eval"] = []
    measured["stages"]["eval-sft-s0"]["n"] = 40
    assert bl.estimate("full", measured)["eval_s"] == halved["eval_s"]
    measured["preset"]["simulated_eval"] = ["sft"]
    del measured["stages"]["eval-sft-s0"]["n"]
    answer_s = answers_s(1.0)  # the pool's answers too, at SFT's seconds an episode
    assert halved["grpo_s"] == 10 * p["grpo_steps"] * len(grpo_arms) + answer_s + replay_s
    # a run of two groups a step (8 episodes of 4): its seconds a step are two groups', the full preset's one
    measured["config"] = {"grpo": {"trl": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                                           "num_generations": 4}}}
    assert bl.estimate("full", measured)["grpo_s"] == 5 * p["grpo_steps"] * len(grpo_arms) + answer_s + replay_s // 2
    # a run that chose its questions solvable-first: its GRPO step's time holds a pass over its 4 candidates
    # (4 s at SFT's rate), taken out of its seconds a step
    measured["config"] = {"grpo": {"question_order": "solvable-first"}}
    measured["preset"].update(grpo_candidates=4, train_per_source=24)
    assert bl.estimate("full", measured)["grpo_s"] == round(9.5 * p["grpo_steps"] * (len(grpo_arms) + len(replayed) / 4)
                                                             + answer_s)
    # a measured replay: 12 s for its 2 groups
    measured["stages"]["replay-sft+grpo-s0"] = {"wall_s": 12.0}
    assert bl.estimate("full", measured)["grpo_s"] == round(9.5 * p["grpo_steps"] * len(grpo_arms) + answer_s
                                                             + 6 * p["grpo_steps"] // 4 * len(replayed))
    # a measured replay of the last quarter: 20 s for its 2 groups, the method's own (the first's stays at 6 s)
    measured["stages"]["replay-last-sft+grpo-s0"] = {"wall_s": 20.0}
    last = [a for a in grpo_arms if bl.replays_both_quarters(a)]
    assert bl.estimate("full", measured)["grpo_s"] == round(9.5 * p["grpo_steps"] * len(grpo_arms) + answer_s
                                                             + 6 * p["grpo_steps"] // 4 * (len(replayed) - len(last))
                                                             + 10 * p["grpo_steps"] // 4 * len(last))
    del measured["stages"]["replay-last-sft+grpo-s0"]
    # a GRPO step that took the method's answers holds no pass of its own
    measured["stages"]["grpo-sft+grpo-s0"]["took_answers"] = True
    assert bl.estimate("full", measured)["grpo_s"] == round(10 * p["grpo_steps"] * len(grpo_arms) + answer_s
                                                             + 6 * p["grpo_steps"] // 4 * len(replayed))
    # one that took half of them (the pre-check ablation's, say): half the pass
    measured["stages"]["grpo-sft+grpo-s0"]["took_answers"] = 2
    assert bl.estimate("full", measured)["grpo_s"] == round(9.75 * p["grpo_steps"] * len(grpo_arms) + answer_s
                                                             + 6 * p["grpo_steps"] // 4 * len(replayed))
    del measured["stages"]["grpo-sft+grpo-s0"]["took_answers"]
    del measured["stages"]["grpo-sft+grpo-s0"]  # a run of base and SFT only: no GRPO rate to go by
    with pytest.raises(ValueError, match=r"measured no grpo-sft\+grpo-s0 \(its steps: sft-s0, eval-sft-s0"):
        bl.estimate("full", measured)


def test_the_estimate_takes_what_its_run_lacks_from_a_second_run_divided_by_its_slowdown():
    """A one-process run of the main arms prices the TRL peer as the method and a simulated episode as a live
    one; a second run (the full preset's, with --jobs) that measured them corrects both."""
    measured, p = measured_run(), bl.PRESETS["full"]
    jobs = {"jobs": 2, "grpo": {"slowdown": 2.0}, "eval": {"slowdown": 1.5}}
    # beside another: the peer's 8 steps in 320 s (160 s alone: 20 s a group, the method's 10); SFT's evaluation
    # in both modes, 40 episodes in 180 s (120 s alone: 3 s an episode, the live one's 2)
    also = {"commit": "def", "jobs": 2, "preset": {"seeds": [0], "grpo_steps": 8, "eval_limit": 10},
            "stages": {"grpo-trl-peer-s0": {"wall_s": 320.0}, "eval-sft-s0": {"wall_s": 180.0, "n": 40}}}
    alone, both = bl.estimate("full", measured, jobs), bl.estimate("full", measured, jobs, [also])
    assert both["grpo_s"] - alone["grpo_s"] == 10 * p["grpo_steps"]  # the peer, in the first seed only
    # the first seed's simulated evaluations (SFT's, and the method's priced as SFT's): 1 s more an episode
    questions = p["eval_limit"] * len(bl.BENCHMARKS)
    assert p["simulated_eval"] == ["sft", "sft+grpo"]
    assert both["eval_s"] - alone["eval_s"] == 1 * questions * 2 * 2
    assert both["with_jobs"]["total_s"] > alone["with_jobs"]["total_s"]
    peer_here = {"commit": "ghi", "preset": {"seeds": [2], "grpo_steps": 8, "eval_limit": 10},
                 "stages": {"grpo-trl-peer-s2": {"wall_s": 240.0}, "eval-sft-s2": {"wall_s": 20.0, "n": 20}}}
    # more runs are searched in their order: the peer from the first that measured it (in its own first seed,
    # alone: 30 s a group), the simulated evaluations from the one that ran them (the first ran live tools only)
    first = bl.estimate("full", measured, jobs, [peer_here, also])
    assert first["grpo_s"] - alone["grpo_s"] == 20 * p["grpo_steps"]
    assert first["eval_s"] == both["eval_s"]
    assert bl.estimate("full", measured, jobs, [also, peer_here])["grpo_s"] == both["grpo_s"]
    # the measured run's own step comes first: its peer measured alone at 12 s a group
    measured["stages"]["grpo-trl-peer-s0"] = {"wall_s": 96.0}
    assert bl.estimate("full", measured, jobs, [also])["grpo_s"] - alone["grpo_s"] == 2 * p["grpo_steps"]
    # a second run's seconds beside another mean nothing without the slowdown
    with pytest.raises(ValueError, match=r"run 3's steps ran 2 at a time \(--jobs\): its seconds need the slowdown"):
        bl.estimate("full", measured, None, [peer_here, also])


def test_jobs_start_the_method_first_and_an_arm_that_takes_its_answers_after_it():
    p = bl.PRESETS["full"]
    units = bl.units_in_order(p)
    # every arm of every seed once; the method of each seed first, the peer before the other GRPO arms, the
    # arms that only evaluate last
    assert sorted(units) == sorted((a, s) for s in p["seeds"] for a in bl.arms_in_seed(p, s))
    assert units[:2] == [("sft+grpo", 0), ("sft+grpo", 1)] and units[2] == ("trl-peer", 0)
    assert {a for a, _ in units[-3:]} == {"base", "sft"} and units[-1] == ("base", 0)
    needs = {u: bl.unit_needs(u, p) for u in units}
    assert needs[("trl-peer", 0)] == ("sft+grpo", 0) and needs[("sim-trained", 0)] == ("sft+grpo", 0)
    assert needs[("no-precheck", 0)] == ("sft+grpo", 0)
    assert needs[("grpo-no-sft", 0)] is None and needs[("sft", 1)] is None


class FakeProcess:
    def __init__(self, log: list, unit: tuple[str, int], polls: int, rc: int = 0):
        self.log, self.unit, self.polls, self.rc = log, unit, polls, rc

    def poll(self):
        self.polls -= 1
        if self.polls > 0:
            return None
        self.log.append(("end", self.unit))
        return self.rc


def test_run_units_keeps_n_running_waits_for_a_units_need_and_stops_starting_after_a_failure():
    log, lengths = [], {("m", 0): 3, ("peer", 0): 1, ("a", 0): 1, ("b", 0): 1}
    needs = {("peer", 0): ("m", 0)}

    def start(unit):
        log.append(("start", unit))
        return FakeProcess(log, unit, lengths[unit])

    seen = []
    failed = bl.run_units(list(lengths), needs.get, start, 2, poll_s=0,
                          on_change=lambda running, done, failed: seen.append(len(running)))
    assert failed == {} and max(seen) == 2
    # the peer waited for the method although it came before the others: they took the free slot
    assert log.index(("start", ("peer", 0))) > log.index(("end", ("m", 0)))
    assert log.index(("start", ("a", 0))) < log.index(("start", ("peer", 0)))
    assert sorted(u for e, u in log if e == "start") == sorted(lengths)
    # a failure: the running unit finishes, nothing new starts, the failure is returned
    log.clear()
    failed = bl.run_units([("x", 0), ("y", 0), ("z", 0)], lambda u: None,
                          lambda u: (log.append(("start", u)), FakeProcess(log, u, 1 if u == ("x", 0) else 3,
                                                                           rc=7 if u == ("x", 0) else 0))[1], 2, poll_s=0)
    assert failed == {("x", 0): 7} and ("start", ("z", 0)) not in log and ("end", ("y", 0)) in log


def test_run_units_takes_as_long_as_the_makespan_says_and_stops_its_units_when_it_fails():
    # a fake process ends after its duration in polls, one poll a round: the rounds are the simulated time
    seconds = {("m", 0): 5, ("peer", 0): 2, ("a", 0): 3, ("b", 0): 1, ("m", 1): 4}
    needs = {("peer", 0): ("m", 0)}.get
    for jobs in (1, 2, 3):
        rounds = []
        bl.run_units(list(seconds), needs, lambda u: FakeProcess([], u, seconds[u]), jobs, poll_s=0,
                     on_change=lambda *a: rounds.append(1))
        assert len(rounds) - 1 == bl.units_makespan(list(seconds), needs, {u: float(d) for u, d in seconds.items()},
                                                    jobs)
    stopped = []

    class Running(FakeProcess):
        def terminate(self):
            stopped.append(self.unit)

    def start(unit):
        if unit == ("b", 0):
            raise OSError("no more processes")
        return Running([], unit, 100)

    with pytest.raises(OSError):
        bl.run_units([("a", 0), ("b", 0)], lambda u: None, start, 2, poll_s=0)
    assert stopped == [("a", 0)]


def test_an_arm_that_takes_the_methods_answers_starts_once_they_are_written_not_when_its_unit_ends():
    log, lengths = [], {("m", 0): 6, ("peer", 0): 2}
    polls = {"n": 0}

    def start(unit):
        log.append(("start", unit))
        return FakeProcess(log, unit, lengths[unit])

    def met(unit):  # the method's answers are written on the third round, its unit ends on the sixth
        polls["n"] += 1
        return unit == ("m", 0) and polls["n"] >= 3

    assert bl.run_units(list(lengths), {("peer", 0): ("m", 0)}.get, start, 2, poll_s=0, met=met) == {}
    assert log.index(("start", ("peer", 0))) < log.index(("end", ("m", 0)))  # beside the method, not after
    # one slot: nothing starts beside the method however early its answers are written
    log.clear()
    bl.run_units(list(lengths), {("peer", 0): ("m", 0)}.get, start, 1, poll_s=0, met=lambda u: True)
    assert log.index(("start", ("peer", 0))) > log.index(("end", ("m", 0)))
    # the makespan follows: the peer from the pass's end (3), beside the method (0-10)
    seconds = {("m", 0): 10.0, ("peer", 0): 5.0}
    needs = {("peer", 0): ("m", 0)}.get
    assert bl.units_makespan(list(seconds), needs, seconds, 2) == 15.0
    assert bl.units_makespan(list(seconds), needs, seconds, 2, {("m", 0): 3.0}) == 10.0
    assert bl.units_makespan(list(seconds), needs, {**seconds, ("peer", 0): 9.0}, 2, {("m", 0): 3.0}) == 12.0
    assert bl.units_makespan(list(seconds), needs, seconds, 1, {("m", 0): 3.0}) == 15.0


def test_the_methods_answers_are_written_when_every_candidate_question_has_one(tmp_path):
    preset = {"grpo_pool": 100}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "grpo-train.jsonl").write_text("".join(json.dumps({"id": f"q{i}"}) + "\n" for i in range(3)))
    method = tmp_path / "grpo-sft+grpo-s0"
    assert not bl.answers_written(preset, tmp_path, method)  # nothing answered yet
    method.mkdir()
    answers = method / "solvable.jsonl"
    answers.write_text(json.dumps({"id": "q0", "f1": 0.5}) + "\n" + json.dumps({"id": "q2", "f1": 0.0}) + "\n")
    assert not bl.answers_written(preset, tmp_path, method)
    assert bl.answers_written({**preset, "grpo_candidates": 1}, tmp_path, method)  # only the first is chosen among
    answers.write_text(answers.read_text() + '{"id": "q1", "f1"')  # a last line cut short is no answer
    assert not bl.answers_written(preset, tmp_path, method)
    answers.write_text(answers.read_text() + ': 1.0}\n')
    assert bl.answers_written(preset, tmp_path, method)
    # without a pool, the candidates are SFT's own questions
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({"id": "q9"}) + "\n")
    assert not bl.answers_written({"grpo_pool": None}, tmp_path, method)


def test_a_run_made_with_jobs_is_not_estimated_from():
    measured = {"jobs": 2, "sft_steps": 10, "filter": {"episodes": 4, "kept": 4}, "preset": {"seeds": [0]}, "stages": {}}
    with pytest.raises(ValueError, match="ran 2 at a time"):
        bl.estimate("full", measured)


def test_the_makespan_of_units_side_by_side_follows_their_order_and_waits():
    needs = {("peer", 0): ("m", 0)}.get
    seconds = {("m", 0): 10.0, ("peer", 0): 5.0, ("a", 0): 4.0, ("b", 0): 4.0}
    units = list(seconds)
    assert bl.units_makespan(units, needs, seconds, 1) == 23.0  # one at a time: the sum
    # two: m (0-10) beside a (0-4), b (4-8); the peer waits for m: 10-15
    assert bl.units_makespan(units, needs, seconds, 2) == 15.0
    assert bl.units_makespan(units, lambda u: None, seconds, 2) == 13.0  # m beside peer (0-5), a (5-9), b (9-13)


def test_the_estimate_prices_jobs_by_the_measured_slowdown_of_a_unit_beside_another():
    measured = measured_run()
    alone = bl.estimate("full", measured)
    assert "with_jobs" not in alone
    # a slowdown of 2 gains nothing: two units side by side each take twice as long
    same = bl.estimate("full", measured, {"jobs": 2, "grpo": {"slowdown": 2.0}, "eval": {"slowdown": 2.0}})
    assert same["total_s"] == alone["total_s"]
    assert same["with_jobs"]["total_s"] >= alone["total_s"] - 1
    faster = bl.estimate("full", measured, {"jobs": 2, "grpo": {"slowdown": 1.4}, "eval": {"slowdown": 1.5}})
    w = faster["with_jobs"]
    assert w["jobs"] == 2 and w["slowdown"] == {"grpo": 1.4, "eval": 1.5}
    # no better than perfect sharing, no worse than the slowed work one unit at a time
    work = alone["grpo_s"] * 1.4 + alone["eval_s"] * 1.5
    assert alone["sft_s"] + work / 2 - 1 <= w["total_s"] <= alone["sft_s"] + work + 1
    assert w["total_s"] < alone["total_s"]


def test_run_jobs_gives_each_unit_its_share_of_the_cores_and_names_a_failed_units_log(tmp_path, monkeypatch):
    started = []

    class Child:
        def __init__(self, argv, stdout, stderr, env):
            started.append((argv, env["OMP_NUM_THREADS"]))
            unit = argv[argv.index("--unit") + 1]
            stdout.write(f"working on {unit}\nValueError: no such file\n" if unit == "sft@0" else "done\n")
            stdout.flush()
            self.rc = 3 if unit == "sft@0" else 0

        def poll(self):
            return self.rc

    monkeypatch.setattr("subprocess.Popen", Child)
    monkeypatch.setattr(bl, "usable_cores", lambda: 4)
    preset = {**bl.PRESETS["main"], "arms": ["base", "sft"]}
    with pytest.raises(SystemExit, match=r"unit sft@s0 failed \(exit 3\): ValueError: no such file \(whole log: .*sft-s0\.log\)"):
        bl.run_jobs(preset, tmp_path, 2, ["--preset", "main"])
    assert [(a[a.index("--unit") + 1], a[-4:-2], t) for a, t in started] == [
        ("sft@0", ["--preset", "main"], "2"), ("base@0", ["--preset", "main"], "2")]  # the base model last
    assert (tmp_path / "jobs" / "base-s0.log").read_text() == "done\n"


def test_a_units_command_line_is_the_runs_less_its_jobs():
    assert bl.without_jobs(["--preset", "main", "--jobs", "2", "--label", "x"]) == ["--preset", "main", "--label", "x"]
    assert bl.without_jobs(["--jobs=3", "--seeds", "0,1"]) == ["--seeds", "0,1"]


def test_a_unit_runs_the_shared_steps_and_its_own_arm_only(tmp_path, monkeypatch):
    """`only`: each seed's SFT (shared), then only the named units' GRPO and evaluation; no results."""
    import importlib

    # imported before the patches below: a module imported under them would keep the patched function
    for module in ("mtr.stages.evaluate", "mtr.stages.filter", "mtr.stages.grpo", "mtr.stages.sft",
                   "mtr.stages.synth", "trl_peer"):
        importlib.import_module(module)
    ran, identities = [], {}
    monkeypatch.setattr(bl, "run_step", lambda d, identity, fn, on_resume=None: (
        ran.append(d.name), identities.__setitem__(d.name, identity), {
            "wall_s": 1.0, "kept": 4, "episodes": 4, "rejected": 0})[2])
    monkeypatch.setattr(bl, "check_disjoint", lambda train, cfg: None)
    monkeypatch.setattr(bl, "training_file", lambda work, n, name="train.jsonl": tmp_path / name)
    (tmp_path / "train.jsonl").write_text("{}\n")
    (tmp_path / "grpo-train.jsonl").write_text("{}\n")
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "traces.jsonl").write_text("{}\n")
    (tmp_path / "filter").mkdir()
    (tmp_path / "filter" / "sft.jsonl").write_text("{}\n")
    for fn in ("drop_checkpoints", "reward_curve", "summarise_eval"):
        monkeypatch.setattr(bl, fn, lambda *a, **k: {})
    monkeypatch.setattr("mtr.checkpoints.policy_checkpoint", lambda cfg: tmp_path / "base")
    monkeypatch.setattr("mtr.rundir.checkpoint_stamp", lambda d: None)
    assert bl.run_arms("full", tmp_path, only=set()) == {}
    assert ran == ["synth", "filter", "sft-s0", "sft-s1"]
    ran.clear()
    assert bl.run_arms("full", tmp_path, only={("no-precheck", 0)}) == {}
    assert ran == ["synth", "filter", "sft-s0", "grpo-no-precheck-s0", "replay-no-precheck-s0", "eval-no-precheck-s0"]
    ran.clear()
    # the method's unit replays its last quarter too, from the initial policy, before its evaluation
    assert bl.run_arms("full", tmp_path, only={("sft+grpo", 1)}) == {}
    assert ran == ["synth", "filter", "sft-s1", "grpo-sft+grpo-s1", "replay-sft+grpo-s1",
                   "replay-last-sft+grpo-s1", "eval-sft+grpo-s1"]
    # SFT and the method with simulated tools too in the first seed only; the base model (no tool called) live
    assert bl.run_arms("full", tmp_path, only={("base", 0), ("sft", 0), ("sft", 1), ("sft+grpo", 0)}) == {}
    modes = {k: v["eval"]["modes"] for k, v in identities.items() if k.startswith("eval-")}
    assert modes == {"eval-base-s0": ["live"], "eval-sft-s0": ["live", "simulated"], "eval-sft-s1": ["live"],
                     "eval-sft+grpo-s0": ["live", "simulated"], "eval-sft+grpo-s1": ["live"], "eval-no-precheck-s0": ["live"]}
    # ... and in every seed with --every-seed, as the ablations
    assert bl.run_arms("full", tmp_path, only={("sft", 1)}, every_seed=True) == {}
    assert identities["eval-sft-s1"]["eval"]["modes"] == ["live", "simulated"]


def test_reward_curve_reads_the_update_speed_padding_and_selection_from_the_runs_stats(tmp_path):
    steps = [{"step": i + 1, "reward": 0.1 * i, "step_time": 10.0, "num_tokens": 1000.0 * (i + 1),
              "completions/mean_length": 50, "rewards/answer_reward/mean": 0.1 * i,
              "rewards/answer_reward/std": 0.0} for i in range(4)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    stats = {"train_runtime_s": 40.0, "rollout_s": 20.0, "padding_pct": 12.5, "solvable_questions": 3}
    (tmp_path / "train_stats.json").write_text(json.dumps(stats))
    curve = bl.reward_curve(tmp_path, rollouts=4)
    assert curve["update_ms_per_token"] == 5.0  # 20 s of update over 4000 scored tokens
    assert curve["padding_pct"] == 12.5 and curve["solvable_questions"] == 3 and curve["answer_flat_steps"] == 4
    assert curve["quarter_means"] == {"answer": [0.0, 0.3]}  # each component logged: first and last quarter
    steps[1]["rewards/format_reward/std"] = 0.5
    steps[2].update({"rewards/format_reward/std": 0.1, "rewards/consistency_reward/std": 0.5})
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    curve = bl.reward_curve(tmp_path, rollouts=4)
    assert curve["varied_steps"] == {"answer": 0, "format": 2, "consistency": 1, "efficiency": 0}
    assert curve["varied_alone_steps"] == {"answer": 0, "format": 1, "consistency": 0, "efficiency": 0}
    (tmp_path / "train_stats.json").write_text(json.dumps({**stats, "resumed_from": "checkpoint-2"}))
    assert "update_ms_per_token" not in bl.reward_curve(tmp_path, rollouts=4)  # a resumed run timed part of it


def test_grpo_settings_from_the_command_line_are_typed_and_checked():
    got = bl.parse_grpo_overrides(["answer_metric=f1", "question_order=solvable-first", "trl.learning_rate=1e-5"])
    assert got == {"answer_metric": "f1", "question_order": "solvable-first", "trl.learning_rate": 1e-5}
    cfg = bl.base_config({**bl.PRESETS["quick"], "grpo": got}, 0)
    assert (cfg.grpo.answer_metric, cfg.grpo.question_order, cfg.grpo.trl["learning_rate"]) == \
        ("f1", "solvable-first", 1e-5)
    for bad, says in [("answer_metric=f2", "grpo.answer_metric"), ("nosuch=1", "grpo.nosuch"), ("x", "KEY=VALUE"),
                      ("trl.max_steps=abc", "trl.max_steps"), ("trl.max_steps=0", "whole number")]:
        with pytest.raises(SystemExit, match=says):
            bl.parse_grpo_overrides([bad])


def test_the_work_directory_is_the_same_however_it_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    runs = (tmp_path / "runs").resolve()
    assert bl.work_dir(Path("runs"), "quick") == bl.work_dir(tmp_path / "runs", "quick") == runs
    assert bl.work_dir(None, "quick").is_absolute() and bl.work_dir(None, "quick").name == "quick"


def test_a_seeds_own_work_directory_is_absolute_and_only_for_a_seed_the_run_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = bl.parse_seed_work(["1=runs/s1", f"2={tmp_path}/s2"], [0, 1, 2])
    assert got == {1: tmp_path / "runs" / "s1", 2: tmp_path / "s2"} and all(p.is_absolute() for p in got.values())
    assert bl.parse_seed_work([], [0]) == {}
    for bad, says in [("3=x", "seed 3 is not one of the run's seeds"), ("x", "SEED=DIR"), ("a=x", "SEED=DIR"),
                      ("1=", "SEED=DIR")]:
        with pytest.raises(SystemExit, match=says):
            bl.parse_seed_work([bad], [0, 1, 2])


@pytest.mark.parametrize("name", list(bl.PRESETS))
def test_the_presets_train_grpo_as_the_demo_does_and_the_trials_keep_their_settings(name):
    """The benchmark's GRPO trains solvable-first (its presets) with configs/demo.yaml's F1 answer reward (what
    the three-seed run adopted); the GRPO trials keep the file's order and EM unless they name another."""
    import grpo_settings as gs

    g = bl.base_config(bl.PRESETS[name], 0).grpo
    assert (g.question_order, g.answer_metric) == ("solvable-first", "f1")
    # episodes sampled at 0.7 (docs/learning.md, Settings tried 17); a --grpo setting still wins over it
    assert g.trl["temperature"] == 0.7
    assert bl.base_config({**bl.PRESETS[name], "grpo": {**bl.ADOPTED_GRPO, "trl.temperature": 1.0}}, 0
                          ).grpo.trl["temperature"] == 1.0
    trial = gs.trial_config(gs.SETTINGS["lr3e-5-q4"]).grpo
    assert (trial.question_order, trial.answer_metric) == ("file", "em")
    f1 = gs.trial_config(gs.SETTINGS["lr3e-5-q4-f1"]).grpo
    assert (f1.question_order, f1.answer_metric, f1.trl["learning_rate"]) == ("file", "f1", 3e-5)
    assert gs.trial_config(gs.SETTINGS["lr3e-5-q4-solvable"]).grpo.question_order == "solvable-first"


def test_every_seed_runs_and_compares_the_ablations_in_each_seed(tmp_path):
    preset = {**bl.PRESETS["quick"], "arms": ["base", "sft", "sft+grpo", "sim-trained"], "seeds": [0, 1]}
    assert bl.arms_in_seed(preset, 0) == preset["arms"] and bl.arms_in_seed(preset, 1) == ["sft", "sft+grpo"]
    assert bl.arms_in_seed({**preset, "every_seed": True}, 1) == ["sft", "sft+grpo", "sim-trained"]

    eval_dir = partial(_f1_eval_dir, tmp_path)
    dirs = {"sft@s0": eval_dir("a0", [0.0, 0.0]), "sft+grpo@s0": eval_dir("b0", [0.5, 0.0]),
            "sim-trained@s0": eval_dir("c0", [0.0, 0.0]), "sft@s1": eval_dir("a1", [0.0, 0.0]),
            "sft+grpo@s1": eval_dir("b1", [0.5, 0.5]), "sim-trained@s1": eval_dir("c1", [1.0, 0.5])}
    rows = bl.comparisons(dirs, {"seeds": [0, 1], "every_seed": True})
    assert [(r["a"], r["b"]) for r in rows] == [
        ("sft@s0", "sft+grpo@s0"), ("sft@s1", "sft+grpo@s1"), ("sft+grpo@s0", "sim-trained@s0"),
        ("sft+grpo@s1", "sim-trained@s1"), ("sft@s0+s1", "sft+grpo@s0+s1"),
        ("sft+grpo@s0+s1", "sim-trained@s0+s1"),
        # last, the ablation trained from SFT against SFT itself: its own gain, whatever the method's draw did
        ("sft@s0", "sim-trained@s0"), ("sft@s1", "sim-trained@s1"), ("sft@s0+s1", "sim-trained@s0+s1")]
    # per question, sim-trained's mean over the seeds minus the method's: q0 (0 + 1)/2 - 0.5 = 0, q1 0.25 - 0.25 = 0
    assert rows[5]["f1"][0] == 0.0 and rows[2]["f1"][0] == pytest.approx(-25.0)
    # against SFT: seed 1 q0 100 - 0, q1 50 - 0; over the seeds q0 (0 + 1)/2 - 0 = 50, q1 (0 + 0.5)/2 - 0 = 25
    assert rows[7]["f1"][0] == pytest.approx(75.0) and rows[8]["f1"][0] == pytest.approx(37.5)
    del dirs["sim-trained@s1"]  # an ablation in one seed only has no row over the seeds
    assert [(r["a"], r["b"]) for r in bl.comparisons(dirs, {"seeds": [0, 1]})][-2:] == [
        ("sft@s0+s1", "sft+grpo@s0+s1"), ("sft@s0", "sim-trained@s0")]
    # the base model's cold start is set against the method, not against an SFT it never had; last, against the
    # base model it started from (after every row a run recorded before it, whose indices stay)
    before = [(r["a"], r["b"]) for r in bl.comparisons(dirs, {"seeds": [0, 1]})]
    dirs["grpo-no-sft@s0"] = eval_dir("d0", [0.0, 1.0])
    dirs["base"] = eval_dir("base", [0.0, 0.5])
    rows = bl.comparisons(dirs, {"seeds": [0, 1]})
    pairs = [(r["a"], r["b"]) for r in rows]
    assert ("sft@s0", "grpo-no-sft@s0") not in pairs and ("sft+grpo@s0", "grpo-no-sft@s0") in pairs
    assert pairs[-1] == ("base", "grpo-no-sft@s0") and rows[-1]["f1"][0] == pytest.approx(25.0)
    assert [p for p in pairs if "base" not in p and "grpo-no-sft@s0" not in p] == before


def test_the_method_drawn_again_from_the_same_sft_policy_is_seeded_anew_and_its_spread_measured(tmp_path):
    # another draw runs wherever the method does, seeded apart from every other seed's run; the full preset
    # (the issue's arms) has none
    assert [bl.draw_seed(1, a) for a in ("sft+grpo", "no-precheck", "sft+grpo-d2", "sft+grpo-d3")] == [1, 1, 101, 201]
    preset = {**bl.PRESETS["main"], "arms": ["base", "sft", "sft+grpo", "no-precheck", "sft+grpo-d2"], "seeds": [0, 1]}
    assert bl.arms_in_seed(preset, 1) == ["sft", "sft+grpo", "sft+grpo-d2"]
    assert not set(bl.DRAWS) & set(bl.PRESETS["full"]["arms"]) and len(bl.DRAWS) == 2

    eval_dir = partial(_f1_eval_dir, tmp_path)
    dirs = {"sft@s0": eval_dir("a", [0.0, 0.0, 0.5]), "sft+grpo@s0": eval_dir("b", [1.0, 0.0, 0.5]),
            "sft+grpo-d2@s0": eval_dir("c", [0.0, 0.0, 0.5]), "sft+grpo-d3@s0": eval_dir("d", [0.0, 0.5, 0.0]),
            "sft@s1": eval_dir("e", [0.0]), "sft+grpo@s1": eval_dir("f", [1.0])}  # seed 1: one draw, no spread
    spread = bl.draw_spread(dirs, {"seeds": [0, 1]})
    assert list(spread) == ["s0"]  # one seed drawn more than once: nothing over the seeds
    d = spread["s0"]
    assert d["draws"] == ["sft+grpo@s0", "sft+grpo-d2@s0", "sft+grpo-d3@s0"]
    # gains over SFT: (100 + 0 + 0) / 3, 0, (0 + 50 - 50) / 3
    assert d["f1_gains"] == pytest.approx([33.33, 0.0, 0.0], abs=0.01) and d["f1_sd"] == pytest.approx(19.25, abs=0.02)
    # the draws' mean on each question: q0 1/3, q1 1/6, q2 1/3, against SFT's 0, 0, 1/2
    assert d["mean"]["b"] == "sft+grpo-d1..d3@s0" and d["mean"]["f1"][0] == pytest.approx(11.11, abs=0.01)
    # the draws are also set against the method and against SFT, as every arm trained from SFT is
    pairs = [(r["a"], r["b"]) for r in bl.comparisons(dirs, {"seeds": [0, 1]})]
    assert ("sft+grpo@s0", "sft+grpo-d2@s0") in pairs and ("sft@s0", "sft+grpo-d3@s0") in pairs
    recorded = json.loads(bl.RESULTS.read_text())["main-dapo-3seeds"]
    text = bl.doc_sections({"r": {**recorded, "draws": spread}})["r"]
    assert "drawn 3 times from seed 0's SFT policy" in text and "F1 +33.3, +0.0, +0.0 (standard deviation 19.2)" in text
    # seed 1 drawn twice too: over the seeds, each seed's draws' mean per question, the seeds averaged
    dirs.update({"sft@s1": eval_dir("h", [0.0, 0.5, 0.5]), "sft+grpo@s1": eval_dir("i", [0.0, 0.5, 0.5]),
                 "sft+grpo-d2@s1": eval_dir("j", [0.5, 0.5, 0.5])})
    over = bl.draw_spread(dirs, {"seeds": [0, 1]})["all"]
    assert over["seeds"] == ["s0", "s1"] and over["draws"] == 5 and over["gains_above_zero"] == 2
    # seed 0's draws minus SFT per question: 1/3, 1/6, -1/6; seed 1's: 1/4, 0, 0; averaged: 7/24, 1/12, -1/12
    assert over["mean"]["b"] == "sft+grpo-draws@s0+s1" and over["mean"]["f1"][0] == pytest.approx(
        100 * (7 / 24 + 1 / 12 - 1 / 12) / 3, abs=0.01)
    text = bl.doc_sections({"r": {**recorded, "draws": bl.draw_spread(dirs, {"seeds": [0, 1]})}})["r"]
    assert "Over the seeds (0, 1): 2 of 5 draws above SFT in F1" in text
    assert "ablations" not in over  # none ran beside the draws

    # an ablation from the SFT policy beside the draws: its place among them, and it minus their mean
    dirs.update({"no-precheck@s0": eval_dir("k", [0.0, 0.5, 0.5]), "no-precheck@s1": eval_dir("l", [0.5, 0.5, 0.5]),
                 "grpo-no-sft@s0": eval_dir("m", [0.0, 0.0, 0.0])})  # the cold start: another initial policy
    spread = bl.draw_spread(dirs, {"seeds": [0, 1]})
    a0 = spread["s0"]["ablations"]
    assert list(a0) == ["no-precheck"]
    # seed 0: gain (0 + 50 + 0) / 3 = 16.7, above the two draws that gained 0, under the one that gained 33.3;
    # minus the draws' mean per question: -1/3, +1/3, +1/6
    assert a0["no-precheck"]["f1_gain"] == pytest.approx(16.67, abs=0.01) and a0["no-precheck"]["above_draws"] == 2
    assert a0["no-precheck"]["row"]["a"] == "sft+grpo-d1..d3@s0"
    assert a0["no-precheck"]["row"]["f1"][0] == pytest.approx(100 * (-1 / 3 + 1 / 3 + 1 / 6) / 3, abs=0.01)
    # seed 1: gain (50 + 0 + 0) / 3, the same as the better draw's: above one of two (strictly)
    assert spread["s1"]["ablations"]["no-precheck"]["above_draws"] == 1
    # over the seeds, per question its seeds' mean minus the draws' seeds' mean: seed 0's differences -1/3, 1/3,
    # 1/6 and seed 1's 1/4, 0, 0 averaged: -1/24, 1/6, 1/12, a mean of 5/72
    row = spread["all"]["ablations"]["no-precheck"]
    assert (row["a"], row["b"]) == ("sft+grpo-draws@s0+s1", "no-precheck@s0+s1")
    assert row["f1"][0] == pytest.approx(100 * 5 / 72, abs=0.01)
    text = bl.doc_sections({"r": {**recorded, "draws": spread}})["r"]
    assert "no-precheck +16.7 F1 over SFT, above 2 of the 3 draws, minus the draws' mean 5.6 [" in text
    assert "minus the draws' mean on each question over the same seeds: no-precheck F1 6.9 [" in text


def test_one_runs_draws_are_set_against_anothers_from_the_same_sft_policy(tmp_path, capsys):
    from mtr.rundir import mark_done

    def eval_dir(root, name, f1s, answers=None, done=True):
        d = _f1_eval_dir(root, name, f1s)
        rows = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
        for r, a in zip(rows, answers or [str(f) for f in f1s]):
            r["prediction"] = a
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if done:
            mark_done(d, 1.0)
        return d

    other = tmp_path / "six-questions"
    other.mkdir()
    eval_dir(other, "eval-sft-s0", [0.0, 0.5, 0.0, 0.0])
    eval_dir(other, "eval-sft+grpo-s0", [0.0, 0.5, 0.0, 0.0])
    eval_dir(other, "eval-sft+grpo-d2-s0", [0.0, 0.0, 0.0, 0.5])
    eval_dir(other, "eval-sft+grpo-d3-s0", [1.0, 1.0], done=False)  # stopped halfway: not one of the draws
    # seed 1: the other run's evaluations hold none of this run's questions: said, and the seed left out
    eval_dir(other, "eval-sft-s1", [0.0])
    for name in ("eval-sft+grpo-s1", "eval-sft+grpo-d2-s1"):
        d = eval_dir(other, name, [0.0])
        (d / "predictions.jsonl").write_text((d / "predictions.jsonl").read_text().replace('"q0"', '"elsewhere"'))
    mine = tmp_path / "pool"
    mine.mkdir()
    dirs = {"sft@s0": eval_dir(mine, "eval-sft-s0", [0.0, 0.5, 0.0, 0.0], ["a", "b", "c", "x"]),
            "sft+grpo@s0": eval_dir(mine, "eval-sft+grpo-s0", [1.0, 0.5, 0.0, 0.0]),
            "sft+grpo-d2@s0": eval_dir(mine, "eval-sft+grpo-d2-s0", [1.0, 0.5, 0.5, 0.0]),
            "sft+grpo-d3@s0": eval_dir(mine, "eval-sft+grpo-d3-s0", [1.0, 0.5, 0.0, 0.0]),
            "sft@s1": eval_dir(mine, "eval-sft-s1", [0.0]), "sft+grpo@s1": eval_dir(mine, "eval-sft+grpo-s1", [1.0])}
    got = bl.draws_against(dirs, {"seeds": [0, 1, 2]}, other)  # seed 2: neither run has it
    assert got["work"] == "six-questions" and list(got) == ["work", "s0"]
    said = " ".join(capsys.readouterr().out.split())  # the console wraps its lines
    assert "no finished evaluations of the method's draws and of SFT in seed 1 " in said
    d = got["s0"]
    # SFT's answers: this run's a, b, c, x against the other's 0.0, 0.5, 0.0, 0.0: none alike
    assert d["same_sft_pct"] == 0.0
    # per question, mine 1, 0.5, 1/6, 0 against theirs 0, 0.25, 0, 0.25: (100 + 25 + 16.67 - 25) / 4
    assert d["row"]["a"] == "six-questions:d1..d2@s0" and d["row"]["b"] == "d1..d3@s0"
    assert d["row"]["f1"][0] == pytest.approx(29.17, abs=0.01) and d["row"]["n"] == 4
    res = {**json.loads(bl.RESULTS.read_text())["main-dapo-3seeds"], "draws_against": got}
    assert "against run directory `six-questions`'s from seed 0's SFT policy (SFT answered 0 % of the questions " \
        "alike in both)" in bl.doc_sections({"r": res})["r"]
    # the other run's work directory gone, its stored scores give the same rows (the halfway one never stored)
    finished = {n: other / f"eval-{n.replace('@', '-')}" for n in
                ("sft@s0", "sft+grpo@s0", "sft+grpo-d2@s0", "sft@s1", "sft+grpo@s1", "sft+grpo-d2@s1")}
    stored = tmp_path / "scores"
    stored.mkdir()
    bl.scores_file("six", stored).write_text(json.dumps(bl.stored_scores(finished)))
    from_stored = bl.draws_against(dirs, {"seeds": [0, 1, 2]}, "six", stored)
    assert from_stored["run"] == "six" and from_stored["s0"]["same_sft_pct"] == 0.0
    assert from_stored["s0"]["row"] == {**d["row"], "a": "six:d1..d2@s0"} and list(from_stored) == ["run", "s0"]
    # ... and SFT's answers alike where they are
    dirs["sft@s0"] = eval_dir(mine, "eval-sft-again-s0", [0.0, 0.5, 0.0, 0.0])
    assert bl.draws_against(dirs, {"seeds": [0]}, "six", stored)["s0"]["same_sft_pct"] == 100.0
    assert "against run `six`'s from seed 0's" in bl.doc_sections({"r": {**res, "draws_against": from_stored}})["r"]


def test_stored_scores_give_back_each_question_and_the_same_paired_rows(tmp_path):
    dirs = {}
    for name, scores in (("sft@s0", [(0.0, 0.25, 1), (1.0, 1.0, 1), (0.0, 0.0, 0)]),
                         ("sft+grpo@s0", [(1.0, 1.0, 1), (0.0, 1 / 3, 1)])):  # the third question not evaluated
        d = tmp_path / name
        d.mkdir()
        rows = [_prediction("2wiki", f"q{i}", em, f1, ans, 1) for i, (em, f1, ans) in enumerate(scores)]
        rows.append(_prediction("2wiki", "q0", 0.0, 0.5, 1, 2, mode="simulated"))
        (d / "predictions.jsonl").write_text("".join(json.dumps({**r, "prediction": f"p{i}"}) + "\n"
                                                     for i, r in enumerate(rows)))
        dirs[name] = d
    stored = json.loads(json.dumps(bl.stored_scores(dirs)))
    assert stored["questions"] == ["2wiki|q0", "2wiki|q1", "2wiki|q2"]
    live = stored["arms"]["sft+grpo@s0"]["live"]
    assert live == {"em": [1, 0, None], "f1": [1, 0.333333, None], "answered": [1, 1, None],
                    "prediction": ["p0", "p1", None]}
    assert stored["arms"]["sft@s0"]["simulated"]["f1"] == [0.5, None, None]
    (tmp_path / "scores").mkdir()
    bl.scores_file("r", tmp_path / "scores").write_text(json.dumps(stored))
    back = bl.evals_stored("r", tmp_path / "scores")
    assert set(back) == {"sft@s0", "sft+grpo@s0"} and back["sft@s0"]["answers"]["2wiki|q2"] == "p2"
    assert back["sft+grpo@s0"]["scores"]["2wiki|q1"]["f1"] == pytest.approx(100 / 3, abs=1e-4)
    live_of = {n: bl.question_scores(d)["live"] for n, d in dirs.items()}
    assert bl.paired_row("a", "b", back["sft@s0"]["scores"], back["sft+grpo@s0"]["scores"]) == \
        bl.paired_row("a", "b", live_of["sft@s0"], live_of["sft+grpo@s0"])
    bl.scores_file("bad", tmp_path / "scores").write_text('{"questions": ["x"]}')
    with pytest.raises(ValueError, match=r"bad.json: not a run's stored scores \(KeyError"):
        bl.evals_stored("bad", tmp_path / "scores")


def test_a_seed_recorded_on_another_machine_joins_the_comparisons_over_seeds_from_its_stored_scores(tmp_path,
                                                                                                   monkeypatch):
    preset = {**bl.PRESETS["full"], "arms": ["base", "sft", "sft+grpo", "trl-peer"], "seeds": [2, 0],
              "every_seed": True}
    old = tmp_path / "old"
    old.mkdir()
    # the recorded run: seed 0 on questions q0..q2; its SFT, method and peer
    finished = {"sft@s0": _f1_eval_dir(old, "eval-sft-s0", [0.0, 0.5, 0.0]),
                "sft+grpo@s0": _f1_eval_dir(old, "eval-sft+grpo-s0", [1.0, 0.5, 0.0]),
                "trl-peer@s0": _f1_eval_dir(old, "eval-trl-peer-s0", [0.0, 0.0, 0.5])}
    scores_dir, results_file = tmp_path / "scores", tmp_path / "learning.json"
    scores_dir.mkdir()
    bl.scores_file("old", scores_dir).write_text(json.dumps(bl.stored_scores(finished)))
    config = bl.base_config(preset, 0).model_dump(mode="json")
    recorded = {"preset": {**preset, "seeds": [0, 1]}, "arms": {n: {"live": {"all": {"n": 3}}} for n in finished},
                "curves": {"sft+grpo@s0": {"reward": [0.5]}, "trl-peer@s0": {"reward": [0.25]}}, "config": config}
    results_file.write_text(json.dumps({"old": recorded}))
    got = bl.stored_seed("old", 0, preset, results_file, scores_dir)
    assert set(got["scores"]) == set(finished) and got["arms"]["trl-peer@s0"] == {"live": {"all": {"n": 3}}}
    assert got["curves"] == recorded["curves"]
    assert got["scores"]["sft+grpo@s0"]["hotpotqa|q0"]["f1"] == 100.0
    # this run's seed 2 on q0..q3: over both seeds, each question's mean; q3 only in seed 2 is left out
    mine = tmp_path / "new"
    mine.mkdir()
    dirs = {"sft@s2": _f1_eval_dir(mine, "eval-sft-s2", [0.0, 0.0, 0.0, 1.0]),
            "sft+grpo@s2": _f1_eval_dir(mine, "eval-sft+grpo-s2", [0.5, 0.0, 0.0, 1.0]),
            "trl-peer@s2": _f1_eval_dir(mine, "eval-trl-peer-s2", [0.0, 0.0, 0.0, 1.0])}
    rows = {(r["a"], r["b"]): r for r in bl.comparisons(dirs, preset, got["scores"])}
    both = rows[("sft@s2+s0", "sft+grpo@s2+s0")]
    # per question: (0.5 + 1.0) / 2 - 0, (0 + 0.5) / 2 - 0.25, 0: 75 + 0 + 0 over three questions
    assert both["n"] == 3 and both["f1"][0] == pytest.approx(25.0)
    peer = rows[("sft+grpo@s2+s0", "trl-peer@s2+s0")]  # (0 - .75) + (0 - .25) + (.25 - 0) over three
    assert peer["f1"][0] == pytest.approx(-25.0)
    assert ("sft+grpo@s0", "trl-peer@s0") in rows and ("sft+grpo@s2", "trl-peer@s2") in rows
    # the run's own stored scores hold both seeds, on every question
    merged = bl.with_stored_scores(bl.stored_scores(dirs), {"old": list(finished)}, scores_dir)
    assert merged["questions"] == [f"hotpotqa|q{i}" for i in range(4)]
    assert merged["arms"]["trl-peer@s0"]["live"]["f1"] == [0, 0, 0.5, None]
    assert merged["arms"]["trl-peer@s2"]["live"]["f1"] == [0, 0, 0, 1]
    # not the same experiment, or an arm the recorded run lacks: one line naming it
    results_file.write_text(json.dumps({"old": {**recorded, "preset": {**recorded["preset"], "eval_limit": 30}}}))
    with pytest.raises(SystemExit, match=r"--seed-scores 0=old: run old ran with eval_limit 30, this run with 100"):
        bl.stored_seed("old", 0, preset, results_file, scores_dir)
    other_lr = json.loads(json.dumps(config))
    other_lr["grpo"]["trl"]["learning_rate"] = 1e-6  # a setting the preset leaves to the configuration
    results_file.write_text(json.dumps({"old": {**recorded, "config": other_lr}}))
    with pytest.raises(SystemExit, match=r"run old ran with other grpo settings than this run's"):
        bl.stored_seed("old", 0, preset, results_file, scores_dir)
    results_file.write_text(json.dumps({"old": recorded}))
    with pytest.raises(SystemExit, match=r"--seed-scores 0=old: run old holds no evaluation of grpo-no-sft@s0"):
        bl.stored_seed("old", 0, {**preset, "arms": preset["arms"] + ["grpo-no-sft"]}, results_file, scores_dir)
    with pytest.raises(SystemExit, match=r"ran seeds \[0, 1\], not 2"):
        bl.stored_seed("old", 2, preset, results_file, scores_dir)
    assert bl.stored_seeds_phrase({"seed_scores": {"0": "old"}}) == \
        " Seed 0 is run `old`'s, as recorded (its machine, its steps' times)."
    assert bl.stored_seeds_phrase({}) == ""
    # the command line: not the first seed, not a seed also run in a work directory, a run with stored scores
    monkeypatch.setattr(bl, "SCORES", scores_dir)
    assert bl.parse_seed_scores(["0=old"], [2, 0], []) == {0: "old"}
    with pytest.raises(SystemExit, match="the first runs here"):
        bl.parse_seed_scores(["2=old"], [2, 0], [])
    with pytest.raises(SystemExit, match=r"also given a work directory"):
        bl.parse_seed_scores(["0=old"], [2, 0], ["0=/tmp/x"])
    with pytest.raises(SystemExit, match=r"run gone has no stored scores"):
        bl.parse_seed_scores(["0=gone"], [2, 0], [])


def test_alternated_runs_each_variant_in_turn_in_its_own_process_and_names_a_failure(tmp_path, capsys):
    from bench_grpo_checkpointing import alternated

    script = tmp_path / "child.py"
    log = tmp_path / "order.txt"
    script.write_text("import json, os, sys\n"
                      f"open({str(log)!r}, 'a').write(sys.argv[-1] + ' ' + str(os.getpid()) + '\\n')\n"
                      "if sys.argv[-1] == 'bad': sys.exit('no model here')\n"
                      "print('noise'); print(json.dumps({'total_s': len(sys.argv), 'peak_rss_mb': 1}))\n")
    runs = alternated(str(script), ("a", "b"), 2, ["--x", "1"])
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [c[0] for c in calls] == ["a", "b", "a", "b"] and len({c[1] for c in calls}) == 4
    assert runs == {"a": [{"total_s": 5, "peak_rss_mb": 1}] * 2, "b": [{"total_s": 5, "peak_rss_mb": 1}] * 2}
    with pytest.raises(SystemExit, match="bad: the timing process failed: .*no model here"):
        alternated(str(script), ("bad",), 1, [])


def test_variant_medians_give_the_figures_each_timing_file_reports_from_its_runs():
    """The timing benchmarks' one helper for their medians reproduces what each committed results file holds
    from the runs it holds (the files were written by each script's own copy of it), and a median is of the
    runs, the per-token time of the median total."""
    from bench_eval_memory import median
    from bench_grpo_checkpointing import variant_medians

    results = ROOT / "benchmarks" / "results"
    checks = {"grpo_checkpointing": dict(per_token=("ms_per_token", "tokens")),
              "grpo_packing": dict(per_token=("ms_per_episode_token", "episode_tokens"),
                                   copied=("scored_tokens", "logprob_tile")),
              "sft_checkpointing": dict(per_token=("ms_per_token", "tokens_seen"), copied=("tokens_seen", "loss_last")),
              "sft_packing": dict(copied=("tokens_seen", "loss_last", "logprob_tile"))}
    for name, kwargs in checks.items():
        stored = json.loads((results / f"{name}.json").read_text())
        assert variant_medians(stored["runs"], **kwargs) == stored["median"], name
    lora = json.loads((results / "grpo_lora.json").read_text())
    assert median(lora["runs"], tuple(next(iter(lora["median"].values())))) == lora["median"]

    runs = {"a": [{"total_s": 10.0, "peak_rss_mb": 100.4, "tokens": 1000}, {"total_s": 30.0, "peak_rss_mb": 300.6,
                                                                            "tokens": 7}]}
    assert variant_medians(runs, per_token=("ms", "tokens"), copied=("tokens",)) == \
        {"a": {"total_s": 20.0, "peak_rss_mb": 200, "tokens": 1000, "ms": 20.0}}


def test_an_sft_timing_file_records_its_datas_file_hash_and_traces(tmp_path):
    import hashlib

    from bench_sft_packing import ROOT, sft_data_fields

    data = tmp_path / "sft.jsonl"
    data.write_text('{"messages": []}\n\n{"messages": []}\n')
    f = sft_data_fields(data, 3)
    assert f == {"data": str(data.resolve()), "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                 "traces": 2, "steps": 3, "traces_trained": 12}
    inside = sft_data_fields(ROOT / "pyproject.toml", 1)  # a file in the repository: named relative to it
    assert inside["data"] == "pyproject.toml"


def test_the_benchmark_trains_sfts_four_traces_as_one_packed_row():
    """The benchmark packs SFT's step (sft.share_prompt over a micro-batch of 4); the demo, for memory, does not."""
    from mtr.config import load_config

    t = bl.base_config(bl.PRESETS["quick"], 0).sft
    assert (t.trl["per_device_train_batch_size"], t.trl["gradient_accumulation_steps"], t.share_prompt) == (4, 1, True)
    demo = load_config(bl.DEMO).sft.trl
    assert (demo["per_device_train_batch_size"], demo["gradient_accumulation_steps"]) == (1, 4)


def test_the_benchmark_keeps_activations_and_the_demo_recomputes_them():
    """The benchmark's machine has memory for SFT's and GRPO's activations (bench_sft_checkpointing.py,
    bench_grpo_checkpointing.py); the demo, run on laptops, recomputes them. The setting reaches TRL's arguments."""
    from trl import GRPOConfig, SFTConfig

    from mtr.config import load_config
    from mtr.training import trainer_args

    cfg, demo = bl.base_config(bl.PRESETS["quick"], 0), load_config(bl.DEMO)
    assert cfg.sft.trl["gradient_checkpointing"] is False and cfg.grpo.trl["gradient_checkpointing"] is False
    assert demo.sft.trl["gradient_checkpointing"] is True and demo.grpo.trl["gradient_checkpointing"] is True
    for config_class, section in ((SFTConfig, cfg.sft), (GRPOConfig, cfg.grpo)):
        args = trainer_args(config_class, config_class.__name__, section.trl, Path("/tmp/unused"), 0)
        assert getattr(args, "activation_checkpointing", getattr(args, "gradient_checkpointing", None)) is False


def test_the_benchmark_runs_its_own_checkouts_mtr_not_the_installed_one(tmp_path):
    """Run from a git worktree with main's virtual environment, the benchmark must train with the worktree's
    code (and record its commit): its src/ comes before the editable install's."""
    import shutil
    import subprocess

    (tmp_path / "benchmarks").mkdir()
    shutil.copy(bl.__file__, tmp_path / "benchmarks" / "bench_learning.py")
    (tmp_path / "src" / "mtr").mkdir(parents=True)
    (tmp_path / "src" / "mtr" / "__init__.py").write_text("")
    code = (f"import runpy; runpy.run_path({str(tmp_path / 'benchmarks' / 'bench_learning.py')!r}, run_name='x'); "
            "import mtr; print(mtr.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == tmp_path / "src" / "mtr" / "__init__.py"


def test_quick_and_another_preset_together_are_refused_in_one_line():
    import subprocess

    out = subprocess.run([sys.executable, str(Path(bl.__file__)), "--quick", "--preset", "main"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "not allowed with argument --quick" in out.stderr.strip().splitlines()[-1]


def test_an_unknown_arm_to_evaluate_with_simulated_tools_is_refused_in_one_line(tmp_path):
    import subprocess

    out = subprocess.run([sys.executable, str(Path(bl.__file__)), "--preset", "main", "--work", str(tmp_path),
                          "--simulated-eval", "sft,nope"], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
        "--simulated-eval: unknown arm(s) ['nope']")
    assert not any(tmp_path.iterdir())  # refused before any step ran


def test_a_work_directory_moved_elsewhere_keeps_its_finished_steps(tmp_path):
    """A checkpoint a step wrote is known by its name and when that step finished, not by its path: a work
    directory moved (or a seed's steps copied into another) skips them; another checkpoint, or the same one
    trained again, runs them again. The embedded model, which no step wrote, is known by its path."""
    calls = []

    def fn(fresh):
        calls.append(fresh)
        return {}

    old_home, new_home = tmp_path / "old" / "main-t07", tmp_path / "new" / "main-t07"
    ident = {"eval": {"limit": 30}, "policy": str(old_home / "sft-s0"), "policy_done": "2026-12-01T10:00:00Z"}
    d = tmp_path / "eval-sft-s0"
    bl.run_step(d, ident, fn)
    moved = {**ident, "policy": str(new_home / "sft-s0")}
    bl.run_step(d, moved, fn)
    assert calls == [False]  # skipped
    assert bl.continues(ident, {**moved, "eval": {"limit": 100}})  # and extended, not redone, on more questions
    bl.run_step(d, {**moved, "policy": str(new_home / "sft-s1")}, fn)
    assert calls == [False, True]
    bl.run_step(d, {**moved, "policy": str(new_home / "sft-s1"), "policy_done": "2026-12-02T09:00:00Z"}, fn)
    assert calls == [False, True, True]
    base = {"eval": {"limit": 30}, "policy": "/a/embedded", "policy_done": None}
    assert not bl.continues(base, {**base, "policy": "/b/embedded"})
    grpo = {"seed": 0, "init": str(old_home / "sft-s0"), "init_done": "2026-12-01T10:00:00Z"}
    assert bl.portable(grpo) == bl.portable({**grpo, "init": str(new_home / "sft-s0")})
    assert bl.portable(None) is None


def test_a_step_that_goes_on_in_a_moved_work_directory_follows_its_checkpoint_there(tmp_path):
    """An evaluation finished in one work directory and extended after the directory was copied elsewhere: the
    stage's manifest named the old checkpoint's path and refused to go on; `run_step` now points it at the
    same checkpoint (by name) in its new home first. Another checkpoint's manifest is left as it was."""
    from mtr.rundir import RunDirError, write_manifest

    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")

    def config(policy):
        return {"eval": {"limit": 30}, "roles": {"policy": {"backend": "hf", "model": str(policy)}}}

    old_home, new_home = tmp_path / "old", tmp_path / "new"
    d = new_home / "eval-sft-s0"
    write_manifest(d, "eval", config(old_home / "sft-s0"), {"data": data}, extra={"init": str(old_home / "sft-s0")})
    moved = new_home / "data.jsonl"
    moved.parent.mkdir(parents=True, exist_ok=True)
    moved.write_text(data.read_text())
    with pytest.raises(RunDirError, match="its config differs"):
        write_manifest(d, "eval", config(new_home / "sft-s0"), {"data": moved},
                       extra={"init": str(new_home / "sft-s0")}, inputs_may_grow=False)
    bl.follow_move(d, new_home / "sft-s1")  # another checkpoint: nothing to follow
    assert json.loads((d / "manifest.json").read_text())["config"] == config(old_home / "sft-s0")

    ident = {"eval": {"limit": 30}, "policy": str(old_home / "sft-s0"), "policy_done": "2026-12-01T10:00:00Z"}
    bl.run_step(d, ident, lambda fresh: {})
    went_on = []

    def extend(fresh):  # what the evaluation stage checks before it adds questions
        went_on.append(fresh)
        write_manifest(d, "eval", config(new_home / "sft-s0"), {"data": moved},
                       extra={"init": str(new_home / "sft-s0")})
        return {}

    bl.run_step(d, {**ident, "policy": str(new_home / "sft-s0"), "eval": {"limit": 100}}, extend,
                on_resume=lambda: bl.follow_move(d, new_home / "sft-s0", {"data": moved}))
    assert went_on == [False]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["config"] == config(new_home / "sft-s0") and manifest["init"] == str(new_home / "sft-s0")
    assert manifest["inputs"]["data"]["path"] == str(moved)


def test_a_step_resumed_after_a_crash_counts_the_time_of_every_attempt(tmp_path):
    """A step stopped before it finished and then resumed took both attempts' time; one restarted afresh
    (its settings changed) only its own."""
    import time

    def crash(fresh):
        time.sleep(0.3)
        raise KeyboardInterrupt  # killed mid-step

    def finish(fresh):
        time.sleep(0.3)
        return {}

    d = tmp_path / "step"
    with pytest.raises(KeyboardInterrupt):
        bl.run_step(d, {"a": 1}, crash)
    assert json.loads((d / "bench_elapsed.json").read_text())["wall_s"] >= 0.3
    bl.run_step(d, {"a": 1}, finish)
    assert json.loads((d / "stage_done.json").read_text())["wall_s"] >= 0.6
    assert not (d / "bench_elapsed.json").exists()

    (d / "stage_done.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        bl.run_step(d, {"a": 1}, lambda fresh: time.sleep(2.0) or crash(fresh))
    bl.run_step(d, {"a": 2}, lambda fresh: {})  # another identity: afresh, the 2.3 s before not its own
    assert json.loads((d / "stage_done.json").read_text())["wall_s"] < 2.0


def test_the_step_clock_writes_while_the_step_runs(tmp_path):
    import time

    with bl.step_clock(tmp_path / "c.json", 5.0, every_s=0.05) as elapsed:
        time.sleep(0.3)
        during = json.loads((tmp_path / "c.json").read_text())["wall_s"]
        assert 5.0 < during <= elapsed()
    assert json.loads((tmp_path / "c.json").read_text())["wall_s"] >= 5.3


def test_the_step_clock_never_carries_another_steps_time(tmp_path):
    """A step started afresh drops the clock of the one before at once (a kill within 30 s would otherwise
    resume with it); a step finished, then extended, ignores a clock its finish already counted."""
    import os

    d = tmp_path / "step"
    with pytest.raises(KeyboardInterrupt):
        bl.run_step(d, {"eval": {"limit": 30}}, lambda fresh: (_ for _ in ()).throw(KeyboardInterrupt))
    (d / "bench_elapsed.json").write_text(json.dumps({"wall_s": 1000.0}))
    seen = []
    bl.run_step(d, {"eval": {"limit": 30}, "policy": "other"}, lambda fresh: seen.append(
        (fresh, (d / "bench_elapsed.json").exists())) or {})
    assert seen == [(True, False)]

    (d / "bench_elapsed.json").write_text(json.dumps({"wall_s": 1000.0}))  # left by a stop after the finish
    done = json.loads((d / "stage_done.json").read_text())
    os.utime(d / "bench_elapsed.json", (1, 1))
    (d / "stage_done.json").write_text(json.dumps({**done, "wall_s": 5.0}))
    bl.run_step(d, {"eval": {"limit": 100}, "policy": "other"}, lambda fresh: {})  # extended
    assert 5.0 <= json.loads((d / "stage_done.json").read_text())["wall_s"] < 100.0


def _logged_episode(step, queries, answer, observation='{"text": "Founded in 1755."}', sample=0):
    """A line of GRPO's samples.jsonl: one training episode of step `step`."""
    from mtr.trace import Check, Step, ToolCall, Trace

    steps = [Step(call=ToolCall(name="search", arguments={"query": q}), observation=observation,
                  checks=[Check(code="tool_exists", ok=True), Check(code="args_valid", ok=True)]) for q in queries]
    trace = Trace(id=f"q{step}#{sample}", question="In what year was Moscow State University founded?",
                  answers=["1755"], steps=[*steps, Step(answer=answer)])
    return json.dumps({"step": step, "trace": trace.model_dump(mode="json", exclude_none=True)})


def test_logged_training_episodes_are_scored_by_the_calls_they_made(tmp_path):
    from mtr.rubric import Rubric

    episode = _logged_episode
    lines = [episode(0, ["MSU"], "1755"), episode(1, ["MSU"], "1756", '{"text": "A university."}'),
             episode(2, ["MSU", "MSU founded"], "1755"),
             episode(2, ["MSU", "MSU founded"], "1755"),  # step 2 logged again after a resume: counted once
             episode(2, ["MSU"], "1756", '{"text": "A university."}', sample=1),  # its group's other episode
             '{"step": 3, "trace": {"id": "q3#0", "quest']  # cut short by a crash
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    rubric = Rubric({"answer": 1.0, "format": 0.5, "consistency": 0.5, "efficiency": 0.2}, call_budget=1,
                    call_penalty=0.1)
    got = bl.episodes_by_calls(tmp_path / "samples.jsonl", rubric)
    assert list(got) == ["1", "2", "more_calls", "unreadable"] and got["unreadable"] == {"n": 1}
    one, two = got["1"], got["2"]
    assert one["n"] == 3 and two["n"] == 1
    assert one["answer"] == pytest.approx(1 / 3, abs=1e-4) and one["consistency"] == pytest.approx(1 / 3, abs=1e-4)
    assert two["answer"] == 1.0 and two["efficiency"] == -0.1  # the second call's penalty, before its weight
    assert two["total"] == pytest.approx(1.0 + 0.5 + 0.5 - 0.02)
    assert one["total"] == pytest.approx((2.0 + 0.5 + 0.5) / 3, abs=1e-4)
    # within step 2's group: the two-call episode (right, grounded) minus the one-call episode (wrong, not)
    assert got["more_calls"]["n"] == 1 and got["more_calls"]["answer"] == 1.0
    assert got["more_calls"]["total"] == pytest.approx(1.98 - 0.5)
    # the run's own weights make the total: without consistency the grounded answer earns no more
    flat = bl.episodes_by_calls(tmp_path / "samples.jsonl", Rubric({"answer": 1.0, "format": 0.5}))
    assert flat["2"]["total"] == pytest.approx(1.5) and flat["2"]["consistency"] == 1.0
    # reward_curve gives it with the run's rubric, and not without one (grpo_settings' curves)
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 1, "reward": 1.0}) + "\n")
    assert bl.reward_curve(tmp_path, rollouts=4, rubric=rubric)["by_calls"] == got
    assert "by_calls" not in bl.reward_curve(tmp_path, rollouts=4)


def test_the_invalid_calls_of_the_logged_training_episodes_are_counted(tmp_path):
    from mtr.trace import Check, Step, ToolCall, Trace

    bad = Trace(id="q9#0", question="When?", answers=["1755"], steps=[
        Step(call=ToolCall(name="search", arguments={"query": 5}), observation='{"text": "Founded in 1755."}',
             checks=[Check(code="tool_exists", ok=True), Check(code="args_valid", ok=False, detail="query: 5")]),
        # an unknown tool and an observation the tool spoiled: not what the pre-check plays or stops
        Step(call=ToolCall(name="nope", arguments={}), checks=[Check(code="tool_exists", ok=False)]),
        Step(call=ToolCall(name="search", arguments={"query": "MSU"}), observation="not JSON",
             checks=[Check(code="tool_exists", ok=True), Check(code="args_valid", ok=True),
                     Check(code="observation_valid", ok=False)]),
        Step(answer="1755")])
    lines = [_logged_episode(0, ["MSU", "MSU founded"], "1755"), _logged_episode(1, ["MSU"], "1755"),
             json.dumps({"step": 9, "trace": bad.model_dump(mode="json", exclude_none=True)})]
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    assert bl.invalid_calls(tmp_path / "samples.jsonl") == {"calls": 6, "invalid": 1}
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 1, "reward": 1.0}) + "\n")
    assert bl.reward_curve(tmp_path, rollouts=4)["invalid_calls"] == {"calls": 6, "invalid": 1}


def test_the_passages_the_tools_returned_in_training_are_measured_by_who_played_them(tmp_path):
    from mtr.trace import Step, ToolCall, Trace

    def episode(step, observations, sample=0, question="When was MSU founded?", answer="1755"):
        steps = [Step(call=ToolCall(name="search", arguments={"query": query}), observation=o, player=who)
                 for who, o, query in observations]
        trace = Trace(id=f"q{step}#{sample}", question=question, answers=[answer],
                      steps=[*steps, Step(answer=answer)])
        return json.dumps({"step": step, "trace": trace.model_dump(mode="json", exclude_none=True)})

    def results(*items):
        return json.dumps({"results": [{"title": t, "text": x} for t, x in items]})

    live = results(("Moscow State University", "Moscow State University was founded in 1755 by Lomonosov."))
    acted = results(("Moscow State University", "Moscow State University"), ("MSU", "Founded in 1755."),
                    ("Lomonosov", ""))
    lines = [episode(0, [("live:bm25", live, "MSU"), ("toolactor", acted, "MSU")]),
             episode(0, [("live:bm25", live, "MSU"), ("toolactor", acted, "MSU")]),  # logged again after a resume: once
             episode(1, [("toolactor", "not JSON", "MSU"), ("toolactor", '{"value": 3}', "MSU"),
                         ("toolactor", '["x"]', "MSU"), ("toolactor", '{"results": []}', "Lomonosov")]),
             # a yes-or-no question: its observations are not counted for the gold answer, nor answered again
             episode(3, [("toolactor", '{"results": []}', "Harvard")], question="Is MSU older?", answer="no"),
             '{"step": 2, "trace": {"id": "q2#0", "quest']  # cut short by a crash
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    got = bl.observed_passages(tmp_path / "samples.jsonl")
    # two simulated observations with results: one held the answer (in a passage's text), one was empty
    assert got == {"live": {"passages": 1, "median_chars": 57, "title_only_pct": 0.0, "answer_observations": 1,
                            "answer_pct": 100.0},
                   "simulated": {"passages": 3, "median_chars": 16, "title_only_pct": 66.7, "answer_observations": 2,
                                 "answer_pct": 50.0}}

    class Retriever:  # the same calls answered live: the answer for MSU, a passage without it for Lomonosov
        asked = []

        async def observe(self, trace, tool, call, memo):
            self.asked.append(call.arguments["query"])
            text = "founded in 1755" if call.arguments["query"] == "MSU" else "a chemist"
            return results(("x", text)), None, 0

    replayed = bl.observed_passages(tmp_path / "samples.jsonl", {"search": Retriever()})
    assert Retriever.asked == ["MSU", "Lomonosov"]  # simulated calls only, each once
    assert replayed["simulated"] == {**got["simulated"], "live_answer_pct": 50.0} and replayed["live"] == got["live"]
    Retriever.asked = []
    assert bl.observed_passages(tmp_path / "samples.jsonl", {"lookup": Retriever()}) == got  # no player of search
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 1, "reward": 1.0}) + "\n")
    curve = bl.reward_curve(tmp_path, rollouts=4)
    assert curve["passages"] == got and curve["question_ids"] == ["q0", "q1", "q3"]
    # the docs' line for a run whose curve holds them
    res = {"curves": {"sim-trained@s0": {"passages": got}}}
    line = "".join(bl.passages_lines(res["curves"]))
    assert "sim-trained@s0: live 1 passages, median 57 characters, 0 % no longer than their title" in line
    assert "simulated 3 passages, median 16 characters, 67 % no longer than their title, a gold answer in 50 % of 2" in line
    replayed_line = "".join(bl.passages_lines({"sim-trained@s0": {"passages": replayed}}))
    assert "a gold answer in 50 % of 2 observations (the retriever, asked the same calls: 50 %)" in replayed_line
    assert bl.passages_lines({"sft+grpo@s0": {}}) == []  # a run recorded before they were measured


def test_the_questions_an_arm_trained_on_are_set_against_the_methods_in_its_seed():
    curves = {"sft+grpo@s0": {"question_ids": ["a", "b", "c"]}, "sim-trained@s0": {"question_ids": ["c", "d", "e"]},
              "mixed-trained@s0": {"question_ids": ["a", "b", "c"]}, "sim-trained@s1": {"question_ids": ["a"]},
              "trl-peer@s0": {}}
    line = "".join(bl.questions_lines(curves))
    assert "sim-trained@s0 1 of its 3; mixed-trained@s0 3 of its 3." in line
    assert "@s1" not in line and "trl-peer" not in line  # no method in seed 1; the peer logs no episodes
    assert bl.questions_lines({"sim-trained@s0": {"question_ids": ["a"]}}) == []


def test_the_transfer_arms_choose_their_questions_as_the_method_does():
    for arm in ("sim-trained", "mixed-trained"):
        assert bl.ARMS[arm]["grpo"]["tool_mode"] == "simulated" and bl.ARMS[arm]["solvable_mode"] == "live"


def test_a_gold_answer_in_a_passage_counts_only_where_the_question_does_not_give_it():
    from mtr.trace import Trace

    def asks(question, *answers):
        return bl.answer_to_find(Trace(id="q", question=question, answers=list(answers)))

    assert asks("When was MSU founded?", "1755")
    assert not asks("Which film came out first, Alien or Heat?", "Heat")  # a comparison names its answer
    assert not asks("Are both films American?", "Yes") and not asks("Is MSU older?", "no", "No.")
    assert asks("Who directed Heat?", "Michael Mann")  # the question's words are not the answer


def test_a_runs_logged_episodes_are_rescored_from_its_work_directories_with_its_own_weights(tmp_path):
    from mtr.config import GRPOStageConfig

    if not bl.RESULTS.is_file():
        pytest.skip("no learning results yet")
    runs = json.loads(bl.RESULTS.read_text()).values()
    run = next((r for r in runs if {"sft+grpo@s0", "sft+grpo@s1", "trl-peer@s0"} <= set(r["curves"])), None)
    if run is None:
        pytest.skip("no run with the method in two seeds and the TRL peer")
    grpo = GRPOStageConfig().model_dump(mode="json")
    grpo["reward_weights"] = {"answer": 1.0, "format": 0.5}  # the run's weights, not today's defaults
    run = {**run, "config": {**run["config"], "grpo": grpo},
           "curves": {k: {c: v for c, v in run["curves"][k].items() if c != "by_calls"}
                      for k in ("sft+grpo@s0", "sft+grpo@s1", "trl-peer@s0")}}  # TRL's loop logs no episodes
    results, doc = tmp_path / "learning.json", tmp_path / "learning.md"
    results.write_text(json.dumps({"old": run, "other": run}))
    doc.write_text("# doc\n<!--learning:old-->\n<!--/learning-->\n")
    work, other = tmp_path / "w0", tmp_path / "w1"
    for d, seed in ((work, 0), (other, 1)):  # each GRPO run's log: the rewards the run's curve holds
        (d / f"grpo-sft+grpo-s{seed}").mkdir(parents=True)
        (d / f"grpo-sft+grpo-s{seed}" / "log.jsonl").write_text("".join(
            json.dumps({"step": i, "reward": r}) + "\n" for i, r in enumerate(run["curves"][f"sft+grpo@s{seed}"]["reward"])))
    (work / "grpo-sft+grpo-s0" / "samples.jsonl").write_text(
        _logged_episode(0, ["MSU", "MSU founded"], "1755") + "\n"
        + _logged_episode(0, ["MSU"], "1756", '{"text": "A university."}', sample=1) + "\n")
    # seed 1 ran in its own directory: without it, refused in one line and nothing written
    with pytest.raises(SystemExit, match=r"curve sft\+grpo@s1 has no logged episodes at .*w0/grpo-sft\+grpo-s1"):
        bl.rescore_run("old", work, None, results, doc)
    assert json.loads(results.read_text())["old"] == run
    (other / "grpo-sft+grpo-s1" / "samples.jsonl").write_text(_logged_episode(0, ["MSU"], "1755") + "\n")
    # another GRPO run in seed 1's directory (a later run of the preset there): not this run's episodes
    log = other / "grpo-sft+grpo-s1" / "log.jsonl"
    ours = log.read_text()
    log.write_text(json.dumps({"step": 0, "reward": -1.0}) + "\n")
    with pytest.raises(SystemExit, match=r"the GRPO run in .*w1/grpo-sft\+grpo-s1 is not the one of curve"):
        bl.rescore_run("old", work, [f"1={other}"], results, doc)
    log.write_text(ours)
    assert bl.rescore_run("old", work, [f"1={other}"], results, doc) == ["sft+grpo@s0", "sft+grpo@s1"]
    got = json.loads(results.read_text())
    s0, s1 = got["old"]["curves"]["sft+grpo@s0"], got["old"]["curves"]["sft+grpo@s1"]
    assert s0["reward"] == run["curves"]["sft+grpo@s0"]["reward"] and s0["by_calls"]["more_calls"]["answer"] == 1.0
    assert s0["by_calls"]["2"]["total"] == pytest.approx(1.5)  # the run's weights: consistency counts nothing
    assert list(s1["by_calls"]) == ["1"] and s1["by_calls"]["1"]["n"] == 1
    assert s1["invalid_calls"] == {"calls": 1, "invalid": 0}
    assert "by_calls" not in got["old"]["curves"]["trl-peer@s0"]
    assert got["other"] == run
    assert "the one with more minus the one with fewer" in doc.read_text()  # the section, with the new figures
    with pytest.raises(SystemExit, match="no run 'gone'"):
        bl.rescore_run("gone", work, None, results, doc)


def test_only_the_arms_trained_against_simulated_tools_have_their_calls_asked_again_of_the_retriever(monkeypatch):
    from mtr.config import GRPOStageConfig

    monkeypatch.setattr(bl, "retrieval_players", lambda retriever: {"search": retriever})
    replayed = {arm for arm, spec in bl.ARMS.items() if "grpo" in spec
                and bl.replay_players(GRPOStageConfig().model_copy(update=spec["grpo"]), "bm25") == {"search": "bm25"}}
    assert replayed == {"sim-trained", "mixed-trained"}
    assert bl.replay_players(GRPOStageConfig(tool_mode="live"), "bm25") is None


def test_a_draw_takes_the_methods_answers_only_where_the_method_started_as_the_draw_will(tmp_path):
    from mtr.config import Config
    from mtr.rundir import checkpoint_stamp, mark_done

    sft, method = tmp_path / "sft-s0", tmp_path / "grpo-sft+grpo-s0"
    mark_done(sft, 1.0)
    grpo = Config().grpo
    assert not bl.same_start(method, "data-1", sft, grpo)  # the method has not started
    method.mkdir()
    (method / "bench_identity.json").write_text(json.dumps(
        {"data": "data-1", "grpo": grpo.model_dump(mode="json"), "seed": 0, "init": str(sft),
         "init_done": checkpoint_stamp(sft)}))
    assert bl.same_start(method, "data-1", sft, grpo)
    assert not bl.same_start(method, "data-2", sft, grpo)  # other questions
    assert not bl.same_start(method, "data-1", sft, grpo.model_copy(update={"question_order": "solvable-first"}))
    # a simulated judge reads the ToolActor's grounding; a live one does not
    assert bl.judged_by({"tool_mode": "simulated", "grounding": "retrieval"}, None) != bl.judged_by(
        {"tool_mode": "simulated", "grounding": "none"}, None)
    assert bl.judged_by({"tool_mode": "simulated", "grounding": "retrieval"}, "live") == bl.judged_by(
        {"tool_mode": "live", "grounding": "none"}, None)
    # an arm trained against simulated tools and judged with live ones answers as the method did; judged
    # with the tools it trains against, it does not; with the pre-check off it takes the answers the pre-check
    # did not change (take_answers)
    live = grpo.model_copy(update={"tool_mode": "live"})
    (method / "bench_identity.json").write_text(json.dumps(
        {"data": "data-1", "grpo": live.model_dump(mode="json"), "seed": 0, "init": str(sft),
         "init_done": checkpoint_stamp(sft)}))
    simulated = live.model_copy(update={"tool_mode": "simulated", "grounding": "retrieval", "live_share": 0.5})
    assert bl.same_start(method, "data-1", sft, simulated, "live")
    assert not bl.same_start(method, "data-1", sft, simulated)
    assert bl.same_start(method, "data-1", sft, live.model_copy(update={"precheck": False}))
    # the arms the presets run that take the method's answers, by their specs
    assert {a for a in bl.ARMS if bl.shares_answers(a)} == {
        "sft+grpo-d2", "sft+grpo-d3", "trl-peer", "sim-trained", "mixed-trained", "no-precheck"}
    (sft / "stage_done.json").write_text(json.dumps({"wall_s": 1.0, "finished": "2099-01-01T00:00:00Z"}))
    assert not bl.same_start(method, "data-1", sft, live)  # SFT trained again since the method started


def test_a_step_records_how_many_of_the_methods_answers_it_took(tmp_path):
    from mtr.stages.grpo import take_answers

    theirs, mine = tmp_path / "method.jsonl", tmp_path / "arm.jsonl"
    rows = [{"id": "q0", "f1": 1.0, "precheck": True, "invalid_args": 0},
            {"id": "q1", "f1": 0.0, "precheck": True, "invalid_args": 1}]
    theirs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bl.answers_taken(mine, theirs) == 0  # nothing there yet
    take_answers(mine, theirs, precheck=False)  # the pre-check ablation: q1's episode made an invalid call
    with mine.open("a") as f:  # ... which it answers itself
        f.write(json.dumps({"id": "q1", "f1": 0.5, "precheck": False, "invalid_args": 1}) + "\n")
    assert bl.answers_taken(mine, theirs) == 1
    old = tmp_path / "old.jsonl"  # a method's answers from before they recorded the setting: none taken
    old.write_text("".join(json.dumps({k: v for k, v in r.items() if k == "id" or k == "f1"}) + "\n" for r in rows))
    take_answers(tmp_path / "arm2.jsonl", old, precheck=False)
    assert bl.answers_taken(tmp_path / "arm2.jsonl", old) == 0


def test_the_trl_peer_takes_the_methods_answers_and_loads_no_policy_when_they_are_all_there(tmp_path, monkeypatch):
    from mtr.config import Config
    from mtr.data import load_qa
    from mtr.stages import grpo as grpo_stage

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answers": ["a"]}) + "\n"
                            for i in range(3)))
    method = tmp_path / "method" / "solvable.jsonl"
    method.parent.mkdir()
    method.write_text("".join(json.dumps({"id": q, "prediction": "a" if f else "b", "f1": f}) + "\n"
                              for q, f in (("q0", 0.0), ("q1", 0.0), ("q2", 1.0))))
    monkeypatch.setattr(grpo_stage, "BackendPool", lambda *a, **k: pytest.fail("a policy was loaded"))
    cfg = Config()
    cfg.grpo.tool_mode = "off"
    out = tmp_path / "peer"
    out.mkdir()
    import trl_peer

    ranked = trl_peer.peer_solvable_first(cfg, load_qa(data), tmp_path / "init", out, method)
    assert [ex.id for ex in ranked] == ["q2", "q0", "q1"] and (out / "solvable.jsonl").read_text() == method.read_text()


def test_the_first_quarters_questions_are_sampled_again_from_the_trained_policy_and_paired(tmp_path, monkeypatch):
    """With each question seen once, the reward of GRPO's first-quarter questions is read again from the trained
    policy (the same Environment and Rubric, a group each), paired by question; a re-run samples nothing."""
    import transformers

    import mtr.backends
    import mtr.checkpoints
    from mtr.agents import PolicyAgent
    from mtr.config import Config
    from mtr.rollout import RolloutAgent
    from mtr.rubric import Rubric
    from mtr.trace import Trace

    sys.path.insert(0, str(ROOT / "tests"))
    from scripted import Pool, ScriptedBackend

    grpo = tmp_path / "grpo"
    grpo.mkdir()
    data = tmp_path / "qa.jsonl"
    answers = {f"q{i}": a for i, a in enumerate(["1755", "x", "1755", "y", "1755", "z", "w", "v"])}
    data.write_text("".join(json.dumps({"id": q, "question": f"Question {q}?", "answers": [a]}) + "\n"
                            for q, a in answers.items()))
    trained = [0.2, 0.1, 0.4, 0.3, 0.9, 0.9, 0.9, 0.9]  # eight steps: a quarter is the first two
    (grpo / "log.jsonl").write_text("".join(json.dumps({"step": i + 1, "reward": r}) + "\n"
                                            for i, r in enumerate(trained)))
    with (grpo / "samples.jsonl").open("w") as f:
        for step, q in enumerate(answers):  # two of each step's group logged, as training logs them
            for i in range(2):
                trace = Trace(id=f"{q}#{i}", question=f"Question {q}?", answers=[answers[q]])
                f.write(json.dumps({"step": step, "trace": trace.model_dump(mode="json")}) + "\n")
    assert bl.quarter_groups(grpo) == [(1, "q0", 0.2), (2, "q1", 0.1)]

    cfg = Config()
    cfg.grpo.tool_mode = "off"
    cfg.tools.toolmaker = False
    backend = ScriptedBackend(agent=lambda m: "<think>I recall it.</think>\n<answer>1755</answer>")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: type("M", (), {"eval": lambda self: self})())
    monkeypatch.setattr(mtr.checkpoints, "load_tokenizer", lambda *a, **k: None)
    monkeypatch.setattr(mtr.backends, "BackendPool", lambda cfg: Pool(backend))
    monkeypatch.setattr(RolloutAgent, "with_model", lambda *a, **k: PolicyAgent(backend))
    from mtr.env import Environment

    groups, rollout_group = [], Environment.rollout_group

    async def recorded(self, examples, agent, seeds, ids=None, meta=None, worlds=None):
        groups.append(([ex.id for ex in examples], list(seeds), list(worlds)))
        return await rollout_group(self, examples, agent, seeds, ids, meta, worlds)

    monkeypatch.setattr(Environment, "rollout_group", recorded)
    cfg.seed = 7
    out = tmp_path / "replay"
    out.mkdir()
    got = bl.replay_quarter(cfg, grpo, data, out)
    n = cfg.grpo.trl["num_generations"]
    assert backend.calls["agent"] == 2 * n  # a group for each of the quarter's two questions
    # each group in the world its question's training step had (the rollout's global step: the log's - 1),
    # its episodes seeded apart from training's
    assert [(ids, w) for ids, _, w in groups] == [(["q0"] * n, [7] * n), (["q1"] * n, [1007] * n)]
    assert not {7 + 1000 * s + i for s in range(2) for i in range(n)} & {x for _, seeds, _ in groups for x in seeds}
    rows = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert [(r["id"], r["step"], len(r["totals"])) for r in rows] == [("q0", 1, n), ("q1", 2, n)]
    rubric = Rubric.from_config(cfg.grpo)
    right = rubric.score(Trace(id="a", question="Question q0?", answers=["1755"], steps=[
        {"thought": "I recall it.", "answer": "1755", "raw": "<think>I recall it.</think>\n<answer>1755</answer>"}]))
    assert rows[0]["totals"][0] > rows[1]["totals"][0]  # the right answer scored above the wrong one
    diffs = [statistics.fmean(rows[0]["totals"]) - 0.2, statistics.fmean(rows[1]["totals"]) - 0.1]
    assert got["questions"] == 2 and got["trained"] == pytest.approx(0.15)
    assert got["diff"] == pytest.approx(statistics.fmean(diffs), abs=1e-4)
    assert got["se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(2), abs=1e-4)
    assert got["rises"] == (got["diff"] > 0 and got["diff"] >= 2 * got["se"])
    assert rows[0]["totals"][0] == pytest.approx(right["total"])
    # a re-run reads the episodes and loads no policy
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    assert bl.replay_quarter(cfg, grpo, data, out) == got and backend.calls["agent"] == 2 * n
    # two questions a step (two groups): a step's reward mixes them, so there is nothing to pair
    with (grpo / "samples.jsonl").open("a") as f:
        f.write(json.dumps({"step": 0, "trace": Trace(id="q7#0", question="Question q7?").model_dump(mode="json")})
                + "\n")
    assert bl.quarter_groups(grpo) == [] and bl.replay_quarter(cfg, grpo, data, out) is None


def test_the_last_quarters_questions_are_sampled_again_from_the_initial_policy_and_both_quarters_paired(
        tmp_path, monkeypatch):
    """The last quarter's questions are read again from the initial policy (its checkpoint loaded, not the
    trained one), paired as before -> after; both quarters' pairs together make the target's second reading."""
    import transformers

    import mtr.backends
    import mtr.checkpoints
    from mtr.agents import PolicyAgent
    from mtr.config import Config
    from mtr.rollout import RolloutAgent
    from mtr.trace import Trace

    sys.path.insert(0, str(ROOT / "tests"))
    from scripted import Pool, ScriptedBackend

    grpo, init = tmp_path / "grpo", tmp_path / "sft"
    grpo.mkdir()
    data = tmp_path / "qa.jsonl"
    answers = {f"q{i}": a for i, a in enumerate(["x", "x", "x", "x", "x", "x", "1755", "w"])}
    data.write_text("".join(json.dumps({"id": q, "question": f"Question {q}?", "answers": [a]}) + "\n"
                            for q, a in answers.items()))
    trained = [0.2, 0.1, 0.4, 0.3, 0.9, 0.9, 0.9, 0.8]  # eight steps: the last quarter is steps 7 and 8
    (grpo / "log.jsonl").write_text("".join(json.dumps({"step": i + 1, "reward": r}) + "\n"
                                            for i, r in enumerate(trained)))
    with (grpo / "samples.jsonl").open("w") as f:
        for step, q in enumerate(answers):
            for i in range(2):
                trace = Trace(id=f"{q}#{i}", question=f"Question {q}?", answers=[answers[q]])
                f.write(json.dumps({"step": step, "trace": trace.model_dump(mode="json")}) + "\n")
    assert bl.quarter_groups(grpo, last=True) == [(7, "q6", 0.9), (8, "q7", 0.8)]

    cfg = Config()
    cfg.grpo.tool_mode = "off"
    cfg.tools.toolmaker = False
    backend = ScriptedBackend(agent=lambda m: "<think>I recall it.</think>\n<answer>1755</answer>")
    loaded = []

    def load(path, **k):
        loaded.append(path)
        return type("M", (), {"eval": lambda self: self})()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load)
    monkeypatch.setattr(mtr.checkpoints, "load_tokenizer", lambda *a, **k: None)
    monkeypatch.setattr(mtr.backends, "BackendPool", lambda cfg: Pool(backend))
    monkeypatch.setattr(RolloutAgent, "with_model", lambda *a, **k: PolicyAgent(backend))
    last = tmp_path / "replay-last"
    last.mkdir()
    got = bl.replay_quarter(cfg, grpo, data, last, policy=init, last=True)
    assert loaded == [str(init)]
    rows = {r["id"]: statistics.fmean(r["totals"]) for r in map(json.loads, (last / "episodes.jsonl").read_text().splitlines())}
    assert set(rows) == {"q6", "q7"} and rows["q6"] > rows["q7"]  # the initial policy's answer is q6's
    # before: the initial policy's replay; after: training's reward
    assert bl.replay_pairs(grpo, last, last=True) == [(rows["q6"], 0.9), (rows["q7"], 0.8)]
    diffs = [0.9 - rows["q6"], 0.8 - rows["q7"]]
    assert got["initial"] == pytest.approx(statistics.fmean(rows.values()), abs=1e-4) and got["trained"] == 0.85
    assert got["diff"] == pytest.approx(statistics.fmean(diffs), abs=1e-4)
    assert got["se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(2), abs=1e-4)

    first = tmp_path / "replay"
    first.mkdir()
    bl.replay_quarter(cfg, grpo, data, first)
    assert loaded[-1] == str(grpo)  # the first quarter's from the trained policy
    both = bl.paired_rise(bl.replay_pairs(grpo, first) + bl.replay_pairs(grpo, last, last=True))
    first_diffs = [b - a for a, b in bl.replay_pairs(grpo, first)]
    assert both["questions"] == 4
    assert both["diff"] == pytest.approx(statistics.fmean(first_diffs + diffs), abs=1e-4)
    assert both["rises"] == (both["diff"] > 0 and both["diff"] >= 2 * both["se"])
    assert bl.paired_rise([(0.1, 0.2)]) is None  # one pair has no standard error
    # fewer than four steps: no quarter to replay
    (grpo / "log.jsonl").write_text(json.dumps({"step": 1, "reward": 0.5}) + "\n")
    assert bl.quarter_groups(grpo, last=True) == []


def test_the_docs_give_the_last_quarters_replay_and_both_quarters_reading():
    import copy

    res = copy.deepcopy(json.loads(bl.RESULTS.read_text())["main-pool-3seeds"])
    for curve in res["curves"].values():  # the recorded readings out: only those set here
        curve.pop("replay_last", None), curve.pop("replay_both", None)
    res["curves"]["sft+grpo@s0"].update(
        replay_last={"questions": 6, "initial": 0.9, "trained": 1.2, "diff": 0.3, "se": 0.1, "rises": True},
        replay_both={"questions": 12, "diff": 0.2, "se": 0.07, "rises": True})
    # the pooled reading alone (the last quarter's too few pairs for its own)
    res["curves"]["sft+grpo@s1"]["replay_both"] = {"questions": 5, "diff": 0.1, "se": 0.2, "rises": False}
    text = bl.doc_sections({"r": res})["r"]
    assert ("sft+grpo@s0 0.900 -> 1.200, +0.300 ± 0.100 on 6 questions, rises by 2 SE, both quarters +0.200 ± "
            "0.070 on 12 questions, rises by 2 SE; sft+grpo@s1 both quarters +0.100 ± 0.200 on 5 questions.") in text
    assert "sft+grpo@s2 both" not in text


def test_the_quarters_reward_target_is_read_only_where_the_quarters_hold_the_same_questions():
    curves = {"sft+grpo@s0": {"quarters": {"rises": True}, "replay": {"rises": False}}}
    pool = bl.preset_settings("main")
    assert bl.each_question_once(pool)
    assert bl.targets({"arms": {}, "curves": curves}, pool) == {"replayed_reward_rises@s0": False}
    curves["sft+grpo@s0"]["replay_both"] = {"rises": True}
    assert bl.targets({"arms": {}, "curves": curves}, pool) == {"replayed_reward_rises@s0": False,
                                                                "replayed_both_rises@s0": True}
    del curves["sft+grpo@s0"]["replay_both"]
    six = bl.preset_settings("main", grpo_questions=6, grpo_pool=24)
    assert not bl.each_question_once(six)
    assert bl.targets({"arms": {}, "curves": curves}, six)["reward_rises@s0"] is True
    # two groups a step: training logs only the first group's episodes, so there is nothing to replay by
    assert not bl.each_question_once(bl.preset_settings("main", grpo={"trl.per_device_train_batch_size": 8}))


def test_a_run_that_would_delete_an_evaluation_of_more_questions_stops_in_one_line(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise bl.WouldDelete(f"{tmp_path}/eval-sft-s0: evaluated on 100 questions a benchmark, where this run asks 30")

    monkeypatch.setattr(bl, "run_arms", refuse)
    monkeypatch.setattr("sys.argv", ["bench_learning.py", "--preset", "main", "--work", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        bl.main()
    assert str(stop.value) == f"{tmp_path}/eval-sft-s0: evaluated on 100 questions a benchmark, where this run asks 30"


def test_a_run_writes_its_scores_beside_the_results_and_not_into_them(tmp_path, monkeypatch):
    stored = {"questions": ["2wiki|q0"], "arms": {"sft@s0": {"live": {"em": [1], "f1": [1], "answered": [1],
                                                                       "prediction": ["x"]}}}}
    monkeypatch.setattr(bl, "run_arms", lambda *a, **k: {"arms": {}, "question_scores": stored})
    monkeypatch.setattr(bl, "RESULTS", tmp_path / "learning.json")
    monkeypatch.setattr(bl, "SCORES", tmp_path / "learning_scores")
    monkeypatch.setattr(bl, "DOC", tmp_path / "learning.md")
    monkeypatch.setattr(bl, "update_doc", lambda *a, **k: "doc\n")
    monkeypatch.setattr(bl, "doc_sections", lambda results: {k: "" for k in results})
    monkeypatch.setattr("sys.argv", ["bench_learning.py", "--preset", "main", "--work", str(tmp_path / "w"),
                                     "--label", "mine"])
    bl.main()
    assert json.loads((tmp_path / "learning_scores" / "mine.json").read_text()) == stored
    assert "question_scores" not in json.loads((tmp_path / "learning.json").read_text())["mine"]
    assert bl.evals_stored("mine", tmp_path / "learning_scores")["sft@s0"]["scores"] == {
        "2wiki|q0": {"em": 100.0, "f1": 100.0, "answered": 100.0}}
    # a label with neither a work directory nor stored scores: one line, before anything runs
    monkeypatch.setattr("sys.argv", ["bench_learning.py", "--preset", "main", "--draws-against", "gone"])
    with pytest.raises(SystemExit, match=r"--draws-against gone: neither a work directory of this benchmark nor a "
                                         r"run with stored scores"):
        bl.main()
    # ... or whose stored scores are not a run's
    (tmp_path / "learning_scores" / "torn.json").write_text('{"questions": ["2wiki|q0"], "arms"')
    monkeypatch.setattr("sys.argv", ["bench_learning.py", "--preset", "main", "--draws-against", "torn"])
    with pytest.raises(SystemExit, match=r"--draws-against torn: .*torn.json: not a run's stored scores \(JSONDecodeError"):
        bl.main()


def test_the_docs_name_the_cpus_kernels_and_grpos_lora_adapter_where_a_run_recorded_them():
    import copy

    res = copy.deepcopy(json.loads(bl.RESULTS.read_text())["quick-zen1"])
    assert "cpu_kernels" not in res and not res["config"]["grpo"].get("lora")  # recorded before either
    before = bl.doc_sections({"r": res})["r"]
    assert f"(commit {res['commit']}, AMD EPYC, 2 cores)" in before and "LoRA" not in before
    assert "1 a step (a group of 4 episodes a question; questions: " in before
    res["config"]["grpo"]["trl"]["num_generations"] = 8  # the group's size is what told main-g8-* apart
    assert "(a group of 8 episodes a question; questions: " in bl.doc_sections({"r": res})["r"]
    res["cpu_kernels"] = "AVX2"
    res["config"]["grpo"]["lora"] = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    res["config"]["grpo"]["trl"]["learning_rate"] = 2e-4
    text = bl.doc_sections({"r": res})["r"]
    assert f"(commit {res['commit']}, AMD EPYC, torch's AVX2 kernels, 2 cores)" in text
    assert "learning rate 0.0002, LoRA rank 16 (alpha 32, dropout 0), sampled at" in text  # peft's default dropout
    res["weight_major"] = True  # since 2026-12-06: whether decoding's products were weight-major
    text = bl.doc_sections({"r": res})["r"]
    assert f"(commit {res['commit']}, AMD EPYC, torch's AVX2 kernels, decoding's products weight-major (W @ x.T), " \
           "2 cores)" in text


def test_a_run_records_the_kernels_torch_uses_on_its_cpu_and_whether_its_decoding_is_weight_major(monkeypatch):
    import torch

    import mtr.backends.kvcache as kv

    assert bl.cpu_kernels() == torch.backends.cpu.get_cpu_capability() != ""
    assert bl.weight_major_pays() is kv.weight_major_pays()  # measured once a process, as decoding uses it
    monkeypatch.setattr(kv, "WEIGHT_MAJOR", not kv.weight_major_pays())
    assert bl.weight_major_pays() is kv.WEIGHT_MAJOR  # forced: what decoding then does


def test_the_kl_of_the_first_and_last_quarter_of_the_steps():
    assert bl.kl_quarters({"kl": [0.0, 0.2, 0.4, 0.4, 0.5, 0.5, 1.0, 3.0]}) == pytest.approx((0.1, 2.0))
    assert bl.kl_quarters({"kl": [0.1, None, 0.3, 0.4]}) is None  # a step logged without it: no reading
    assert bl.kl_quarters({"kl": [0.1, 0.2, 0.3]}) is None and bl.kl_quarters({}) is None  # under a step a quarter
