"""A small but complete run directory, written by hand, for the report tests (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

# Model text that tries to become markup: the report must show it as text and never run it.
HOSTILE = '</script><script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"><b>bold</b>'


def _trace(i: int, answer: str | None, gold: str, observation: str = "Paris is the capital.") -> dict:
    steps = [{"thought": f"look up {i}", "call": {"id": f"c{i}", "name": "search", "arguments": {"query": f"q{i}"}},
              "observation": observation, "checks": [{"code": "args_valid", "ok": True}], "tokens": 10}]
    if answer is not None:
        steps.append({"thought": "done", "answer": answer, "checks": [], "tokens": 5})
    else:
        steps.append({"raw": "I am not sure", "parse_error": "no_action: neither <tool_call> nor <answer> found",
                      "checks": [{"code": "parse_ok", "ok": False, "detail": "no_action"}], "tokens": 5})
    return {"id": f"q{i}", "question": f"Question number {i}?", "answers": [gold], "system": "sys",
            "tools": [{"type": "function", "function": {"name": "search", "description": "look things up",
                                                         "parameters": {"type": "object", "properties": {
                                                             "query": {"type": "string"}}}}}],
            "steps": steps, "meta": {}}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_run(root: Path) -> Path:
    """synth (4 episodes: 2 kept, 1 wrong answer, 1 malformed), sft and grpo logs, eval on Bamboogle."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"stage": "run", "seed": 0, "created": "2026-11-26T00:00:00Z",
                                                    "config": {"run": {"train_limit": 4}}}))
    traces = [_trace(0, "Paris", "Paris"), _trace(1, "Lyon", "Lyon", observation=HOSTILE),
              _trace(2, "Rome", "Madrid"), _trace(3, None, "Oslo")]
    write_jsonl(root / "synth" / "traces.jsonl", traces)
    write_jsonl(root / "synth" / "verdicts.jsonl", [{"id": "q0", "rejected": None}, {"id": "q1", "rejected": None},
                                                    {"id": "q2", "rejected": "wrong_answer"},
                                                    {"id": "q3", "rejected": "malformed"}])
    (root / "synth" / "stats.json").write_text(json.dumps({
        "questions": 4, "episodes": 4, "kept": 2, "kept_pct": 50.0, "rejected": {"wrong_answer": 1, "malformed": 1},
        "toolmaker_failed_questions": 0, "malformed_pct": 12.5, "mean_calls_per_episode": 1.0, "teacher": "scripted"}))
    write_jsonl(root / "sft" / "log.jsonl", [{"step": s, "loss": 2.0 / s} for s in (1, 2, 3)])
    (root / "sft" / "train_stats.json").write_text(json.dumps({"steps": 3, "rows": 2, "loss_first": 2.0,
                                                               "loss_last": 0.67, "tokens_per_s": 50.0,
                                                               "peak_rss_mb": 4000}))
    write_jsonl(root / "grpo" / "log.jsonl", [
        {"step": s, "reward": -0.2 + 0.1 * s, "rewards/answer_reward/mean": 0.1 * s,
         "rewards/format_reward/mean": 0.2 * s, "rewards/consistency_reward/mean": 0.0,
         "rewards/efficiency_reward/mean": -1.0, "kl": 0.001 * s, "completions/mean_length": 100 + s,
         "episode/tool_calls": 1.5, "episode/malformed_pct": 50 - 10 * s} for s in (1, 2)])
    (root / "grpo" / "train_stats.json").write_text(json.dumps({"steps": 2, "questions": 4, "seconds_per_step": 90.0,
                                                                "peak_rss_mb": 9000}))
    write_jsonl(root / "grpo" / "samples.jsonl", [{"step": 1, "trace": _trace(5, "Bern", "Bern")}])
    preds = []
    for j, (pred, gold, mode) in enumerate([("Paris", "Paris", "tools-on"), ("x", "Oslo", "tools-on"),
                                            (None, "Oslo", "tools-off")]):
        t = _trace(10 + j, pred, gold)
        preds.append({"key": f"bamboogle|{mode}|b{j}", "benchmark": "bamboogle", "mode": mode, "id": f"b{j}",
                      "question": t["question"], "gold": [gold], "prediction": pred,
                      "em": float(pred == gold), "f1": float(pred == gold), "trace": t})
    write_jsonl(root / "eval" / "predictions.jsonl", preds)
    row = {"n": 2, "cover_em": 50.0, "malformed_pct": 0.0, "invalid_call_pct": 0.0, "slot_disagreement_pct": 0.0,
           "no_answer_pct": 0.0, "mean_calls": 1.0, "mean_tokens": 15}
    (root / "eval" / "results.json").write_text(json.dumps({"rows": [
        {"benchmark": "bamboogle", "mode": "tools-on", "em": 50.0, "f1": 50.0, **row},
        {"benchmark": "bamboogle", "mode": "tools-off", "em": 0.0, "f1": 0.0, **{**row, "n": 1}}], "wall_s": 12.0}))
    for stage in ("synth", "sft", "grpo", "eval"):
        (root / stage / "stage_done.json").write_text(json.dumps({"wall_s": 60.0}))
    return root
