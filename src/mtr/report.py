"""`mtr report RUN`: one self-contained report.html for a run directory (no network needed to open it).

It reads what the stages wrote (eval/results.json, sft/ and grpo/ log.jsonl, synth/stats.json, the traces,
the manifests) and says plainly what is missing rather than failing, so that a run from an older version
or one half-written by a crash still gets a report. Model text is data: it reaches the page only as JSON
inside a non-executable <script type="application/json"> and is put on screen with textContent, never as
HTML.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from mtr.config import STAGES
from mtr.jsonl import json_lines, write_text_atomic
from mtr.metrics import exact_match, f1_score
from mtr.references import REFERENCE_EM
from mtr.prompts import FINAL_NUDGE
from mtr.rubric import REWARD_NAMES, trl_log_key
from mtr.rundir import stage_done

BENCH_ORDER = ["hotpotqa", "2wiki", "musique", "bamboogle"]
MAX_TRACES = 400  # per source; keeps the file a few MB at most
REWARD_KEYS = [("reward", "total")] + [(trl_log_key(n), n) for n in REWARD_NAMES]


class Notes:
    """What the report could not show, and why: printed at the top of the page."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        self.items.append(text)


def read_json(path: Path, notes: Notes, what: str) -> Any:
    if not path.is_file():
        notes.add(f"{path.parent.name}/{path.name} not found: no {what}")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        notes.add(f"{path.parent.name}/{path.name} is not valid JSON ({e}): no {what}")
        return None


def read_records(path: Path, notes: Notes, what: str, latest_by: str | None = None) -> list[dict[str, Any]]:
    """Tolerant JSONL reading: a crash can leave a torn last line, which is skipped and mentioned."""
    if not path.is_file():
        notes.add(f"{path.parent.name}/{path.name} not found: no {what}")
        return []
    values = [obj for _, obj in json_lines(path, errors="replace")]
    out = [obj for obj in values if isinstance(obj, dict)]
    bad = len(values) - len(out)
    if bad:
        notes.add(f"{path.parent.name}/{path.name}: {bad} unreadable line(s) skipped (a torn write?)")
    if latest_by is not None:
        out = list({str(r.get(latest_by)): r for r in out}.values())
    return out


# ---------------------------------------------------------------- plots


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG goes inline


def line_plot(title: str, series: dict[str, list[tuple[float, float]]], ylabel: str = "") -> str | None:
    """An inline SVG line plot of one or more (step, value) series; None when there is nothing to draw."""
    series = {k: [(x, y) for x, y in v if y is not None and math.isfinite(y)] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plt.rcParams["svg.fonttype"] = "none"  # real text: smaller and selectable
    plt.rcParams["svg.hashsalt"] = "mtr"  # the same run gives the same file
    fig, ax = plt.subplots(figsize=(4.6, 2.8), dpi=100)
    for name, pts in series.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, linewidth=1.5, label=name)
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step", fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=6, loc="best", framealpha=0.6)
    return _svg(fig)


def bar_plot(title: str, items: list[tuple[str, float]]) -> str | None:
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["svg.hashsalt"] = "mtr"
    fig, ax = plt.subplots(figsize=(4.6, 0.5 + 0.35 * len(items)), dpi=100)
    labels, values = zip(*items)
    ax.barh(range(len(items)), values, color=["#4c72b0"] * min(3, len(items)) + ["#c44e52"] * (len(items) - 3))
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:g}", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    return _svg(fig)


def _curve(log: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    # A resumed run logs some steps twice: the later record of a step wins, and steps are plotted in order.
    by_step = {r["step"]: r[key] for r in log if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), int)}
    return sorted(by_step.items())


# ---------------------------------------------------------------- sections


