"""`mtr tools`, stage `tools`: the ToolMaker writes each question's tools once.

Synthesis, GRPO and evaluation read the file this writes (`<name>.jsonl`, one record per question: its
tools, domain, attempts, and why it failed if it did), so no question pays the ToolMaker twice. Re-running
skips the questions already made (a backend failure is made again).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from mtr.backends import BackendPool
from mtr.config import Config
from mtr.data import load_qa
from mtr.jsonl import progress_bar, write_text_atomic
from mtr.rundir import start_fresh, write_manifest
from mtr.toolmaker import ToolStore

console = Console()
ROLES = ("toolmaker",)


def stage_config(cfg: Config) -> dict[str, Any]:
    """What this stage's manifest records of the config (a change elsewhere leaves it alone)."""
    return cfg.stage_config(("tools",), ROLES)


def tools_file(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.jsonl"


async def make_tools(cfg: Config, datasets: dict[str, tuple[Path, int | None]], out_dir: Path,
                     overwrite: bool = False, pool: Any = None) -> dict[str, Any]:
    """Tools for every question of `datasets` ({name: (QA file, first N or None)}) into `out_dir/<name>.jsonl`."""
    out_dir = Path(out_dir)
    if overwrite:
        start_fresh(out_dir, tuple(f"{n}.jsonl" for n in datasets) + ("stats.json",))
    write_manifest(out_dir, "tools", stage_config(cfg),
                   {f"data:{n}": p for n, (p, _) in datasets.items()},
                   extra={"limits": {n: lim for n, (_, lim) in datasets.items()}}, overwrite=overwrite,
                   inputs_may_grow=True)
    own_pool = pool is None
    pool = pool or BackendPool(cfg)
    stats: dict[str, Any] = {}
    try:
        for name, (path, limit) in datasets.items():
            stats[name] = await _make(cfg, name, load_qa(path, limit), tools_file(out_dir, name), pool)
    finally:
        if own_pool:
            await pool.aclose()
    write_text_atomic(out_dir / "stats.json", json.dumps(stats, indent=2))
    for name, st in stats.items():
        console.print(f"tools {name}: {st['questions']} questions, {st['made']} with tools, {st['failed']} failed "
                      f"({st['made_now']} made now)", highlight=False)
    retry = sum(st["retryable"] for st in stats.values())
    if retry:
        raise ValueError(f"{out_dir}: the ToolMaker's backend failed on {retry} question(s); the tools made so far "
                         "are kept, and a re-run retries the rest")
    return stats


async def _make(cfg: Config, name: str, examples: list, path: Path, pool: Any) -> dict[str, Any]:
    store = ToolStore.from_config(cfg, pool, path)
    todo = [ex for ex in examples if ex.id not in store.made]
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"tools {name}", total=len(todo), status="")
            for fut in asyncio.as_completed([asyncio.ensure_future(store.get(ex)) for ex in todo]):
                res = await fut
                bar.update(task, advance=1, status="ok" if res.error is None else "failed")
        results = [await store.get(ex) for ex in examples]
    finally:
        store.close()
    failures = Counter(r.error.split(":")[0] for r in results if r.error is not None)
    return {"questions": len(examples), "made": sum(r.error is None for r in results),
            "failed": sum(r.error is not None for r in results), "retryable": sum(r.retryable for r in results),
            "made_now": len(todo), "failures": dict(failures),
            "tokens": sum(r.tokens for r in results), "mean_attempts": sum(r.attempts for r in results) / len(results)}
