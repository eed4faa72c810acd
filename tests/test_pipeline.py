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

    def run_stage(stage, cfg, out, train_path, init, policy, last_checkpoint):
        calls.append((stage, str(policy)))
        (out / stage).mkdir(parents=True, exist_ok=True)
        (out / stage / "partial.txt").write_text("work")
        if stage in fail:
            raise RuntimeError(f"{stage} crashed")
        return {"policy": str(policy)}

    monkeypatch.setattr(pipeline, "_run_stage", run_stage)
    return calls, fail


def config(tmp_path, **run):
    data = qa_file(tmp_path / "train.jsonl", n=3)
    return parse_config({"run": {"train_data": str(data), **run}, "eval": {"benchmarks": ["bamboogle"], "limit": 2}})


def test_stages_run_in_order_and_hand_on_the_policy(tmp_path, fake_stages):
    calls, _ = fake_stages
    out = tmp_path / "run"
    records = pipeline.run_pipeline(config(tmp_path), out)
    assert [c[0] for c in calls] == ["synth", "sft", "grpo", "eval"]
    assert calls[2][1] == str(out / "sft")  # GRPO starts from the SFT checkpoint
    assert calls[3][1] == str(out / "grpo")  # eval uses the GRPO checkpoint
    assert set(records) == {"synth", "sft", "grpo", "eval"}
    for stage in records:
        assert json.loads((out / stage / "stage_done.json").read_text())["wall_s"] >= 0
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
    assert calls[0][1] == str(out / "sft")


def test_without_training_stages_eval_uses_the_initial_policy(tmp_path, fake_stages):
    calls, _ = fake_stages
    cfg = config(tmp_path, stages=["eval"])
    pipeline.run_pipeline(cfg, tmp_path / "run", report=False)
    from mtr.sft import policy_source

    assert calls == [("eval", str(policy_source(cfg)))]


def test_another_config_in_the_same_directory_is_refused(tmp_path, fake_stages):
    out = tmp_path / "run"
    pipeline.run_pipeline(config(tmp_path), out, report=False)
    with pytest.raises(ValueError, match="holds a different pipeline run"):
        pipeline.run_pipeline(config(tmp_path, train_limit=2), out, report=False)
    calls, _ = fake_stages
    calls.clear()
    pipeline.run_pipeline(config(tmp_path, train_limit=2), out, overwrite=True, report=False)
    assert [c[0] for c in calls] == ["synth", "sft", "grpo", "eval"]


def test_stage_order_is_validated():
    with pytest.raises(ConfigError, match="run: Value error, stages must be a subset"):
        parse_config({"run": {"stages": ["sft", "synth"]}})
    with pytest.raises(ConfigError, match="run.stages.0"):
        parse_config({"run": {"stages": ["train"]}})


def test_plan_tells_what_and_how_long(tmp_path):
    cfg = parse_config(yaml.safe_load(open(pipeline.Path(pipeline.__file__).parent / "configs" / "demo.yaml")))
    lines, seconds = pipeline.plan(cfg, n_train=cfg.run.train_limit)
    assert [line.split(":")[0] for line in lines] == ["synth", "sft", "grpo", "eval"]
    assert "bamboogle (12)" in lines[3]
    assert 3 * 60 < seconds < 12 * 60  # the demo takes ~6 min on 2 cores (benchmarks/results/demo.json)


@pytest.mark.slow
@pytest.mark.model
def test_real_pipeline_on_the_embedded_model(tmp_path):
    """Every stage for real, at the smallest sizes (~6 min on 2 cores); a second invocation skips them all."""
    import subprocess
    import sys

    cfg = yaml.safe_load(open(pipeline.Path(pipeline.__file__).parent / "configs" / "demo.yaml"))
    cfg["run"]["train_limit"] = 4
    cfg["sft"].update(max_steps=1, per_device_train_batch_size=2, save_steps=1)
    cfg["grpo"].update(num_generations=2, per_device_train_batch_size=2, train_steps=1, save_steps=1,
                       max_turn_tokens=64, max_completion_tokens=192)
    cfg["eval"]["limit"] = 2
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtr.cli", "run", "-c", str(path), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("synth", "sft", "grpo", "eval"):
        assert (out / stage / "stage_done.json").is_file()
    rows = json.loads((out / "eval" / "results.json").read_text())["rows"]
    assert {(row["mode"], row["n"]) for row in rows} == {("tools-on", 2), ("tools-off", 2)}
    assert "Not in this report" not in (out / "report.html").read_text()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.count("done in an earlier invocation, skipped") == 4