def results_section(run: Path, notes: Notes) -> dict[str, Any] | None:
    tables = []
    for name, label in (("eval", "trained policy"), ("eval-base", "initial policy")):
        if not (run / name).is_dir():
            continue
        res = read_json(run / name / "results.json", notes, f"results table ({label})")
        if res and res.get("rows"):
            tables.append((label, res))
    if not tables:
        if not (run / "eval").is_dir():
            notes.add("eval/ not found: no results table (the eval stage has not run)")
        return None
    benches = sorted({r["benchmark"] for _, res in tables for r in res["rows"]},
                     key=lambda b: (BENCH_ORDER.index(b) if b in BENCH_ORDER else 99, b))
    rows, health = [], []
    for label, res in tables:
        by_mode: dict[str, dict[str, dict]] = {}
        for r in res["rows"]:
            by_mode.setdefault(r["mode"], {})[r["benchmark"]] = r
            health.append({"policy": label, **r})
        for mode, cells in sorted(by_mode.items()):
            ems = [cells[b]["em"] for b in benches if b in cells]
            f1s = [cells[b]["f1"] for b in benches if b in cells]
            rows.append({"name": f"{label}, {mode}", "ours": True, "tools": (res.get("tools") or {}).get(mode)
                         if isinstance(res.get("tools"), dict) else None,
                         "cells": [(cells[b]["em"], cells[b]["f1"], cells[b]["n"]) if b in cells else None
                                   for b in benches],
                         "avg": (sum(ems) / len(ems), sum(f1s) / len(f1s)) if ems else None})
    refs = [{"name": f"{r['system']} ({r['model']}; {r['source']})", "ours": False, "tools": r.get("tools"),
             "cells": [(r.get(b), None, None) if r.get(b) is not None else None for b in benches],
             "avg": (r["avg"], None) if r.get("avg") is not None else None} for r in REFERENCE_EM]
    wall = {label: res.get("wall_s") for label, res in tables}
    return {"benches": benches, "rows": rows, "refs": refs, "health": health, "wall": wall}


def audit_section(run: Path, notes: Notes) -> dict[str, Any] | None:
    """`mtr audit`'s figures, when the run holds an audit (RUN/audit/audit.json)."""
    path = run / "audit" / "audit.json"
    if not path.is_file():
        return None
    audit = read_json(path, notes, "reality-gap audit")
    if not audit:
        return None
    rows = [{"tool": name, **fig} for name, fig in [("all", audit["overall"]), *audit.get("by_tool", {}).items()]]
    return {"rows": rows, "examples": audit.get("examples", [])[:6], "gap": audit.get("transfer_gap", []),
            "questions": audit.get("questions"), "toolactor": audit.get("toolactor"),
            "retriever": audit.get("retriever")}


def sft_section(run: Path, notes: Notes) -> dict[str, Any] | None:
    if not (run / "sft").is_dir():
        notes.add("sft/ not found: no SFT loss plot (the sft stage has not run)")
        return None
    log = read_records(run / "sft" / "log.jsonl", notes, "SFT loss plot")
    stats = read_json(run / "sft" / "train_stats.json", notes, "SFT summary (SFT did not finish)") \
        if log or (run / "sft" / "train_stats.json").exists() else None
    plot = line_plot("SFT training loss", {"loss": _curve(log, "loss")}, "loss")
    if plot is None and log:
        notes.add("sft/log.jsonl has no loss values: no SFT loss plot")
    return {"plots": [p for p in [plot] if p], "stats": stats}


def grpo_section(run: Path, notes: Notes) -> dict[str, Any] | None:
    if not (run / "grpo").is_dir():
        notes.add("grpo/ not found: no GRPO plots (the grpo stage has not run)")
        return None
    log = read_records(run / "grpo" / "log.jsonl", notes, "GRPO plots")
    plots = [
        line_plot("GRPO reward: total and components", {label: _curve(log, k) for k, label in REWARD_KEYS}, "reward"),
        line_plot("KL to the reference", {"kl": _curve(log, "kl")}),
        line_plot("completion length (tokens)", {"mean": _curve(log, "completions/mean_length")}),
        line_plot("tool calls per episode", {"calls": _curve(log, "episode/tool_calls")}),
        line_plot("episodes %: well-formed, answered", {"well-formed": _curve(log, "episode/well_formed_pct"),
                                                       "answered": _curve(log, "episode/answered_pct")}),
        line_plot("malformed turns %", {"malformed": _curve(log, "episode/malformed_pct")}),
    ]
    plots = [p for p in plots if p]
    if log and not plots:
        notes.add("grpo/log.jsonl has no reward values: no GRPO plots")
    stats = read_json(run / "grpo" / "train_stats.json", notes, "GRPO summary") \
        if (run / "grpo" / "train_stats.json").exists() else None
    if stats is None and log:
        notes.add("grpo/train_stats.json not found: GRPO did not finish (plots show the steps logged so far)")
    return {"plots": plots, "stats": stats}


