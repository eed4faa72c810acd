"""`mtr eval`: the policy on multi-hop QA benchmarks, tools on and off, as the papers report it.

tools-on: the policy runs the ReAct loop in the same Environment as synthesis and GRPO: the question's
tools (the ToolMaker's, read from the tools stage's files or made here), the ToolActor playing them, the
validation checks. If the ToolMaker failed, the policy still gets the utility tools (recorded as
`toolmaker_error`), so every question is answered. tools-off: the policy answers directly.

Outputs: `predictions.jsonl` (one record per benchmark, mode and question, with the trace; resumable),
`results.json`, `results.md` (papers' layout: one row per mode, EM/F1 per benchmark, average), manifest.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from mtr.agents import PolicyAgent
from mtr.backends import BackendPool
from mtr.config import Config
from mtr.data import BENCHMARKS, load_qa, resolve_benchmark
from mtr.env import Environment
from mtr.jsonl import JsonlAppender, read_jsonl, run_pool, running_mean
from mtr.metrics import cover_em, exact_match, f1_score
from mtr.rubric import episode_counts, health
from mtr.rundir import start_fresh, write_manifest
from mtr.toolmaker import ToolStore
from mtr.trace import QAExample, Trace

console = Console()
ROLES = ("toolmaker", "toolactor", "policy")


def stage_config(cfg: Config) -> dict[str, Any]:
    """What this stage's manifest records of the config (a change elsewhere leaves it alone)."""
    return cfg.stage_config(("eval", "tools"), ROLES)


def benchmark_files(cfg: Config) -> dict[str, Path]:
    """The configured benchmarks: {name: QA file}."""
    return {(name if name in BENCHMARKS else Path(name).stem): resolve_benchmark(name) for name in cfg.eval.benchmarks}


def score_record(trace: Trace, benchmark: str, mode: str, example: QAExample) -> dict[str, Any]:
    pred = trace.final_answer
    return {
        "key": f"{benchmark}|{mode}|{example.id}", "benchmark": benchmark, "mode": mode, "id": example.id,
        "question": example.question, "gold": example.answers, "prediction": pred,
        "em": exact_match(pred, example.answers), "f1": f1_score(pred, example.answers),
        "cover_em": cover_em(pred, example.answers), **episode_counts(trace),
        "error": trace.error, "retryable": bool(trace.meta.get("retryable")),
        "trace": trace.model_dump(mode="json", exclude_none=True),
    }


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    h = health(records)

    def pct(key: str) -> float:
        return 100.0 * sum(r[key] for r in records) / n if n else 0.0

    return {"n": n, "em": pct("em"), "f1": pct("f1"), "cover_em": pct("cover_em"),
            "answered_pct": h["answered_pct"], "well_formed_pct": h["well_formed_pct"],
            "parse_valid_pct": h["parse_valid_pct"], "malformed_pct": h["malformed_pct"], "invalid_call_pct": h["invalid_call_pct"],
            "slot_disagreement_pct": h["slot_disagreement_pct"], "no_answer_pct": h["no_answer_pct"],
            "error_pct": h["error_pct"], "mean_calls": h["tool_calls"], "mean_tokens": h["tokens"]}


async def evaluate(cfg: Config, out_dir: Path, overwrite: bool = False, pool: Any = None,
                   tools_dir: Path | None = None) -> dict[str, Any]:
    """The policy on every configured benchmark and mode. Each benchmark's tools come from
    `tools_dir/<benchmark>.jsonl` (the tools stage's), or are made here and kept in `out_dir/tools/`."""
    e = cfg.eval
    out_dir = Path(out_dir)
    benches = benchmark_files(cfg)
    examples = {name: load_qa(path, e.limit) for name, path in benches.items()}
    own_tools = tools_dir is None
    tools_dir = Path(tools_dir) if tools_dir else out_dir / "tools"
    if overwrite:
        start_fresh(out_dir, ("predictions.jsonl", "results.json", "results.md"))
        if own_tools:
            shutil.rmtree(tools_dir, ignore_errors=True)
    write_manifest(out_dir, "eval", stage_config(cfg),
                   {f"benchmark:{k}": v for k, v in benches.items()}, overwrite=overwrite, limits=("eval.limit", "eval.modes"))
    out = JsonlAppender(out_dir / "predictions.jsonl", id_key="key")
    own_pool = pool is None
    pool = pool or BackendPool(cfg)
    policy = pool.get("policy")
    agent = PolicyAgent(policy, seed=cfg.seed)
    # one ToolStore a benchmark: its modes' episodes of a question play the same tools, made once (a store each
    # made them again for every mode, and sampled them anew)
    tools_on = any(e.mode_of(m) != "off" for m in e.modes)
    stores = {b: ToolStore.from_config(cfg, pool, tools_dir / f"{b}.jsonl") for b in examples if tools_on}
    envs = {(b, m): Environment.from_config(cfg, "eval", pool, mode=e.mode_of(m), store=stores.get(b))
            for b in examples for m in e.modes}
    todo = [(b, m, ex) for b in examples for m in e.modes for ex in examples[b] if f"{b}|{m}|{ex.id}" not in out.done]

    async def worker(item: tuple[str, str, QAExample]) -> dict[str, Any]:
        bench, mode, ex = item
        env = envs[(bench, mode)]
        meta = {"policy": policy.describe(), "grounding": e.grounding if env.tools_on else None}
        return score_record(await env.rollout(ex, agent, ex.id, seed=cfg.seed, meta=meta), bench, mode, ex)

    # The ToolMaker's tools of each question a mode plays them in, made before the episodes: two modes'
    # episodes of a question would wait on one ToolMaker request together, and a batch of the policy's turns
    # in lockstep, on the same weights, would wait for both
    needed = {(b, ex.id): (stores[b], ex) for b, m, ex in todo
              if envs[(b, m)].plays_made_tools and ex.id not in stores[b].made}

    async def make_tools() -> None:
        slots = asyncio.Semaphore(cfg.episodes_in_flight("eval"))

        async def one(store: ToolStore, ex: QAExample) -> None:
            async with slots:
                await store.get(ex)

        tasks = [asyncio.create_task(one(store, ex)) for store, ex in needed.values()]
        try:
            with console.status(f"ToolMaker: tools for {len(needed)} questions"):
                await asyncio.gather(*tasks)
        finally:  # one failed: the others stop before the stores and the pool close
            for task in tasks:
                task.cancel()

    t0 = time.perf_counter()
    try:
        await make_tools()
        # a batch of the policy's turns waits for a turn of every episode in flight (lockstep): cut as requests
        # came, an episode whose tool answered a moment late waited a whole batch (docs/performance.md)
        await run_pool(todo, worker, out, cfg.episodes_in_flight("eval"), "eval",
                       status=running_mean("em", "mean EM", percent=True), lockstep=policy)
    finally:
        out.close()
        for env in envs.values():
            env.close()
        if own_pool:
            await pool.aclose()
    return write_results(out_dir, time.perf_counter() - t0, describe_tools(cfg))


