"""The `mtr` command line. Every expected failure ends as one red line on stderr and exit status 2."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtr.backends import BackendError, BackendPool
from mtr.config import ROLES, ConfigError, load_config
from mtr.embedded import EmbeddedModelError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mtr: teach language models to use tools without live APIs (arXiv 2510.06825).")
console = Console()
err_console = Console(stderr=True)

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, BackendError, EmbeddedModelError, FileNotFoundError,
                                            ValueError)


def user_errors(fn):
    """Turn the errors a user can fix into one line and exit status 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            # escaped: a path or a model's text may hold "[...]", which rich would read as markup and drop
            err_console.print(f"[red]error:[/red] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: the packaged cpu-tiny preset)")


@app.command()
@user_errors
def models(config: Optional[Path] = ConfigOpt,
           check: bool = typer.Option(True, help="load each backend (or reach its server) and report"),
           embedded_only: bool = typer.Option(False, help="only prepare the embedded model's cached checkpoint")):
    """What each role resolves to, and whether it loads."""
    if embedded_only:
        from mtr.embedded import ensure_checkpoint

        t = time.perf_counter()
        path = ensure_checkpoint()
        console.print(f"embedded model ready: {path} ({time.perf_counter() - t:.1f}s)")
        return
    cfg = load_config(config)
    pool = BackendPool(cfg)
    table = Table(title="roles")
    for col in ("role", "backend", "model", "status"):
        table.add_column(col)
    failures = 0
    for role in ROLES:
        rc = cfg.role(role)
        backend = pool.get(role)
        status = "not checked"
        if check:
            t = time.perf_counter()
            try:
                backend.load()
                status = f"[green]ok[/green] ({time.perf_counter() - t:.1f}s)"
            except (BackendError, EmbeddedModelError) as e:
                failures += 1
                status = f"[red]fails[/red]: {e}"
        table.add_row(role, rc.backend, backend.describe(), status)
    console.print(table)
    from importlib.util import find_spec

    if find_spec("llama_cpp") is not None:
        from mtr.llamacpp_build import check as llamacpp_check, describe_build

        console.print(describe_build(), highlight=False)
        if check and any(cfg.role(r).backend == "llamacpp" for r in ROLES):
            result = llamacpp_check()
            console.print(result.message, highlight=False, style=None if result.ok else "red")
            failures += not result.ok
    if failures:
        raise typer.Exit(1)


@app.command()
@user_errors
def chat(role: str = typer.Argument(..., help=f"one of: {', '.join(ROLES)}"),
         message: str = typer.Argument(..., help="the user message"),
         config: Optional[Path] = ConfigOpt,
         system: Optional[str] = typer.Option(None, help="a system message"),
         max_tokens: Optional[int] = typer.Option(None, help="override the role's max_tokens"),
         temperature: Optional[float] = typer.Option(None, help="override the role's temperature"),
         seed: int = typer.Option(0)):
    """Send one message to the model that plays ROLE and print its reply."""
    cfg = load_config(config)
    cfg.role(role)  # unknown role -> one-line error
    pool = BackendPool(cfg)
    backend = pool.get(role)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    overrides = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None}

    async def go():
        try:
            return await backend.chat(messages, backend.params(seed=seed, **overrides))
        finally:
            await pool.aclose()

    t = time.perf_counter()
    [c] = asyncio.run(go())
    dt = time.perf_counter() - t
    console.print(c.text, markup=False, highlight=False)
    err_console.print(f"[dim]{backend.describe()}: {c.completion_tokens} tokens in {dt:.1f}s, "
                      f"finish={c.finish_reason}[/dim]")


@app.command()
@user_errors
def tools(data: Path = typer.Option(..., "--data", help="QA JSONL (id, question, answers)"),
          out: Path = typer.Option(..., "--out", help="directory for <data name>.jsonl (re-running adds only new "
                                   "questions)"),
          config: Optional[Path] = ConfigOpt,
          limit: Optional[int] = typer.Option(None, min=1, help="first N questions only"),
          overwrite: bool = typer.Option(False, help="start afresh in a directory that holds another run")):
    """The ToolMaker writes each question's tools once; synth, grpo and eval read them (--tools)."""
    from mtr.stages.tools import make_tools, tools_file

    asyncio.run(make_tools(load_config(config), {data.stem: (data, limit)}, out, overwrite=overwrite))
    console.print(f"wrote {tools_file(out, data.stem)}, stats.json, manifest.json")


ToolsOpt = typer.Option(None, "--tools", help="a tools file from `mtr tools` (questions not in it get their tools "
                        "made and added to it)")


