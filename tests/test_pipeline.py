"""`mtr run`: stage order, skipping finished stages, continuing after a crash, the report at the end."""

import json

import pytest
import yaml

import mtr.pipeline as pipeline
from mtr.config import ConfigError, parse_config
from scripted import qa_file


@pytest.fixture
def fake_stages(monkeypatch):
    """Each stage writes a file into its directory and records the policy it was given; one can be made to fail."""
    calls, fail = [], set()

    def run_stage(stage, run, fresh):
        policy = run.policy(stage) if stage in ("grpo", "eval") else None
        calls.append((stage, str(policy) if policy else None, fresh))
        (run.out / stage).mkdir(parents=True, exist_ok=True)
        (run.out / stage / "partial.txt").write_text("work")
        if stage in fail:
            raise RuntimeError(f"{stage} crashed")
        return {"policy": str(policy)}

    monkeypatch.setattr(pipeline, "_run_stage", run_stage)
    return calls, fail


ALL = ["tools", "synth", "filter", "sft", "grpo", "eval"]


def config(tmp_path, run=None, **sections):
    data = qa_file(tmp_path / "train.jsonl", n=3)
    return parse_config({"run": {"train_data": str(data), **(run or {})},
                         "eval": {"benchmarks": ["bamboogle"], "limit": 2, **sections.pop("eval", {})}, **sections})


def test_stages_run_in_order_and_hand_on_the_policy(tmp_path, fake_stages):
    calls, _ = fake_stages
    out = tmp_path / "run"
    records = pipeline.run_pipeline(config(tmp_path), out)
    assert [c[0] for c in calls] == ALL
    assert calls[4][1] == str(out / "sft")  # GRPO starts from the SFT checkpoint
    assert calls[5][1] == str(out / "grpo")  # eval uses the GRPO checkpoint
    assert set(records) == set(ALL)
    for stage in records:
        done = json.loads((out / stage / "stage_done.json").read_text())
        assert done["wall_s"] >= 0 and done["peak_rss_mb"] > 0 and done["identity"]["config"]
    assert json.loads((out / "manifest.json").read_text())["stage"] == "pipeline"
    assert (out / "report.html").is_file()

    calls.clear()
    pipeline.run_pipeline(config(tmp_path), out)
    assert calls == []  # every stage was complete: nothing runs twice


def test_a_crash_keeps_finished_stages_and_the_next_run_continues(tmp_path, fake_stages):
    calls, fail = fake_stages
    out = tmp_path / "run"
    fail.add("grpo")
    with pytest.raises(RuntimeError, match="grpo crashed"):
        pipeline.run_pipeline(config(tmp_path), out)
    assert (out / "sft" / "stage_done.json").is_file() and not (out / "grpo" / "stage_done.json").exists()
    html = (out / "report.html").read_text()  # the failed run still has a report, saying what is unfinished
    assert "started, not finished" in html
    assert (out / "grpo" / "partial.txt").read_text() == "work"  # nothing written is lost

    fail.clear()
    calls.clear()
    pipeline.run_pipeline(config(tmp_path), out)
    assert [c[0] for c in calls] == ["grpo", "eval"]
    assert calls[0][1] == str(out / "sft") and calls[0][2] is False  # resumed, not started afresh


def test_without_training_stages_eval_uses_the_initial_policy(tmp_path, fake_stages):
    calls, _ = fake_stages
    cfg = config(tmp_path, run={"stages": ["eval"]})
    pipeline.run_pipeline(cfg, tmp_path / "run", report=False)
    from mtr.checkpoints import policy_checkpoint

    assert calls == [("eval", str(policy_checkpoint(cfg)), False)]


