"""`mtr audit`: the reality gap between the simulated tools and the live ones.

For the held-out questions of a QA file, the calls a policy (or the teacher) made in its episodes are
answered again, each by the ToolActor (simulated) and by the retriever (live), side by side. For each tool
and overall:

- answer-contained %: the observation's text contains a gold answer or alias (normalised);
- supporting-title %: it names one of the record's supporting titles;
- supported-claims %: of what the simulated observation asserts (capitalised names, numbers, dates), the
  share that also occurs in the live passages: how much of the simulation a real search bears out;
- schema-valid %: the observation satisfies the tool's `returns` schema;
- latency: seconds per call, median.

With evaluation results of the same policy under simulated and live tools (`--eval`), the **transfer gap**:
its EM and F1 with live tools minus with simulated ones. Everything goes to `audit.json`; the report shows
the table and side-by-side examples.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from mtr.data import load_qa
from mtr.evidence import text_values
from mtr.jsonl import read_jsonl, write_text_atomic
from mtr.livetools import LiveSearch, call_query
from mtr.metrics import normalize_answer
from mtr.rubric import STOPWORDS
from mtr.toolactor import ToolActor
from mtr.trace import QAExample, ToolSchema, Trace
from mtr.validate import validate_observation

_CLAIM = re.compile(r"\b(?:[A-Z][\w'-]+(?: +(?:of|the|de|du|von|van|[A-Z][\w'-]+))*|\d[\d,.]*)\b")
# capitalised words that assert nothing (a sentence's first word, mostly)
_NOT_CLAIMS = STOPWORDS | frozenset("it he she they this that these those his her its their there here in on as "
                                    "yes no".split())


def claims(text: str) -> list[str]:
    """What an observation asserts, roughly: its capitalised names and its numbers (dates included),
    normalised; JSON keys and one-letter tokens are not claims."""
    values = "\n".join(text_values(json.loads(text))) if text.strip().startswith(("{", "[")) else text
    found = set()
    for m in _CLAIM.finditer(values):
        before = values[:m.start()].rstrip(" ")
        if " " not in m.group(0) and not m.group(0)[0].isdigit() and (not before or before[-1] in ".!?\n"):
            continue  # one capitalised word opening a sentence: capitalised for the sentence, not as a name
        found.add(normalize_answer(m.group(0)))
    return sorted(c for c in found if len(c) > 1 and not set(c.split()) <= _NOT_CLAIMS)


def observation_text(text: str) -> str:
    """The text values of an observation (not its JSON keys), normalised."""
    try:
        return normalize_answer(" ".join(text_values(json.loads(text))))
    except (json.JSONDecodeError, TypeError):
        return normalize_answer(text)


def supporting_titles(example: QAExample) -> list[str]:
    titles = [f[0] for f in example.supporting_facts or [] if isinstance(f, (list, tuple)) and f]
    titles += [p.get("title", "") for p in example.context or [] if p.get("is_supporting")]
    titles += list((example.metadata or {}).get("supporting_titles") or [])
    return sorted({t for t in titles if t})


def contains_any(haystack: str, needles: list[str]) -> bool:
    padded = f" {haystack} "
    return any((n := normalize_answer(x)) and f" {n} " in padded for x in needles)


async def audit_calls(traces: list[Trace], examples: dict[str, QAExample], actor: ToolActor, live: LiveSearch,
                      limit: int | None = None) -> list[dict[str, Any]]:
    """Every call of the traces (their first `limit` questions), answered by both players."""
    rows = []
    seen: set[str] = set()
    for trace in traces:
        qid = trace.meta.get("question_id", trace.id.split("#")[0])
        if qid not in examples or (limit is not None and qid not in seen and len(seen) >= limit):
            continue
        seen.add(qid)
        ex = examples[qid]
        by_name = {t.name: t for t in trace.tools}
        for step in trace.steps:
            call = step.call
            if call is None or call.name not in by_name or not all(c.ok for c in step.checks
                                                                  if c.code in ("tool_exists", "args_valid")):
                continue
            tool = by_name[call.name]
            t0 = time.perf_counter()
            sim, sim_check, _ = await actor.observe(Trace(id=trace.id, question=ex.question), tool, call, {},
                                                    example=ex, seed=0)
            t1 = time.perf_counter()
            real = json.dumps({"results": await live.passages(call_query(call))}, ensure_ascii=False)
            t2 = time.perf_counter()
            rows.append(compare_observations(ex, tool, call.name, call.arguments, sim, sim_check.ok, real,
                                             t1 - t0, t2 - t1))
    return rows


def compare_observations(ex: QAExample, tool: ToolSchema, name: str, arguments: dict, sim: str, sim_valid: bool,
                         real: str, sim_s: float, real_s: float) -> dict[str, Any]:
    sim_text, real_text = observation_text(sim), observation_text(real)
    titles = supporting_titles(ex)
    made = claims(sim)
    backed = [c for c in made if f" {c} " in f" {real_text} "]
    return {"question_id": ex.id, "tool": name, "arguments": arguments, "simulated": sim, "live": real,
            "answer_contained": {"simulated": contains_any(sim_text, ex.answers),
                                 "live": contains_any(real_text, ex.answers)},
            "supporting_title": {"simulated": contains_any(sim_text, titles), "live": contains_any(real_text, titles)},
            "claims": len(made), "claims_supported": len(backed),
            "schema_valid": {"simulated": sim_valid, "live": validate_observation(real, tool).ok},
            "seconds": {"simulated": sim_s, "live": real_s}}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per tool and overall: the shares (%), the claims borne out, the median latency."""
    def figures(rs: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rs)

        def pct(key: str, side: str) -> float:
            return 100.0 * sum(r[key][side] for r in rs) / n if n else 0.0

        made = sum(r["claims"] for r in rs)
        return {"calls": n,
                **{f"{k}_pct": {s: pct(k, s) for s in ("simulated", "live")}
                   for k in ("answer_contained", "supporting_title", "schema_valid")},
                "claims": made, "supported_claims_pct": 100.0 * sum(r["claims_supported"] for r in rs) / made
                if made else None,
                "median_seconds": {s: statistics.median(r["seconds"][s] for r in rs) if rs else None
                                   for s in ("simulated", "live")}}

    by_tool: dict[str, list] = defaultdict(list)
    for r in rows:
        by_tool["search" if r["tool"] == "search" else "generated tools"].append(r)
    return {"overall": figures(rows), "by_tool": {k: figures(v) for k, v in sorted(by_tool.items())}}


