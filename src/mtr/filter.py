"""Trace filtering (quality control): keep a trace only if it is correct, valid and not too long.

Reasons, checked in this order (a trace is counted under its first failing reason):
  toolmaker_failed, episode_error, malformed (a turn did not parse), no_answer, wrong_answer,
  validation_errors (more failed checks than allowed), no_tool_call, too_many_steps, too_many_tokens.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from mtr.config import FilterConfig
from mtr.metrics import answer_correct
from mtr.trace import Trace


def rejection_reason(trace: Trace, cfg: FilterConfig, count_tokens: Callable[[Trace], int]) -> str | None:
    if trace.error is not None:
        return "toolmaker_failed" if trace.error.startswith("toolmaker") else "episode_error"
    if any(s.parse_error is not None for s in trace.steps):
        return "malformed"
    if trace.final_answer is None:
        return "no_answer"
    if not answer_correct(trace.final_answer, trace.answers, cfg.answer_metric, cfg.f1_threshold):
        return "wrong_answer"
    failed = sum(1 for s in trace.steps for c in s.checks if not c.ok)
    if failed > cfg.max_validation_errors:
        return "validation_errors"
    if cfg.require_tool_call and not trace.calls:
        return "no_tool_call"
    if len(trace.steps) > cfg.max_steps:
        return "too_many_steps"
    if count_tokens(trace) > cfg.max_tokens:
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