def test_a_changed_setting_reruns_its_stage_and_those_after_never_those_before(tmp_path, fake_stages):
    calls, _ = fake_stages
    out = tmp_path / "run"
    pipeline.run_pipeline(config(tmp_path), out, report=False)
    calls.clear()
    pipeline.run_pipeline(config(tmp_path, grpo={"trl": {"learning_rate": 3e-6}}), out, report=False)
    assert [(c[0], c[2]) for c in calls] == [("grpo", True), ("eval", True)]
    calls.clear()
    pipeline.run_pipeline(config(tmp_path, grpo={"trl": {"learning_rate": 3e-6}}, filter={"max_turns": 4}), out,
                          report=False)
    assert [c[0] for c in calls] == ["filter", "sft", "grpo", "eval"]
    calls.clear()
    # more evaluation questions: the tools stage adds theirs, evaluation runs again, training is untouched
    pipeline.run_pipeline(config(tmp_path, grpo={"trl": {"learning_rate": 3e-6}}, filter={"max_turns": 4},
                                 eval={"limit": 3}), out, report=False)
    assert [(c[0], c[2]) for c in calls] == [("tools", False), ("eval", True)]
    calls.clear()
    pipeline.run_pipeline(config(tmp_path, run={"train_limit": 2}), out, overwrite=True, report=False)
    assert [c[0] for c in calls] == ALL


def test_a_setting_added_since_a_stage_finished_at_its_default_does_not_rerun_it(tmp_path, fake_stages):
    """An upgrade of mtr that adds an option: the stages recorded without it ran as they would run now."""
    calls, _ = fake_stages
    out = tmp_path / "run"
    pipeline.run_pipeline(config(tmp_path), out, report=False)
    done = out / "grpo" / "stage_done.json"
    record = json.loads(done.read_text())
    del record["identity"]["config"]["grpo"]["consistency_when_right"]  # as recorded before the option existed
    done.write_text(json.dumps(record))
    calls.clear()
    pipeline.run_pipeline(config(tmp_path), out, report=False)
    assert calls == []
    pipeline.run_pipeline(config(tmp_path, grpo={"consistency_when_right": True}), out, report=False)
    assert [(c[0], c[2]) for c in calls] == [("grpo", True), ("eval", True)]  # set otherwise: a change


def test_same_settings_forgives_only_added_settings_at_their_default():
    from mtr.config import Config
    from mtr.rundir import same_settings

    now = Config().stage_config(("grpo",), ("policy",))
    before = json.loads(json.dumps(now))
    del before["grpo"]["consistency_when_right"], before["roles"]["policy"]["timeout_s"]
    assert same_settings(before, now) and not same_settings(now, before)  # a setting dropped: not the same
    changed = json.loads(json.dumps(now))
    changed["roles"]["policy"]["timeout_s"] = 1.0
    assert not same_settings(before, changed)
    unknown = {**now, "grpo": {**now["grpo"], "no_such_setting": False}}
    assert not same_settings(before, unknown)
    trl = json.loads(json.dumps(now))  # TRL's arguments are a free dict: a key added there is a change
    trl["grpo"]["trl"]["new_argument"] = 0
    assert not same_settings(now, trl)


def test_a_manifest_written_before_a_setting_existed_accepts_the_resume(tmp_path):
    from mtr.config import Config
    from mtr.rundir import RunDirError, write_manifest

    now = Config().stage_config(("grpo",), ("policy",))
    before = json.loads(json.dumps(now))
    del before["grpo"]["consistency_when_right"]
    write_manifest(tmp_path, "grpo", before, {})
    write_manifest(tmp_path, "grpo", now, {})  # resumed after the upgrade: accepted
    with pytest.raises(RunDirError, match="its config differs"):
        write_manifest(tmp_path, "grpo", {**now, "seed": 7}, {})


def test_stage_order_is_validated():
    with pytest.raises(ConfigError, match="run: Value error, stages must be a subset"):
        parse_config({"run": {"stages": ["sft", "synth"]}})
    with pytest.raises(ConfigError, match="run.stages.0"):
        parse_config({"run": {"stages": ["train"]}})


def test_plan_tells_what_and_how_long(tmp_path):
    cfg = parse_config(yaml.safe_load(open(pipeline.Path(pipeline.__file__).parent / "configs" / "demo.yaml")))
    lines, seconds = pipeline.plan(cfg, n_train=cfg.run.train_limit)
    assert [line.split(":")[0] for line in lines] == ALL
    assert "bamboogle (12)" in lines[5]
    assert 3 * 60 < seconds < 12 * 60  # the demo takes ~8 min on 2 cores (benchmarks/results/demo.json)
    # solvable-first: the initial policy's pass over the 12 training questions is planned
    assert cfg.grpo.question_order == "file" and "solvable" not in lines[4]
    cfg.grpo.question_order = "solvable-first"
    chosen_lines, chosen_seconds = pipeline.plan(cfg, n_train=cfg.run.train_limit)
    assert "solvable-first: the initial policy answers the 12 questions first" in chosen_lines[4]
    assert chosen_seconds > seconds


