"""`mtr synth`, stage `synth`: make tool-use traces with no live API.

For each question the AutoAgent (or the scripted teacher) runs episodes in the Environment: the question's
tools (made once by the ToolMaker, read from the tools stage's file or made here), the ToolActor playing
them, the checks V on every step. Episodes are appended to `traces.jsonl` as they finish; a re-run skips
finished ids. `stats.json` and a table report what synthesis did; the filter stage then decides what
becomes SFT data.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mtr.agents import AutoAgent, ScriptedTeacher
from mtr.backends import BackendPool
from mtr.config import Config
from mtr.data import load_qa
from mtr.env import Environment
from mtr.jsonl import JsonlAppender, print_table, read_jsonl, run_pool
from mtr.rubric import health
from mtr.rundir import start_fresh, write_manifest
from mtr.trace import QAExample, Trace

console = Console()


def roles_used(cfg: Config) -> tuple[str, ...]:
    return ("toolmaker", "toolactor") + (("autoagent",) if cfg.synth.teacher == "model" else ())


def stage_config(cfg: Config) -> dict[str, Any]:
    """What this stage's manifest records of the config (a change elsewhere leaves it alone)."""
    return cfg.stage_config(("synth", "tools"), roles_used(cfg))


async def synthesize(cfg: Config, data: Path, out_dir: Path, limit: int | None = None, overwrite: bool = False,
                     pool: Any = None, tools_path: Path | None = None) -> dict[str, Any]:
    """Episodes for the first `limit` questions of `data` into `out_dir/traces.jsonl`. The questions' tools come
    from `tools_path` (the tools stage's file); any missing there are made and added to it (by default
    `out_dir/tools.jsonl`)."""
    examples = load_qa(data, limit)
    s = cfg.synth
    out_dir = Path(out_dir)
    if overwrite:
        start_fresh(out_dir, ("traces.jsonl", "stats.json") + (() if tools_path else ("tools.jsonl",)))
    write_manifest(out_dir, "synth", stage_config(cfg), {"data": Path(data)},
                   extra={"limit": limit}, overwrite=overwrite)
    traces_path = out_dir / "traces.jsonl"
    out = JsonlAppender(traces_path)
    if out.repaired_bytes:
        console.print(f"[yellow]{traces_path}: cut {out.repaired_bytes} bytes of a torn last record[/yellow]")
    own_pool = pool is None
    pool = pool or BackendPool(cfg)
    env = Environment.from_config(cfg, "synth", pool, tools_path or out_dir / "tools.jsonl")
    agent = (ScriptedTeacher({ex.id: ex for ex in examples}) if s.teacher == "scripted"
             else AutoAgent(pool.get("autoagent"), seed=cfg.seed))
    roles_meta = {r: pool.get(r).describe() for r in ("toolmaker", "toolactor")}
    roles_meta["autoagent"] = "scripted" if s.teacher == "scripted" else pool.get("autoagent").describe()
    todo = [(ex, k) for ex in examples for k in range(s.episodes_per_question) if f"{ex.id}#{k}" not in out.done]

    async def worker(item: tuple[QAExample, int]) -> dict[str, Any]:
        ex, k = item
        meta = {"question_id": ex.id, "episode": k, "teacher": s.teacher, "grounding": s.grounding,
                "roles": roles_meta}
        trace = await env.rollout(ex, agent, f"{ex.id}#{k}", seed=cfg.seed + 1000 * k, meta=meta)
        return trace.model_dump(mode="json", exclude_none=True)

    # A model teacher's turns go in lockstep, as the policy's do in evaluation: a batch waits for a request of
    # every episode in flight (a ToolMaker's or ToolActor's on the same weights counts). Not with several
    # episodes a question: they wait on one ToolMaker request together, and the batch would wait for them all.
    lockstep = pool.get("autoagent") if s.teacher == "model" and s.episodes_per_question == 1 else None
    t0 = time.perf_counter()
    try:
        written = await run_pool(todo, worker, out, cfg.episodes_in_flight("synth"), "synth",
                                 lambda rec: "ok" if rec.get("error") is None else "failed", lockstep=lockstep)
    finally:
        out.close()
        env.close()
        if own_pool:
            await pool.aclose()
    wall = time.perf_counter() - t0
    # rows per batch of each local backend: how much of the concurrency reached the model together
    batches = {b.describe(): st for b in pool.backends() if (st := b.batch_stats())}
    return write_stats(cfg, out_dir, len(examples), wall, written, batches)


def write_stats(cfg: Config, out_dir: Path, n_questions: int, wall: float, written: int,
                batches: dict[str, dict] | None = None) -> dict[str, Any]:
    """stats.json from all of traces.jsonl (a resumed run counts every episode, and adds up its wall time)."""
    traces = [Trace.model_validate(r) for r in read_jsonl(out_dir / "traces.jsonl", latest_by="id")]
    h = health(traces)
    agent_tokens = sum(t.meta.get("agent_tokens", 0) + t.meta.get("actor_tokens", 0) for t in traces)
    # the ToolMaker's tokens once per question, however many episodes it has
    toolmaker = {t.meta.get("question_id", t.id): t.meta.get("toolmaker_tokens", 0) for t in traces}
    previous = out_dir / "stats.json"
    try:  # wall time over every invocation of this run (a resumed run adds to it)
        wall_total = json.loads(previous.read_text()).get("wall_s_total", 0.0) + wall if previous.exists() else wall
    except (json.JSONDecodeError, AttributeError):
        wall_total = wall
    stats = {
        "questions": n_questions,
        "episodes": len(traces),
        "failed_episodes": sum(1 for t in traces if t.error),
        "toolmaker_failed_questions": len({t.meta.get("question_id") for t in traces
                                           if (t.error or "").startswith("toolmaker")}),
        "well_formed_pct": h["well_formed_pct"],
        "answered_pct": h["answered_pct"],
        "parse_valid_pct": h["parse_valid_pct"],
        "malformed_pct": h["malformed_pct"],
        "no_answer_pct": h["no_answer_pct"],
        "mean_calls_per_episode": h["tool_calls"],
        "generated_tokens": agent_tokens + sum(toolmaker.values()),
        "wall_s": wall,
        "wall_s_total": wall_total,
        "episodes_written_this_run": written,
        "episodes_per_s": written / wall if wall > 0 else 0.0,
        "generated_tokens_per_s": agent_tokens / wall if wall > 0 and written == len(traces) else None,
        "teacher": cfg.synth.teacher,
        "grounding": cfg.synth.grounding,
        "batches": batches or {},
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    print_stats(stats)
    return stats


def print_stats(stats: dict[str, Any]) -> None:
    print_table("synthesis", [
        ("questions", stats["questions"]), ("episodes", stats["episodes"]),
        ("failed episodes", stats["failed_episodes"]), ("well-formed episodes %", f"{stats['well_formed_pct']:.1f}"),
        ("answered %", f"{stats['answered_pct']:.1f}"), ("parse-valid turns %", f"{stats['parse_valid_pct']:.1f}"),
        ("malformed turns %", f"{stats['malformed_pct']:.1f}"),
        ("mean calls / episode", f"{stats['mean_calls_per_episode']:.2f}"),
        ("generated tokens", stats["generated_tokens"]), ("wall time (s)", f"{stats['wall_s']:.1f}"),
        ("episodes / s", f"{stats['episodes_per_s']:.3f}"),
        *((f"rows per batch ({name})", f"{b['mean_rows']:.1f} in {b['batches']} batches")
          for name, b in stats.get("batches", {}).items())])