def transfer_gap(results: dict[str, Any]) -> list[dict[str, Any]]:
    """From an evaluation run with `simulated` and `live` modes: live minus simulated, per benchmark."""
    rows = {(r["benchmark"], r["mode"]): r for r in results.get("rows", [])}
    out = []
    for bench in sorted({b for b, _ in rows}):
        sim, live = rows.get((bench, "simulated")), rows.get((bench, "live"))
        if sim and live:
            out.append({"benchmark": bench, "n": sim["n"], "em": {"simulated": sim["em"], "live": live["em"]},
                        "f1": {"simulated": sim["f1"], "live": live["f1"]},
                        "em_gap": live["em"] - sim["em"], "f1_gap": live["f1"] - sim["f1"]})
    return out


def run_audit(traces_file: Path, data: Path, out: Path, actor: ToolActor, live: LiveSearch, limit: int | None,
              eval_dir: Path | None = None, meta: dict | None = None) -> dict[str, Any]:
    """Audit the calls of `traces_file` (synthesis traces, or an evaluation's predictions) on the questions of
    `data`; write `out/audit.json`."""
    records = read_jsonl(traces_file)
    traces = [Trace.model_validate(r["trace"] if "trace" in r else r) for r in records
              if (r.get("mode") in (None, "tools-on", "simulated"))]
    examples = {ex.id: ex for ex in load_qa(data)}
    rows = asyncio.run(audit_calls(traces, examples, actor, live, limit))
    if not rows:
        raise ValueError(f"{traces_file}: no valid tool call on a question of {data} to audit")
    result = {"calls_from": str(traces_file), "data": str(data), "questions": len({r["question_id"] for r in rows}),
              **summarise(rows), "examples": rows[:12], **(meta or {})}
    if eval_dir is not None and (eval_dir / "results.json").is_file():
        result["transfer_gap"] = transfer_gap(json.loads((eval_dir / "results.json").read_text()))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "audit.json", json.dumps(result, indent=2, ensure_ascii=False))
    return result


def print_audit(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"reality gap: {result['questions']} questions, {result['overall']['calls']} calls")
    for col in ("tool", "calls", "answer in obs. %", "support. title %", "claims borne out %", "schema ok %"):
        t.add_column(col, justify="left" if col == "tool" else "right")

    def side(fig: dict, key: str) -> str:
        return f"{fig[key]['simulated']:.0f} / {fig[key]['live']:.0f}"

    for name, fig in [("all", result["overall"]), *result["by_tool"].items()]:
        backed = fig["supported_claims_pct"]
        t.add_row(name, str(fig["calls"]), side(fig, "answer_contained_pct"), side(fig, "supporting_title_pct"),
                  "-" if backed is None else f"{backed:.0f}", side(fig, "schema_valid_pct"))
    console = Console()
    console.print(t)
    console.print("(simulated / live)", highlight=False)
    for g in result.get("transfer_gap", []):
        console.print(f"transfer gap on {g['benchmark']} ({g['n']}): EM {g['em']['simulated']:.1f} simulated -> "
                      f"{g['em']['live']:.1f} live ({g['em_gap']:+.1f}); F1 {g['f1']['simulated']:.1f} -> "
                      f"{g['f1']['live']:.1f} ({g['f1_gap']:+.1f})", highlight=False)
