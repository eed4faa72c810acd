"""benchmarks/bench_gpu.py: its figures from the stages' logs, its record of failures, its architectures, and
(on a CPU, with a tiny architecture) the whole run."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu as bg  # noqa: E402


def write_log(out: Path, lines: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_sft_step_times_are_the_differences_of_the_logs_clock_and_the_first_is_left_out(tmp_path):
    write_log(tmp_path, [{"step": 1, "loss": 2.0, "num_tokens": 1000.0, "wall_s": 5.0},
                         {"step": 2, "loss": 1.5, "num_tokens": 2000.0, "wall_s": 6.0},
                         {"step": 3, "loss": 1.2, "num_tokens": 3000.0, "wall_s": 8.0},
                         {"step": 3, "train_runtime": 8.1}])
    f = bg.sft_figures(tmp_path, {"rows": 40, "loss_first": 2.0, "loss_last": 1.2})
    assert f["steps"] == 3
    assert f["seconds_per_step"] == {"median_after_first": 1.5, "all": [5.0, 1.0, 2.0]}
    assert f["tokens_per_s"] == 750.0  # the median of steps 2 and 3's: 1000 tokens in 1 s, 1000 in 2 s
    assert f["rows"] == 40


def test_grpo_figures_read_the_logs_clock_trls_step_time_and_the_stages_rollout_clock(tmp_path):
    """Both step times come from the same steps, and the rollout's share is of TRL's step_time total (what
    the rollout runs inside), not of the whole train() call, which also holds the optimizer steps."""
    write_log(tmp_path, [{"step": s, "reward": 0.0, "step_time": t, "wall_s": w}
                         for s, t, w in ((1, 12.0, 14.0), (2, 9.0, 24.5), (3, 10.0, 36.0))])
    stats = {"rollout_tokens_per_s": 61.94, "rollout_s": 27.0, "train_runtime_s": 37.0, "generate_s": 25.0,
             "episode_tokens": [[600, 610], [590, 600]], "share_prompt": True}
    f = bg.grpo_figures(tmp_path, stats)
    assert f["steps"] == 3
    assert f["step_time"]["median_after_first"] == 9.5
    assert f["seconds_per_step"] == {"median_after_first": 11.0, "all": [14.0, 10.5, 11.5]}
    assert f["rollout_share_of_step_time"] == round(27 / 31, 3)
    assert f["rollout_tokens_per_s"] == 61.9 and f["rollout_s"] == 27.0
    assert f["episode_tokens_mean"] == 600.0 and f["episodes"] == 4


def test_one_step_has_no_median_after_the_first():
    assert bg.after_first([3.0]) == {"median_after_first": None, "all": [3.0]}


def test_a_failing_stage_is_recorded_in_one_line_its_checkpoints_removed_its_log_kept(tmp_path):
    out = tmp_path / "stage"

    def stage(d):
        (d / "checkpoint-2").mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"0")
        (d / "log.jsonl").write_text("{}\n")
        raise RuntimeError("CUDA out of memory.\nmore detail")

    f = bg.measure(out, stage)
    assert f == {"error": "RuntimeError: CUDA out of memory."}
    assert [p.name for p in out.iterdir()] == ["log.jsonl"]
    assert not bg.done({"sft": {"steps": 6}, "grpo": f}) and not bg.done(None)
    assert bg.done({"sft": {"steps": 6}, "grpo": {"steps": 6}})
    assert "failed: RuntimeError" in bg.summary(f)


@pytest.mark.model  # the embedded checkpoint's config.json (converted from the GGUF on first use)
def test_the_architectures_are_the_sizes_the_docs_name():
    """The 1.7B shape on the embedded model's config has SmolLM2-1.7B's parameter count (tied embeddings),
    and the embedded shape the embedded model's; counted on the meta device, nothing allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mtr.checkpoints import policy_checkpoint
    from mtr.config import Config

    base = json.loads((policy_checkpoint(Config()) / "config.json").read_text())
    counts = {}
    for arch in ("smollm2-135m", "smollm2-1700m"):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**base, **bg.ARCHS[arch]}))
        counts[arch] = sum(p.numel() for p in model.parameters())
    assert counts["smollm2-135m"] == 134_515_008
    assert counts["smollm2-1700m"] == 1_711_376_384
    results = json.loads(bg.RESULTS.read_text())
    assert {a: results["archs"][a]["parameters"] for a in counts} == counts


