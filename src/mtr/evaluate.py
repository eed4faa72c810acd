"""`mtr eval`: the policy on multi-hop QA benchmarks, tools on and off, as the papers report it.

tools-on: the ToolMaker makes the question's tools, the policy runs the ReAct loop, the ToolActor plays
the tools, with the validation checks of synthesis (the same episode loop). If the ToolMaker fails, the
policy still gets the utility tools (recorded as `toolmaker_error`), so every question is answered.
tools-off: the policy answers directly, with its reasoning.

Outputs: `predictions.jsonl` (one record per benchmark, mode and question, with the trace; resumable),
`results.json`, `results.md` (papers' layout: one row per mode, EM/F1 per benchmark, average), manifest.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mtr.backends import BackendPool
from mtr.config import Config
from mtr.data import BENCHMARKS, load_qa, resolve_benchmark
from mtr.episode import run_episode
from mtr.jsonl import JsonlAppender, read_jsonl, run_pool
from mtr.manifest import write_manifest
from mtr.metrics import cover_em, exact_match, f1_score, normalize_answer
from mtr.roles import PolicyAgent, ToolActor, ToolCache, ToolMaker, utility_tools
from mtr.trace import QAExample, Trace

console = Console()

# Words that carry no entity: an argument made only of these is not checked for support.
STOPWORDS = frozenset("""a an the of in on at to for from by with and or is was were are be been who what when where
which whose how many much did does do year years first last name born""".split())


def slot_disagreements(trace: Trace) -> tuple[int, int]:
    """(calls whose arguments are unsupported, calls). A call is *slot-disagreeing* when one of its
    string or number argument values has a normalised content token (not a stopword) that occurs neither
    in the normalised question nor in any observation the agent saw before that call. E.g. searching
    "Barack Obama" for a question about "Citibank" before any observation mentions Obama."""
    seen = set(normalize_answer(trace.question).split())
    bad = total = 0
    for step in trace.steps:
        if step.call is not None:
            total += 1
            for value in _leaves(step.call.arguments):
                tokens = [t for t in normalize_answer(str(value)).split() if t not in STOPWORDS]
                if any(t not in seen for t in tokens):
                    bad += 1
                    break
        if step.observation is not None:
            seen |= set(normalize_answer(step.observation).split())
    return bad, total


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    if isinstance(value, bool) or value is None:
        return []
    return [value]


def score_record(trace: Trace, benchmark: str, mode: str, example: QAExample) -> dict[str, Any]:
    pred = trace.final_answer
    bad_slots, calls = slot_disagreements(trace)
    invalid_calls = sum(1 for s in trace.steps if s.call is not None
                        and any(c.code in ("tool_exists", "args_valid") and not c.ok for c in s.checks))
    return {
        "key": f"{benchmark}|{mode}|{example.id}", "benchmark": benchmark, "mode": mode, "id": example.id,
        "question": example.question, "gold": example.answers, "prediction": pred,
        "em": exact_match(pred, example.answers), "f1": f1_score(pred, example.answers),
        "cover_em": cover_em(pred, example.answers),
        "steps": len(trace.steps), "malformed_steps": sum(1 for s in trace.steps if not s.ok),
        "calls": calls, "invalid_calls": invalid_calls, "slot_disagreements": bad_slots,
        "tokens": trace.meta.get("agent_tokens", 0), "error": trace.error,
        "retryable": bool(trace.meta.get("retryable")),
        "trace": trace.model_dump(mode="json", exclude_none=True),
    }


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    steps = sum(r["steps"] for r in records)
    calls = sum(r["calls"] for r in records)

    def pct(num: float, den: float) -> float:
        return 100.0 * num / den if den else 0.0

    return {
        "n": n,
        "em": pct(sum(r["em"] for r in records), n),
        "f1": pct(sum(r["f1"] for r in records), n),
        "cover_em": pct(sum(r["cover_em"] for r in records), n),
        "malformed_pct": pct(sum(r["malformed_steps"] for r in records), steps),
        "invalid_call_pct": pct(sum(r["invalid_calls"] for r in records), calls),
        "slot_disagreement_pct": pct(sum(r["slot_disagreements"] for r in records), calls),
        "no_answer_pct": pct(sum(1 for r in records if not (r["prediction"] or "").strip()), n),
        "error_pct": pct(sum(1 for r in records if r["error"]), n),
        "mean_calls": calls / n if n else 0.0,
        "mean_tokens": sum(r["tokens"] for r in records) / n if n else 0.0,
    }


async def evaluate(cfg: Config, out_dir: Path, overwrite: bool = False, pool: BackendPool | None = None
                   ) -> dict[str, Any]:
    e = cfg.eval
    benches = {(name if name in BENCHMARKS else Path(name).stem): resolve_benchmark(name) for name in e.benchmarks}
    examples = {name: load_qa(path, e.limit) for name, path in benches.items()}
    write_manifest(out_dir, "eval", cfg.model_dump(mode="json"),
                   {f"benchmark:{k}": v for k, v in benches.items()}, cfg.seed, overwrite=overwrite)
    pred_path = out_dir / "predictions.jsonl"
    if overwrite and pred_path.exists():
        pred_path.unlink()
    out = JsonlAppender(pred_path, id_key="key")
    own_pool = pool is None
    pool = pool or BackendPool(cfg)
    policy = pool.get("policy")
    tool_cache = ToolCache(ToolMaker(pool.get("toolmaker"), max_tools=e.max_tools, retries=e.toolmaker_retries,
                                     utilities=e.utility_tools, seed=cfg.seed))
    actor = ToolActor(pool.get("toolactor"), grounding=e.grounding, retries=e.actor_retries)
    agents = {"tools-on": PolicyAgent(policy, seed=cfg.seed, tools_on=True),
              "tools-off": PolicyAgent(policy, seed=cfg.seed, tools_on=False)}
    todo = [(b, m, ex) for b in examples for m in e.modes for ex in examples[b]
            if f"{b}|{m}|{ex.id}" not in out.done]

    async def worker(item: tuple[str, str, QAExample]) -> dict[str, Any]:
        bench, mode, ex = item
        agent = agents[mode]
        meta = {"seed": cfg.seed, "policy": policy.describe(), "grounding": e.grounding if mode == "tools-on" else None}
        if mode == "tools-off":
            trace = await run_episode(ex, ex.id, [], agent, None, agent.system_prompt(), max_steps=0, meta=meta)
        else:
            tm = await tool_cache.get(ex)
            tools = tm.tools
            if tm.retryable:  # the ToolMaker's server failed: record it, and let a resume try again
                trace = Trace(id=ex.id, question=ex.question, answers=ex.answers, error=tm.error,
                              meta={**meta, "retryable": True})
                return score_record(trace, bench, mode, ex)
            if tm.error is not None:
                tools = utility_tools(e.utility_tools)
                meta["toolmaker_error"] = tm.error
            trace = await run_episode(ex, ex.id, tools, agent, actor, agent.system_prompt(), max_steps=e.max_steps,
                                      seed=cfg.seed, meta=meta)
        return score_record(trace, bench, mode, ex)

    t0 = time.perf_counter()
    try:
        await run_pool(todo, worker, out, cfg.episodes_in_flight("eval"), "eval",
                       status=lambda r: f"EM {r['em']:.0f}")
    finally:
        out.close()
        if own_pool:
            await pool.aclose()
    return write_results(out_dir, time.perf_counter() - t0)


def write_results(out_dir: Path, wall_s: float | None = None) -> dict[str, Any]:
    records = read_jsonl(out_dir / "predictions.jsonl", latest_by="key")
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in records:
        groups[(r["benchmark"], r["mode"])].append(r)
    results = {"rows": [{"benchmark": b, "mode": m, **aggregate(rs)} for (b, m), rs in sorted(groups.items())],
               "wall_s": wall_s}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(markdown_table(results))
    print_results(results, out_dir)
    return results


def _by_mode(results: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, dict]]]:
    benches = sorted({r["benchmark"] for r in results["rows"]}, key=_bench_order)
    table: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in results["rows"]:
        table[r["mode"]][r["benchmark"]] = r
    return benches, table


def _bench_order(name: str) -> tuple[int, str]:
    order = ["hotpotqa", "2wiki", "musique", "bamboogle"]
    return (order.index(name) if name in order else len(order), name)


def markdown_table(results: dict[str, Any]) -> str:
    """Papers' layout: a row per mode; EM then F1 per benchmark; the average over benchmarks."""
    benches, table = _by_mode(results)
    head = "| mode | " + " | ".join(f"{b} EM | {b} F1" for b in benches) + " | avg EM | avg F1 |"
    sep = "|---|" + "---:|" * (2 * len(benches) + 2)
    lines = [head, sep]
    for mode, row in table.items():
        cells = []
        for b in benches:
            r = row.get(b)
            cells += [f"{r['em']:.1f}", f"{r['f1']:.1f}"] if r else ["", ""]
        ems = [row[b]["em"] for b in benches if b in row]
        f1s = [row[b]["f1"] for b in benches if b in row]
        cells += [f"{sum(ems) / len(ems):.1f}", f"{sum(f1s) / len(f1s):.1f}"]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| benchmark | mode | n | cover EM | malformed % | invalid call % | slot disagr. % | no answer % "
                 "| calls / ep. | tokens / ep. |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        lines.append(f"| {r['benchmark']} | {r['mode']} | {r['n']} | {r['cover_em']:.1f} | {r['malformed_pct']:.1f} "
                     f"| {r['invalid_call_pct']:.1f} | {r['slot_disagreement_pct']:.1f} | {r['no_answer_pct']:.1f} "
                     f"| {r['mean_calls']:.2f} | {r['mean_tokens']:.0f} |")
    return "\n".join(lines) + "\n"