def synth_section(run: Path, notes: Notes) -> dict[str, Any] | None:
    if not (run / "synth").is_dir():
        notes.add("synth/ not found: no synthesis funnel (the synth stage has not run)")
        return None
    stats = read_json(run / "synth" / "stats.json", notes, "synthesis funnel")
    if not stats:
        return None
    # the filter's verdicts: its own stage directory, or (a standalone `mtr synth`, an older mtr) beside the traces
    funnel_file = next((d / "filter.json" for d in (run / "filter", run / "synth") if (d / "filter.json").is_file()), None)
    verdict = read_json(funnel_file, notes, "filter funnel") if funnel_file else stats
    if funnel_file is None and "kept" not in stats:
        notes.add("filter/filter.json not found: the filter has not run, so kept/rejected is not shown")
    stats = {**stats, "kept": verdict.get("kept", 0), "kept_pct": verdict.get("kept_pct", 0.0),
             "rejected": verdict.get("rejected") or {}}
    funnel = [("questions", stats.get("questions", 0)), ("episodes", stats.get("episodes", 0)),
              ("kept", stats["kept"])]
    rejected = sorted(stats["rejected"].items(), key=lambda kv: -kv[1])
    return {"stats": stats, "plot": bar_plot("questions -> episodes -> kept; rejected by reason",
                                             funnel + [(f"rejected: {k}", v) for k, v in rejected]),
            "rejected": rejected}


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def episode_view(trace: dict[str, Any], source: str, **extra: Any) -> dict[str, Any]:
    """A trace record (any version) as the viewer shows it; only plain strings, numbers and lists."""
    tools = []
    for t in trace.get("tools") or []:
        fn = (t or {}).get("function") or {}
        tools.append({"name": _text(fn.get("name", "?")), "description": _text(fn.get("description", "")),
                      "schema": json.dumps(fn.get("parameters", {}), ensure_ascii=False, indent=1)})
    steps = []
    for s in trace.get("steps") or []:
        call = s.get("call")
        steps.append({
            "thought": _text(s.get("thought") or ""),
            "call": ({"name": _text(call.get("name", "?")),
                      "arguments": json.dumps(call.get("arguments", {}), ensure_ascii=False)} if call else None),
            "observation": None if s.get("observation") is None else _text(s["observation"]),
            "answer": None if s.get("answer") is None else _text(s["answer"]),
            "raw": _text(s["raw"]) if s.get("parse_error") and s.get("raw") else None,
            "player": s.get("player"),
            "nudge": FINAL_NUDGE if s.get("nudged") else None,
            "parse_error": s.get("parse_error"),
            "failed": [f"{c.get('code')}: {c.get('detail', '')}" for c in s.get("checks") or [] if not c.get("ok")],
        })
    answer = next((s["answer"] for s in reversed(steps) if s["answer"] is not None), None)
    gold = [_text(a) for a in trace.get("answers") or []]
    return {"source": source, "id": _text(trace.get("id", "?")), "question": _text(trace.get("question", "")),
            "gold": gold, "prediction": answer, "correct": bool(exact_match(answer, gold)) if gold else False,
            "f1": round(f1_score(answer, gold), 3) if gold else 0.0, "error": trace.get("error"),
            "tools": tools, "steps": steps, "status": None, "reason": None,
            "teacher": _text((trace.get("meta") or {}).get("teacher") or "") or None,
            "tool_mode": (trace.get("meta") or {}).get("tool_mode"), **extra}