@app.command()
@user_errors
def synth(data: Path = typer.Option(..., "--data", help="QA JSONL (id, question, answers[, context])"),
          out: Path = typer.Option(..., "--out", help="run directory (re-running resumes it)"),
          config: Optional[Path] = ConfigOpt,
          limit: Optional[int] = typer.Option(None, min=1, help="first N questions only"),
          teacher: Optional[str] = typer.Option(None, help="override synth.teacher: model | scripted"),
          tools_file: Optional[Path] = ToolsOpt,
          overwrite: bool = typer.Option(False, help="start afresh in a directory that holds another run")):
    """Synthesise tool-use traces (ToolMaker -> AutoAgent <-> V <-> ToolActor), then filter them into sft.jsonl."""
    from mtr.stages.filter import run_filter
    from mtr.stages.synth import synthesize

    cfg = load_config(config)
    if teacher is not None:
        cfg.synth.teacher = teacher
    asyncio.run(synthesize(cfg, data, out, limit=limit, overwrite=overwrite, tools_path=tools_file))
    run_filter(cfg, out / "traces.jsonl", out)
    console.print(f"wrote {out}/traces.jsonl, stats.json, manifest.json; filtered: sft.jsonl, verdicts.jsonl, "
                  "filter.json")


@app.command("filter")
@user_errors
def filter_cmd(run_dir: Path = typer.Argument(..., help="a synthesis run (its traces.jsonl)"),
               out: Optional[Path] = typer.Option(None, "--out", help="where sft.jsonl goes (default: RUN_DIR)"),
               config: Optional[Path] = ConfigOpt):
    """Re-filter a synthesis run's traces with the config's `filter` settings, without synthesising again."""
    from mtr.stages.filter import run_filter

    traces = run_dir / "traces.jsonl" if run_dir.is_dir() else run_dir
    run_filter(load_config(config), traces, out)
    console.print(f"wrote {out or traces.parent}/sft.jsonl, verdicts.jsonl, filter.json")


@app.command("eval")
@user_errors
def eval_cmd(out: Optional[Path] = typer.Option(None, "--out", help="run directory (re-running resumes it)"),
             config: Optional[Path] = ConfigOpt,
             benchmarks: Optional[str] = typer.Option(None, help="comma-separated: hotpotqa,2wiki,musique,bamboogle "
                                                      "or QA .jsonl paths (default: the config's eval.benchmarks)"),
             modes: Optional[str] = typer.Option(None, help="comma-separated: tools-on,tools-off"),
             limit: Optional[int] = typer.Option(None, min=1, help="first N questions of each benchmark"),
             policy: Optional[str] = typer.Option(None, help="a checkpoint directory to evaluate as the policy (hf)"),
             compare: Optional[tuple[Path, Path]] = typer.Option(None, help="print two eval runs side by side"),
             tools_dir: Optional[Path] = typer.Option(None, "--tools", help="a directory of `mtr tools` files "
                                                      "(<benchmark>.jsonl); default: made in OUT/tools"),
             overwrite: bool = typer.Option(False, help="start afresh in a directory that holds another run")):
    """Evaluate the policy: EM/F1 (+ cover EM) and structural health, tools on and off."""
    from mtr.stages.evaluate import compare as compare_runs
    from mtr.stages.evaluate import evaluate

    if compare:
        compare_runs(*compare)
        return
    if out is None:
        raise ValueError("--out is required (or --compare RUN_A RUN_B)")
    cfg = load_config(config)
    if benchmarks:
        cfg.eval.benchmarks = [b.strip() for b in benchmarks.split(",") if b.strip()]
    if modes:
        cfg.eval.modes = [m.strip() for m in modes.split(",") if m.strip()]
    if limit is not None:
        cfg.eval.limit = limit
    if policy:
        cfg = cfg.with_policy(policy)
    asyncio.run(evaluate(cfg, out, overwrite=overwrite, tools_dir=tools_dir))
    console.print(f"wrote {out}/predictions.jsonl, results.json, results.md, manifest.json")


@app.command()
@user_errors
def sft(data: Path = typer.Option(..., "--data", help="sft.jsonl from `mtr synth` / `mtr filter` (messages + tools)"),
        out: Path = typer.Option(..., "--out", help="output directory: the checkpoint, logs, manifest"),
        config: Optional[Path] = ConfigOpt,
        resume: bool = typer.Option(False, help="continue from the last checkpoint in --out"),
        overwrite: bool = typer.Option(False, help="start afresh in a directory that holds another run")):
    """Stage 1: supervised fine-tuning on filtered traces (TRL SFTTrainer, loss on assistant tokens only)."""
    from mtr.stages.sft import train_sft

    train_sft(load_config(config), data, out, resume=resume, overwrite=overwrite)


@app.command()
@user_errors
def grpo(data: Path = typer.Option(..., "--data", help="QA JSONL (id, question, answers) to train on"),
         init: Path = typer.Option(..., "--init", help="the starting checkpoint (usually the output of `mtr sft`)"),
         out: Path = typer.Option(..., "--out", help="output directory: checkpoints, logs, samples, manifest"),
         config: Optional[Path] = ConfigOpt,
         limit: Optional[int] = typer.Option(None, min=1, help="first N questions only"),
         tools_file: Optional[Path] = ToolsOpt,
         resume: bool = typer.Option(False, help="continue from the last checkpoint in --out"),
         overwrite: bool = typer.Option(False, help="start afresh in a directory that holds another run")):
    """Stage 2: GRPO with multi-turn simulated-tool rollouts and the composite reward (TRL GRPOTrainer)."""
    from mtr.stages.grpo import train_grpo

    train_grpo(load_config(config), data, init, out, limit=limit, resume=resume, overwrite=overwrite,
               tools_path=tools_file)