def print_results(results: dict[str, Any], out_dir: Path | None = None) -> None:
    """The headline figures, readable in an 80-column terminal; every column is in results.md."""
    t = Table(title="evaluation", caption="EM, F1, answered episodes and malformed turns in %; tool calls per episode")
    for col in ("benchmark", "mode", "n", "EM", "F1", "answered", "malformed", "calls"):
        t.add_column(col, justify="left" if col in ("benchmark", "mode") else "right")
    for r in results["rows"]:
        t.add_row(r["benchmark"], r["mode"], str(r["n"]), f"{r['em']:.1f}", f"{r['f1']:.1f}",
                  f"{100.0 - r['no_answer_pct']:.1f}", f"{r['malformed_pct']:.1f}", f"{r['mean_calls']:.2f}")
    console.print(t)
    if out_dir is not None:
        console.print(f"all columns (cover EM, invalid calls, slot disagreement, tokens): {out_dir / 'results.md'}",
                      highlight=False)


def load_results(run: Path) -> dict[str, Any]:
    path = run / "results.json"
    if not path.is_file():
        if (run / "predictions.jsonl").is_file():
            return write_results(run)
        raise FileNotFoundError(f"{run}: not an eval run (no results.json or predictions.jsonl)")
    return json.loads(path.read_text())