@pytest.mark.slow
@pytest.mark.model
def test_real_pipeline_on_the_embedded_model(tmp_path):
    """Every stage for real, at the smallest sizes (~6 min on 2 cores); a second invocation skips them all."""
    import subprocess
    import sys

    cfg = yaml.safe_load(open(pipeline.Path(pipeline.__file__).parent / "configs" / "demo.yaml"))
    cfg["run"]["train_limit"] = 4
    cfg["sft"]["trl"].update(max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=1)
    cfg["grpo"]["trl"].update(num_generations=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                              max_steps=1, save_steps=1, max_completion_length=192)
    cfg["grpo"]["max_turn_tokens"] = 64
    cfg["eval"]["limit"] = 2
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtr.cli", "run", "-c", str(path), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ALL:
        assert (out / stage / "stage_done.json").is_file()
    rows = json.loads((out / "eval" / "results.json").read_text())["rows"]
    assert {(row["mode"], row["n"]) for row in rows} == {("tools-on", 2), ("tools-off", 2)}
    assert "Not in this report" not in (out / "report.html").read_text()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.count("done in an earlier invocation, skipped") == 6


def test_grpo_from_the_initial_policy_is_one_switch(tmp_path, fake_stages):
    from mtr.checkpoints import policy_checkpoint

    calls, _ = fake_stages
    cfg = config(tmp_path, run={"grpo_init": "base"})
    pipeline.run_pipeline(cfg, tmp_path / "run", report=False)
    assert [c[1] for c in calls if c[0] == "grpo"] == [str(policy_checkpoint(cfg))]


def test_training_on_evaluation_questions_is_an_error_unless_asked_for(tmp_path, fake_stages):
    from mtr.data import resolve_benchmark

    calls, _ = fake_stages
    cfg = parse_config({"run": {"train_data": "hotpotqa", "train_limit": 5}, "eval": {"benchmarks": ["hotpotqa"],
                                                                                    "limit": 3}})
    with pytest.raises(ValueError, match=r"share 3 question\(s\).*train on a training split"):
        pipeline.run_pipeline(cfg, tmp_path / "run", report=False)
    assert calls == []
    cfg.run.allow_overlap = True
    pipeline.run_pipeline(cfg, tmp_path / "run", report=False)
    assert calls
    # the presets' training split is disjoint from the benchmark by construction
    train = {x["id"] for x in map(json.loads, resolve_benchmark("hotpotqa-train").read_text().splitlines())}
    test = {x["id"] for x in map(json.loads, resolve_benchmark("hotpotqa").read_text().splitlines())}
    assert train and test and not train & test


def test_a_checkpoint_is_identified_by_when_its_stage_finished(tmp_path):
    from mtr.rundir import checkpoint_stamp, mark_done

    assert checkpoint_stamp(tmp_path) is None  # not written by a stage (the embedded model, a user's own)
    mark_done(tmp_path, 1.0)
    first = checkpoint_stamp(tmp_path)
    assert first and first == json.loads((tmp_path / "stage_done.json").read_text())["finished"]


def test_solvable_first_chooses_among_the_runs_own_training_questions(tmp_path, monkeypatch):
    """`mtr run` hands GRPO its first train_limit questions to choose from, not the whole training file (the
    demo's split holds 208: the solvable-first pass would have answered them all, beyond the tools made)."""
    seen = {}

    def train_grpo(cfg, data, init, out, limit=None, candidates=None, **kw):
        seen.update(limit=limit, candidates=candidates, order=cfg.grpo.question_order)
        out.mkdir(parents=True, exist_ok=True)
        return {"steps": 0}

    monkeypatch.setattr(pipeline.grpo_stage, "train_grpo", train_grpo)
    cfg = config(tmp_path, run={"grpo_init": "base", "stages": ["grpo"], "train_limit": 2},
                 grpo={"question_order": "solvable-first"})
    pipeline.run_pipeline(cfg, tmp_path / "run", report=False)
    assert seen == {"limit": 2, "candidates": 2, "order": "solvable-first"}