@app.command()
@user_errors
def prompts(role: str = typer.Argument(..., help="toolmaker | autoagent | toolactor | policy | policy-no-tools")):
    """Show the prompt template a role uses (files in mtr/prompts/)."""
    from mtr.prompts import prompt_text

    console.print(prompt_text(role), markup=False, highlight=False)


@app.command()
@user_errors
def run(config: Optional[Path] = ConfigOpt,
        out: Path = typer.Option(..., "--out", help="run directory (re-running continues where it stopped)"),
        overwrite: bool = typer.Option(False, help="discard the stages of another run in --out and start afresh")):
    """The whole method from one config: tools -> synth -> filter -> SFT -> GRPO -> eval (tools on/off) -> report."""
    from mtr.pipeline import run_pipeline

    run_pipeline(load_config(config), out, overwrite=overwrite)


corpus_app = typer.Typer(help="Passage corpora for the real `search` tool (BM25).", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("build")
@user_errors
def corpus_build(data: Optional[list[Path]] = typer.Option(None, "--data", help="QA JSONL files whose paragraphs "
                                                           "(`context`) form the corpus; default: the shipped data"),
                 out: Optional[Path] = typer.Option(None, "--out", help="corpus directory (corpus.jsonl + index); "
                                                    "default: the default corpus under $MTR_HOME")):
    """Build a corpus and its BM25 index (deduplicated by title and text); `retriever.corpus` names it."""
    from mtr.retrieval import build_corpus, default_corpus

    t = time.perf_counter()
    if not data and out is None:
        path = default_corpus()
    else:
        if not data or out is None:
            raise ValueError("give both --data and --out, or neither (the default corpus)")
        build_corpus(list(data), out)
        path = out
    meta = json.loads((path / "meta.json").read_text())
    console.print(f"corpus ready: {path} ({meta['passages']} passages; {time.perf_counter() - t:.1f}s)")


@app.command()
@user_errors
def audit(data: Path = typer.Option(..., "--data", help="held-out QA JSONL (with supporting facts or paragraphs)"),
          out: Path = typer.Option(..., "--out", help="audit directory: audit.json, and eval/ unless --calls"),
          config: Optional[Path] = ConfigOpt,
          limit: int = typer.Option(100, min=1, help="questions to audit"),
          policy: Optional[str] = typer.Option(None, help="the policy whose calls are audited (a checkpoint)"),
          calls: Optional[Path] = typer.Option(None, help="take the calls from these traces (traces.jsonl or "
                                               "predictions.jsonl) instead of evaluating the policy")):
    """The reality gap: the same calls answered by the ToolActor and by the retriever, and the policy's EM/F1
    with simulated and with live tools."""
    from mtr.audit import run_audit
    from mtr.env import shared_retriever
    from mtr.livetools import LiveSearch
    from mtr.stages.evaluate import evaluate
    from mtr.toolactor import ToolActor

    cfg = load_config(config)
    eval_dir = None
    if calls is None:
        cfg.eval.benchmarks, cfg.eval.modes, cfg.eval.limit = [str(data)], ["simulated", "live"], limit
        if policy:
            cfg = cfg.with_policy(policy)
        eval_dir = out / "eval"
        asyncio.run(evaluate(cfg, eval_dir))
        calls = eval_dir / "predictions.jsonl"
    r = cfg.retriever
    retriever = shared_retriever(r)
    pool = BackendPool(cfg)
    actor = ToolActor(pool.get("toolactor"), grounding=cfg.eval.grounding, retries=cfg.eval.actor_retries,
                      retriever=retriever, max_chars=r.max_chars)
    result = run_audit(calls, data, out, actor, LiveSearch(retriever, r.top_k, r.max_chars), limit, eval_dir,
                       meta={"toolactor": pool.get("toolactor").describe(), "retriever": retriever.describe(),
                             "grounding": cfg.eval.grounding})
    from mtr.audit import print_audit

    print_audit(result)
    console.print(f"wrote {out / 'audit.json'}")


@app.command()
@user_errors
def report(run_dir: Path = typer.Argument(..., help="a run directory (of `mtr run`, or any stage's)")):
    """Write RUN/report.html: results beside the papers', training curves, synthesis funnel, trace viewer."""
    from mtr.report import write_report

    console.print(f"wrote {write_report(run_dir)}")


DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


@app.command()
@user_errors
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="run directory"),
         config: Path = typer.Option(DEMO_CONFIG, "--config", "-c", help="YAML config (default: the demo preset)"),
         overwrite: bool = typer.Option(False, help="start afresh")):
    """The main job on the embedded default: `mtr run` with the demo preset on a small slice (~8 min, 2-core CPU)."""
    from mtr.pipeline import run_pipeline

    run_pipeline(load_config(config), out, overwrite=overwrite)
    console.print(f"open {out / 'report.html'} in a browser")


if __name__ == "__main__":
    app()