def describe_tools(cfg: Config) -> dict[str, str]:
    """Which tools played in each mode, in words a reader of the table needs (a simulated EM is not a live one)."""
    actor, e, r = cfg.role("toolactor"), cfg.eval, cfg.retriever
    retriever = (f"a BM25 index of the {r.corpus} corpus, top {r.top_k}" if r.kind == "bm25"
                 else f"the retrieval server at {r.url}, top {r.top_k}")
    simulated = f"the ToolActor ({actor.backend}:{actor.model})"
    knowledge = {"none": "from its own weights", "retrieval": "grounded in retrieval",
                 "oracle": "grounded in the records' own paragraphs (ORACLE: gold ones included)"}[e.grounding]
    words = {"simulated": f"simulated: the ToolMaker's tools and {', '.join(cfg.tools.utility_tools)}, played by "
                          f"{simulated}, {knowledge}",
             "live": f"live: the utility tools only ({', '.join(cfg.tools.utility_tools)}), `search` and `lookup` "
                     f"answered by {retriever}, `calculate` computed",
             "hybrid": f"hybrid: the utility tools live (`search` and `lookup` by {retriever}, `calculate` "
                       f"computed); the ToolMaker's tools played by {simulated}, grounded in retrieval",
             "off": "none"}
    return {m: words[e.mode_of(m)] for m in e.modes}


def write_results(out_dir: Path, wall_s: float | None = None, tools: dict[str, str] | None = None) -> dict[str, Any]:
    records = read_jsonl(out_dir / "predictions.jsonl", latest_by="key")
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in records:
        groups[(r["benchmark"], r["mode"])].append(r)
    previous = out_dir / "results.json"
    if tools is None and previous.is_file():  # rebuilt from predictions: keep what the run said of its tools
        tools = json.loads(previous.read_text()).get("tools")
    results = {"rows": [{"benchmark": b, "mode": m, **aggregate(rs)} for (b, m), rs in sorted(groups.items())],
               "wall_s": wall_s, "tools": tools}
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
    lines.append("| benchmark | mode | n | cover EM | answered % | well-formed episodes % | parse-valid turns % "
                 "| malformed turns % | invalid call % | slot disagr. % | calls / ep. | tokens / ep. |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        lines.append(f"| {r['benchmark']} | {r['mode']} | {r['n']} | {r['cover_em']:.1f} "
                     f"| {r.get('answered_pct', 100.0 - r['no_answer_pct']):.1f} | {r.get('well_formed_pct', 0.0):.1f} "
                     f"| {r.get('parse_valid_pct', 0.0):.1f} | {r['malformed_pct']:.1f} | {r['invalid_call_pct']:.1f} "
                     f"| {r['slot_disagreement_pct']:.1f} | {r['mean_calls']:.2f} | {r['mean_tokens']:.0f} |")
    return "\n".join(lines) + "\n"


def print_results(results: dict[str, Any], out_dir: Path | None = None) -> None:
    """The headline figures, readable in an 80-column terminal; every column is in results.md."""
    t = Table(title="evaluation", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption="in %: EM, F1, episodes answered and well-formed "
              "(every turn parsed and passed its checks, and an answer), turns that parsed; calls per episode")
    for col in ("benchmark", "mode", "n", "EM", "F1", "answered", "well-formed", "parsed", "calls"):
        t.add_column(col, justify="left" if col in ("benchmark", "mode") else "right")
    for r in results["rows"]:
        t.add_row(r["benchmark"], r["mode"], str(r["n"]), f"{r['em']:.1f}", f"{r['f1']:.1f}",
                  f"{r.get('answered_pct', 100.0 - r['no_answer_pct']):.1f}", f"{r.get('well_formed_pct', 0.0):.1f}",
                  f"{r.get('parse_valid_pct', 0.0):.1f}", f"{r['mean_calls']:.2f}")
    console.print(t)
    for mode, words in (results.get("tools") or {}).items():
        if words != "none":
            console.print(f"{mode}: {words}", highlight=False)
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
