"""End to end with the real embedded model (hf backend): the pipeline's machinery, not its accuracy."""

import asyncio
import json

import pytest

from mtr.config import load_config
from mtr.data import resolve_benchmark
from mtr.stages.evaluate import evaluate
from mtr.jsonl import read_jsonl
from mtr.stages.filter import run_filter
from mtr.stages.synth import synthesize

pytestmark = pytest.mark.model


def small_config():
    cfg = load_config()
    cfg.roles.toolmaker.max_tokens = 200
    cfg.roles.autoagent.max_tokens = 96
    cfg.roles.toolactor.max_tokens = 96
    cfg.roles.policy.max_tokens = 96
    return cfg


def test_synth_with_embedded_model(tmp_path):
    cfg = small_config()
    cfg.synth.max_tool_calls = 1
    cfg.tools.toolmaker_retries = 1
    stats = asyncio.run(synthesize(cfg, resolve_benchmark("hotpotqa"), tmp_path, limit=2))
    funnel = run_filter(cfg, tmp_path / "traces.jsonl")
    traces = read_jsonl(tmp_path / "traces.jsonl")
    assert len(traces) == 2 and stats["episodes"] == 2
    for t in traces:
        assert t["meta"]["roles"]["autoagent"] == "hf:embedded"
        if "error" not in t:  # the ToolMaker succeeded: a real episode with checks on every step
            assert t["steps"] and all(s["checks"] for s in t["steps"])
            assert t["tools"][0]["function"]["name"] == "search"
    assert sum(funnel["rejected"].values()) + funnel["kept"] == 2
    assert (tmp_path / "sft.jsonl").exists() and json.loads((tmp_path / "stats.json").read_text())["questions"] == 2


def test_eval_with_embedded_model(tmp_path):
    cfg = small_config()
    cfg.eval.benchmarks = ["bamboogle"]
    cfg.eval.limit = 2
    cfg.eval.max_tool_calls = 1
    cfg.tools.toolmaker_retries = 0
    res = asyncio.run(evaluate(cfg, tmp_path))
    assert {(r["benchmark"], r["mode"]) for r in res["rows"]} == {("bamboogle", "tools-on"), ("bamboogle", "tools-off")}
    preds = read_jsonl(tmp_path / "predictions.jsonl")
    assert len(preds) == 4
    for p in preds:
        assert p["trace"]["steps"], p
        assert 0.0 <= p["f1"] <= 1.0
