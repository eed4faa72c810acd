"""`mtr synth`: make tool-use training data with no live API.

For each question: ToolMaker writes the tools (once per question, shared by its episodes), then the
AutoAgent (or the scripted teacher) runs the episode loop against the ToolActor. Episodes are appended to
`traces.jsonl` as they finish; a re-run skips finished ids. At the end the traces are filtered into
`sft.jsonl` (conversational `messages` + `tools`), and `stats.json` and a table report the funnel.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from mtr.backends import BackendPool
from mtr.chat_template import install_chat_template, render
from mtr.config import Config
from mtr.data import load_qa
from mtr.episode import malformed_steps, run_episode
from mtr.filter import filter_traces
from mtr.jsonl import JsonlAppender, read_jsonl, run_pool, write_text_atomic
from mtr.manifest import write_manifest
from mtr.prompts import fill
from mtr.roles import AutoAgent, ScriptedTeacher, ToolActor, ToolCache, ToolMaker
from mtr.trace import QAExample, Trace

console = Console()


def policy_token_counter(cfg: Config) -> Callable[[Trace], int]:
    """Count a trace's tokens as the policy will see them in SFT (its tokenizer and chat template)."""
    from transformers import AutoTokenizer

    policy = cfg.role("policy")
    if policy.backend == "hf" and policy.model != "embedded":
        path = Path(policy.model)
    else:
        from mtr.embedded import ensure_checkpoint

        path = ensure_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    install_chat_template(tok)

    def count(trace: Trace) -> int:
        conv = trace.to_conversation()
        return len(tok(render(tok, conv["messages"], conv["tools"]), add_special_tokens=False)["input_ids"])

    return count


async def synthesize(cfg: Config, data: Path, out_dir: Path, limit: int | None = None,
                     overwrite: bool = False, pool: BackendPool | None = None) -> dict[str, Any]:
    examples = load_qa(data, limit)
    s = cfg.synth
    write_manifest(out_dir, "synth", cfg.model_dump(mode="json"), {"data": Path(data)}, cfg.seed,
                   extra={"limit": limit}, overwrite=overwrite)
    traces_path = out_dir / "traces.jsonl"
    if overwrite and traces_path.exists():
        traces_path.unlink()
    out = JsonlAppender(traces_path)
    if out.repaired_bytes:
        console.print(f"[yellow]{traces_path}: cut {out.repaired_bytes} bytes of a torn last record[/yellow]")
    own_pool = pool is None
    pool = pool or BackendPool(cfg)
    toolmaker = ToolMaker(pool.get("toolmaker"), max_tools=s.max_tools, retries=s.toolmaker_retries,
                          utilities=s.utility_tools, seed=cfg.seed)
    actor = ToolActor(pool.get("toolactor"), grounding=s.grounding, retries=s.actor_retries)
    by_id = {ex.id: ex for ex in examples}
    agent = ScriptedTeacher(by_id) if s.teacher == "scripted" else AutoAgent(pool.get("autoagent"), seed=cfg.seed)
    system = fill("policy")
    todo = [(ex, k) for ex in examples for k in range(s.episodes_per_question)
            if f"{ex.id}#{k}" not in out.done]
    tool_cache = ToolCache(toolmaker)
    roles_meta = {r: pool.get(r).describe() for r in ("toolmaker", "autoagent", "toolactor")}
    if s.teacher == "scripted":
        roles_meta["autoagent"] = "scripted"

    async def worker(item: tuple[QAExample, int]) -> dict[str, Any]:
        ex, k = item
        tm = await tool_cache.get(ex)
        meta = {"question_id": ex.id, "episode": k, "seed": cfg.seed + 1000 * k, "teacher": s.teacher,
                "grounding": s.grounding, "roles": roles_meta, "domain": tm.domain,
                "toolmaker_attempts": tm.attempts, "toolmaker_tokens": tm.tokens if k == 0 else 0,
                "toolmaker_rejections": tm.rejections}
        eid = f"{ex.id}#{k}"
        if tm.error is not None:
            if tm.retryable:
                meta["retryable"] = True
            trace = Trace(id=eid, question=ex.question, answers=ex.answers, system=system, error=tm.error, meta=meta)
        else:
            trace = await run_episode(ex, eid, tm.tools, agent, actor, system, max_steps=s.max_steps,
                                      seed=meta["seed"], meta=meta)
        return trace.model_dump(mode="json", exclude_none=True)

    def status(rec: dict) -> str:
        return "ok" if rec.get("error") is None else "failed"

    t0 = time.perf_counter()
    try:
        written = await run_pool(todo, worker, out, cfg.episodes_in_flight("synth"), "synth", status)
    finally:
        out.close()
        if own_pool:
            await pool.aclose()
    wall = time.perf_counter() - t0
    # rows per batch of each local backend: how much of the concurrency reached the model together
    batches = {b.describe(): st for b in pool.backends() if (st := b.batch_stats())}
    return finish(cfg, out_dir, len(examples), wall, written, batches)