def compare(run_a: Path, run_b: Path) -> list[dict[str, Any]]:
    """Side by side, per benchmark and mode present in either run; B minus A."""
    a = {(r["benchmark"], r["mode"]): r for r in load_results(run_a)["rows"]}
    b = {(r["benchmark"], r["mode"]): r for r in load_results(run_b)["rows"]}
    rows = []
    for key in sorted(set(a) | set(b), key=lambda k: (_bench_order(k[0]), k[1])):
        ra, rb = a.get(key), b.get(key)
        row = {"benchmark": key[0], "mode": key[1]}
        for m in ("em", "f1", "malformed_pct", "slot_disagreement_pct", "mean_calls"):
            va, vb = (ra or {}).get(m), (rb or {}).get(m)
            row[m] = (va, vb, None if va is None or vb is None else vb - va)
        rows.append(row)
    t = Table(title=f"A = {run_a}\nB = {run_b}")
    for col in ("benchmark", "mode", "metric", "A", "B", "B - A"):
        t.add_column(col, justify="left" if col in ("benchmark", "mode", "metric") else "right")

    def fmt(v: float | None, signed: bool = False) -> str:
        if v is None:
            return "-"
        return f"{v:+.2f}" if signed else f"{v:.2f}"

    names = {"em": "EM", "f1": "F1", "malformed_pct": "malformed %", "slot_disagreement_pct": "slot disagr. %",
             "mean_calls": "calls / episode"}
    for row in rows:
        for m, label in names.items():
            va, vb, d = row[m]
            t.add_row(row["benchmark"], row["mode"], label, fmt(va), fmt(vb), fmt(d, signed=True))
    console.print(t)
    return rows