def traces_section(run: Path, notes: Notes) -> tuple[list[dict[str, Any]], list[str]]:
    episodes: list[dict[str, Any]] = []
    shown: list[str] = []
    if (run / "synth").is_dir():
        traces = read_records(run / "synth" / "traces.jsonl", notes, "synthesis traces", latest_by="id")
        verdict_path = next((p for p in (run / "filter" / "verdicts.jsonl", run / "synth" / "verdicts.jsonl")
                             if p.is_file()), run / "filter" / "verdicts.jsonl")
        verdicts = {str(v.get("id")): v.get("rejected") for v in read_records(verdict_path, Notes(), "")}
        if traces and not verdict_path.is_file():
            notes.add("filter/verdicts.jsonl not found (the filter has not run): kept/rejected is not shown")
        for t in traces[:MAX_TRACES]:
            tid = str(t.get("id"))
            known = tid in verdicts
            episodes.append(episode_view(t, "synthesis", status=("rejected" if verdicts[tid] else "kept") if known
                                         else None, reason=verdicts.get(tid)))
        shown.append(f"synthesis: {min(len(traces), MAX_TRACES)} of {len(traces)}")
    for name, label in (("eval", "eval"), ("eval-base", "eval (initial policy)")):
        if not (run / name).is_dir():
            continue
        preds = read_records(run / name / "predictions.jsonl", notes, f"{label} episodes", latest_by="key")
        for p in preds[:MAX_TRACES]:
            if isinstance(p.get("trace"), dict):
                ep = episode_view(p["trace"], label, benchmark=p.get("benchmark"), mode=p.get("mode"))
                ep["correct"] = bool(p.get("em"))
                ep["prediction"] = p.get("prediction")
                episodes.append(ep)
        shown.append(f"{label}: {min(len(preds), MAX_TRACES)} of {len(preds)}")
    if (run / "grpo").is_dir() and (run / "grpo" / "samples.jsonl").is_file():
        samples = read_records(run / "grpo" / "samples.jsonl", notes, "GRPO samples")
        for s in samples[-MAX_TRACES:]:
            if isinstance(s.get("trace"), dict):
                episodes.append(episode_view(s["trace"], "grpo samples", step=s.get("step")))
        shown.append(f"grpo samples: {min(len(samples), MAX_TRACES)} of {len(samples)}")
    return episodes, shown


def manifests_section(run: Path) -> list[tuple[str, str]]:
    out = []
    for path in [run / "manifest.json"] + sorted(run.glob("*/manifest.json")):
        if path.is_file():
            try:
                text = json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=2, ensure_ascii=False)
            except (json.JSONDecodeError, UnicodeDecodeError):
                text = "(not valid JSON)"
            out.append((str(path.relative_to(run)), text))
    return out


def settings_section(config: dict[str, Any]) -> list[str]:
    """The method's switches in effect (the paper's ablations among them), from the run's config."""
    if not config:
        return []
    out = []
    g, t, r = config.get("grpo", {}), config.get("tools", {}), config.get("run", {})
    stages = [s for s in ("synth", "grpo", "eval") if isinstance(config.get(s), dict)]
    modes = ", ".join(f"{s} {config[s].get('tool_mode', 'simulated')}"
                      + (f" (live share {config[s]['live_share']})" if config[s].get("live_share") else "")
                      for s in stages)
    out.append(f"tools: {modes}; ToolMaker {'on' if t.get('toolmaker', True) else 'OFF (utility tools only)'}")
    off = [s for s in stages if config[s].get("precheck", True) is False]
    out.append("validation pre-check: " + (f"OFF in {', '.join(off)}" if off else "on"))
    out.append(f"GRPO starts from: {'the initial policy (no SFT)' if r.get('grpo_init') == 'base' else 'the SFT policy'}"
               f"; KL weight beta {(g.get('trl') or {}).get('beta', 'n/a')}")
    return out


def stages_section(run: Path) -> list[dict[str, Any]]:
    rows = []
    for stage in STAGES:
        done = stage_done(run / stage)
        rows.append({"stage": stage, "present": (run / stage).is_dir(), "done": done is not None,
                     "wall_s": (done or {}).get("wall_s")})
    return rows


def safe_json(value: Any) -> str:
    """JSON that can sit inside <script>: no `<` at all, so no `</script>` or `<!--` can end or bend it."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def build_report(run: Path) -> str:
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    notes = Notes()
    if not (run / "manifest.json").is_file():
        notes.add("manifest.json not found at the top of the run (a single stage's directory, or an older mtr?)")
    episodes, shown = traces_section(run, notes)
    env = Environment(loader=PackageLoader("mtr", "templates"), autoescape=select_autoescape(["html", "jinja"]))
    env.filters["num"] = lambda v, d=1: f"{v:.{d}f}" if isinstance(v, (int, float)) else ""  # absent in older runs
    template = env.get_template("report.html.jinja")
    manifest = read_json(run / "manifest.json", Notes(), "") or {}
    return template.render(
        run=str(run), created=manifest.get("created"), stages=stages_section(run),
        settings=settings_section(manifest.get("config") or {}),
        results=results_section(run, notes), audit=audit_section(run, notes), synth=synth_section(run, notes),
        sft=sft_section(run, notes),
        grpo=grpo_section(run, notes), manifests=manifests_section(run), shown=shown,
        episodes_json=safe_json(episodes), n_episodes=len(episodes), notes=notes.items)


def write_report(run: Path) -> Path:
    path = Path(run) / "report.html"
    write_text_atomic(path, build_report(run))
    return path