def finish(cfg: Config, out_dir: Path, n_questions: int, wall: float, written: int,
           batches: dict[str, dict] | None = None) -> dict[str, Any]:
    """Filter all traces into sft.jsonl and write stats.json (idempotent: always from traces.jsonl)."""
    traces = [Trace.model_validate(r) for r in read_jsonl(out_dir / "traces.jsonl", latest_by="id")]
    kept, rejected, verdicts = filter_traces(traces, cfg.filter, policy_token_counter(cfg))
    # Per-trace verdicts let the report filter episodes by rejection reason without re-tokenising.
    write_text_atomic(out_dir / "verdicts.jsonl",
                      "".join(json.dumps({"id": i, "rejected": r}) + "\n" for i, r in verdicts.items()))
    write_text_atomic(out_dir / "sft.jsonl", "".join(
        json.dumps(t.to_conversation(for_storage=True), ensure_ascii=False) + "\n" for t in kept))
    steps = sum(len(t.steps) for t in traces)
    tokens = sum(t.meta.get("agent_tokens", 0) + t.meta.get("actor_tokens", 0) + t.meta.get("toolmaker_tokens", 0)
                 for t in traces)
    previous = out_dir / "stats.json"
    try:  # wall time over every invocation of this run (a resumed run adds to it)
        wall_total = json.loads(previous.read_text()).get("wall_s_total", 0.0) + wall if previous.exists() else wall
    except (json.JSONDecodeError, AttributeError):
        wall_total = wall
    stats = {
        "questions": n_questions,
        "episodes": len(traces),
        "kept": len(kept),
        "kept_pct": 100.0 * len(kept) / len(traces) if traces else 0.0,
        "rejected": dict(Counter(rejected).most_common()),
        "toolmaker_failed_questions": len({t.meta.get("question_id") for t in traces
                                           if (t.error or "").startswith("toolmaker")}),
        "malformed_pct": 100.0 * sum(malformed_steps(t) for t in traces) / steps if steps else 0.0,
        "mean_calls_per_episode": sum(len(t.calls) for t in traces) / len(traces) if traces else 0.0,
        "generated_tokens": tokens,
        "wall_s": wall,
        "wall_s_total": wall_total,
        "episodes_written_this_run": written,
        "episodes_per_s": written / wall if wall > 0 else 0.0,
        "generated_tokens_per_s": (sum(t.meta.get("agent_tokens", 0) + t.meta.get("actor_tokens", 0)
                                       for t in traces) / wall) if wall > 0 and written == len(traces) else None,
        "teacher": cfg.synth.teacher,
        "grounding": cfg.synth.grounding,
        "batches": batches or {},
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    print_stats(stats)
    return stats


def print_stats(stats: dict[str, Any]) -> None:
    table = Table(title="synthesis", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for key in ("questions", "episodes", "kept"):
        table.add_row(key, str(stats[key]))
    table.add_row("kept %", f"{stats['kept_pct']:.1f}")
    for reason, n in stats["rejected"].items():
        table.add_row(f"  rejected: {reason}", str(n))
    table.add_row("malformed steps %", f"{stats['malformed_pct']:.1f}")
    table.add_row("mean calls / episode", f"{stats['mean_calls_per_episode']:.2f}")
    table.add_row("generated tokens", str(stats["generated_tokens"]))
    table.add_row("wall time (s)", f"{stats['wall_s']:.1f}")
    table.add_row("episodes / s", f"{stats['episodes_per_s']:.3f}")
    for name, b in stats.get("batches", {}).items():
        table.add_row(f"rows per batch ({name})", f"{b['mean_rows']:.1f} in {b['batches']} batches")
    console.print(table)