def test_bad_arguments_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--model-files", str(tmp_path)])  # no config.json
    with pytest.raises(SystemExit) as e:
        bg.main()
    assert "--model-files: give a directory that --prepare wrote" in str(e.value)
    (tmp_path / "config.json").write_text("{}")
    for argv, message in ((["--archs", "nope"], "--archs: unknown nope"), (["--shapes", "x"], "--shapes: unknown x"),
                          (["--steps", "1"], "--steps: at least 2"),
                          (["--archs", "tiny"], "--archs tiny: a check of the script")):
        monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--model-files", str(tmp_path), *argv])
        with pytest.raises(SystemExit) as e:
            bg.main()
        assert message in str(e.value)


@pytest.mark.model
def test_the_whole_run_on_a_cpu_with_a_tiny_architecture_and_its_resumption(tmp_path, monkeypatch):
    """--prepare, then SFT and GRPO of a random tiny model through mtr's own stages: figures for each, the
    stages' directories gone; a re-run with the same settings skips what is done; other settings start over
    but keep the record of failures mended."""
    import bench_learning

    import mtr.retrieval
    from mtr.data import source_file

    # HotpotQA alone, for its training questions and the retriever's corpus: the copy this repository ships
    # has some, where the shared data (and 2WikiMultihopQA) may not be beside a clone
    monkeypatch.setattr(bench_learning, "BENCHMARKS", ["hotpotqa"])
    monkeypatch.setattr(mtr.retrieval, "default_sources", lambda: [source_file("hotpotqa")])
    files = tmp_path / "model"
    bg.prepare(files)
    assert {p.name for p in files.iterdir()} >= {"config.json", "tokenizer.json"}
    assert not (files / "model.safetensors").exists()
    results = tmp_path / "gpu.json"
    results.write_text(json.dumps({"failures_fixed": {"x": {"error": "E"}}}))
    work = tmp_path / "work"
    doc = bg.run(files, work, results, ["tiny"], ["preset"], steps=2, seed=0)
    figures = doc["archs"]["tiny"]["shapes"]["preset"]
    assert figures["sft"]["steps"] == 2 and figures["sft"]["seconds_per_step"]["median_after_first"] > 0
    assert figures["grpo"]["steps"] == 2 and figures["grpo"]["rollout_tokens_per_s"] > 0
    assert figures["grpo"]["episodes"] == 8  # two steps of one group of 4
    assert figures["grpo"]["seconds_per_step"]["median_after_first"] > 0  # the log's clock reached the figures
    assert figures["settings"]["steps"] == 2 and figures["settings"]["grpo"]["num_generations"] == 4
    assert figures["environment"]["versions"]["transformers"]
    assert json.loads(results.read_text())["archs"]["tiny"]["shapes"]["preset"] == figures
    assert (work / "tiny-preset-sft" / "log.jsonl").is_file() and not (work / "tiny-init").exists()
    assert not list((work / "tiny-preset-grpo").glob("checkpoint-*"))
    assert doc["failures_fixed"] == {"x": {"error": "E"}}  # what the file held stays

    class Retrained(Exception):
        pass

    def retrained(*a, **k):
        raise Retrained

    monkeypatch.setattr(bg, "random_checkpoint", retrained)
    assert bg.run(files, work, results, ["tiny"], ["preset"], steps=2, seed=0)["archs"] == doc["archs"]
    with pytest.raises(Retrained):  # other settings are not the figures' own: measured again
        bg.run(files, work, results, ["tiny"], ["preset"], steps=3, seed=0)
