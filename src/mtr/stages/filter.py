"""`mtr filter`, stage `filter`: keep a trace only if it is correct, valid and not too long; the kept ones
become `sft.jsonl` (conversational `messages` + `tools`, what TRL's SFTTrainer reads).

Reasons, checked in this order (a trace is counted under its first failing reason):
  toolmaker_failed, episode_error, malformed (a turn did not parse), no_answer, unsupported_answer (the
  episode's own observations do not support its answer, whoever the teacher: mtr.evidence), wrong_answer,
  validation_errors (more failed checks than allowed), no_tool_call, too_many_turns, too_many_tokens.

Filtering is a pure function of the traces and the `filter` settings: `mtr filter RUN` re-filters a
synthesis run without synthesising again. It writes `sft.jsonl`, `verdicts.jsonl` (each trace's reason, or
null when kept) and `filter.json` (the funnel, the settings and the traces' hash) beside each other.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from mtr.chat_template import render
from mtr.checkpoints import load_tokenizer, resolve_checkpoint
from mtr.config import Config, FilterConfig
from mtr.embedded import file_sha256
from mtr.evidence import answer_supported
from mtr.jsonl import print_table, read_jsonl, write_text_atomic
from mtr.metrics import answer_correct
from mtr.trace import Trace

ROLES = ("policy",)  # its tokenizer counts a trace's tokens


def stage_config(cfg: Config) -> dict[str, Any]:
    """What filter.json records of the config (a change elsewhere leaves it alone)."""
    return cfg.stage_config(("filter",), ROLES)


def rejection_reason(trace: Trace, cfg: FilterConfig, count_tokens: Callable[[Trace], int]) -> str | None:
    if trace.error is not None:
        return "toolmaker_failed" if trace.error.startswith("toolmaker") else "episode_error"
    if any(s.parse_error is not None for s in trace.steps):
        return "malformed"
    if trace.final_answer is None:
        return "no_answer"
    if cfg.require_support and not answer_supported(trace):
        return "unsupported_answer"
    if not answer_correct(trace.final_answer, trace.answers, cfg.answer_metric, cfg.f1_threshold):
        return "wrong_answer"
    failed = sum(1 for s in trace.steps for c in s.checks if not c.ok)
    if failed > cfg.max_validation_errors:
        return "validation_errors"
    if cfg.require_tool_call and not trace.calls:
        return "no_tool_call"
    if len(trace.steps) > cfg.max_turns:
        return "too_many_turns"
    if count_tokens(trace) > cfg.max_trace_tokens:
        return "too_many_tokens"
    return None


def filter_traces(traces: list[Trace], cfg: FilterConfig,
                  count_tokens: Callable[[Trace], int]) -> tuple[list[Trace], Counter, dict[str, str | None]]:
    """Kept traces, rejection counts by reason, and each trace's verdict (its reason, or None when kept)."""
    kept, rejected, verdicts = [], Counter(), {}
    for t in traces:
        reason = rejection_reason(t, cfg, count_tokens)
        verdicts[t.id] = reason
        if reason is None:
            kept.append(t)
        else:
            rejected[reason] += 1
    return kept, rejected, verdicts


def numbered_calls(conversation: dict[str, Any]) -> dict[str, Any]:
    """The conversation with its call ids numbered in order (`call_0`, `call_1`, ...). A call's id only pairs
    it with its observation, and the chat template renders neither; the random ids synthesis draws would
    make every run's sft.jsonl differ from the last for the same traces."""
    ids: dict[str, str] = {}
    for m in conversation["messages"]:
        for c in m.get("tool_calls") or ():
            c["id"] = ids.setdefault(c["id"], f"call_{len(ids)}")
        if m.get("tool_call_id") is not None:
            m["tool_call_id"] = ids.setdefault(m["tool_call_id"], f"call_{len(ids)}")
    return conversation


def policy_token_counter(cfg: Config) -> Callable[[Trace], int]:
    """Count a trace's tokens as the policy will see them in SFT (its tokenizer and chat template)."""
    policy = cfg.role("policy")
    tok = load_tokenizer(resolve_checkpoint(policy.model if policy.backend == "hf" else "embedded",
                                            "roles.policy.model"))

    def count(trace: Trace) -> int:
        conv = trace.to_conversation()
        return len(tok(render(tok, conv["messages"], conv["tools"]), add_special_tokens=False)["input_ids"])

    return count


def run_filter(cfg: Config, traces_path: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Filter `traces_path` into `out_dir` (default: beside the traces); always from the whole file."""
    traces_path = Path(traces_path)
    out_dir = Path(out_dir) if out_dir is not None else traces_path.parent
    if not traces_path.is_file():
        raise FileNotFoundError(f"{traces_path}: no traces to filter (run the synth stage first)")
    out_dir.mkdir(parents=True, exist_ok=True)
    # synthesis appends episodes as they finish, which concurrency orders differently in every run, and
    # SFT's seeded shuffle of differently ordered rows makes different batches: sorted by episode id, the
    # same traces make the same sft.jsonl, byte for byte (its hash in SFT's manifest then says so)
    traces = sorted((Trace.model_validate(r) for r in read_jsonl(traces_path, latest_by="id")), key=lambda t: t.id)
    kept, rejected, verdicts = filter_traces(traces, cfg.filter, policy_token_counter(cfg))
    write_text_atomic(out_dir / "verdicts.jsonl",
                      "".join(json.dumps({"id": i, "rejected": r}) + "\n" for i, r in verdicts.items()))
    # each row says which episode and which teacher it came from (SFT reads only messages and tools)
    write_text_atomic(out_dir / "sft.jsonl", "".join(json.dumps(
        {**numbered_calls(t.to_conversation(for_storage=True)), "id": t.id,
         "teacher": t.meta.get("teacher", "unknown")}, ensure_ascii=False) + "\n" for t in kept))
    result = {"episodes": len(traces), "kept": len(kept),
              "kept_pct": 100.0 * len(kept) / len(traces) if traces else 0.0,
              "teachers": dict(Counter(t.meta.get("teacher", "unknown") for t in kept)),
              # the share of kept traces whose answer their own observations support (1.0 with require_support)
              "kept_supported_pct": 100.0 * sum(answer_supported(t) for t in kept) / len(kept) if kept else 0.0,
              "rejected": dict(rejected.most_common()),
              "config": stage_config(cfg),
              "inputs": {"traces": {"path": str(traces_path), "sha256": file_sha256(traces_path)}}}
    write_text_atomic(out_dir / "filter.json", json.dumps(result, indent=2))
    print_funnel(result)
    return result


def print_funnel(result: dict[str, Any]) -> None:
    print_table("filter", [("episodes", result["episodes"]), ("kept", f"{result['kept']} ({result['kept_pct']:.1f} %)"),
                           *((f"  rejected: {reason}", n) for reason, n in result["rejected"].items())])
