"""What the two training stages (SFT, GRPO) share around their TRL trainer: its arguments from the config,
the run directory prepared by the main process, the resume point, and the log.

TRL's arguments come from the stage's `trl` mapping unchanged; mtr adds only what it owns (the output
directory, the seed, CPU or GPU and its precision default, no dataloader workers).
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console

from mtr.config import trl_args
from mtr.distributed import is_main, on_main
from mtr.rundir import last_checkpoint, start_fresh

console = Console()

# TRL's fused head (SFT's loss, GRPO's log-probabilities) projects the hidden states onto the vocabulary in
# tiles of TOKEN_CHUNK_SIZE positions by 32,768 entries: 4,096 positions, sized for a GPU, where a Triton
# kernel folds each tile in one pass. On a CPU torch folds it, and each of its steps is a new fp32 tile
# (0.5 GB at 4,096 positions); smaller tiles keep the peak down (1.5 GB less for a packed SFT step), with the
# same result and about the same time (docs/performance.md).
CPU_LOGPROB_TILE = 512


def trainer_args(config_class: type, section: str, trl: dict[str, Any], out: Path, seed: int,
                 fixed: dict[str, Any] | None = None) -> Any:
    """TRL's config object: mtr's device defaults, then the user's `trl` mapping, then what the stage fixes
    (e.g. SFT's assistant-only loss). Creating it sets up the processes under a launcher."""
    import torch

    cuda = torch.cuda.is_available()
    values = {"use_cpu": not cuda, "bf16": cuda, "dataloader_num_workers": 0, **trl, "output_dir": str(out),
              "seed": seed, **(fixed or {})}
    if not cuda:
        values["bf16"] = False  # no mixed precision on a CPU, whatever a GPU preset asks for
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns on every
    # run); the configs keep the name every transformers 5 knows, passed under the new one where it exists
    fields = {f.name for f in dataclasses.fields(config_class)}
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if old in values and new in fields and new not in values:
            values[new] = values.pop(old)
    return trl_args(config_class, section, values)


@contextmanager
def logprob_tiles(args: Any) -> Iterator[int | None]:
    """While training on a CPU, TRL's fused head scores CPU_LOGPROB_TILE positions at a time; yields the tile
    in use (None: TRL's own, on a GPU or where TRL no longer has the setting). Restored afterwards."""
    try:
        from trl.kernels import chunked_logprob
    except ImportError:  # a TRL without the fused head: nothing to size
        chunked_logprob = None
    if args.device.type != "cpu" or not hasattr(chunked_logprob, "TOKEN_CHUNK_SIZE"):
        yield None
        return
    before = chunked_logprob.TOKEN_CHUNK_SIZE
    chunked_logprob.TOKEN_CHUNK_SIZE = CPU_LOGPROB_TILE
    try:
        yield CPU_LOGPROB_TILE
    finally:
        chunked_logprob.TOKEN_CHUNK_SIZE = before


def prepare_run(args: Any, out: Path, overwrite: bool, files: tuple[str, ...], manifest: Callable[[], Any]) -> Any:
    """On the main process alone: with `overwrite`, remove what an earlier run wrote (checkpoints and `files`);
    then `manifest()` (which writes the manifest, refusing a different run, and may do more). Every rank
    gets its result, or its exception."""

    def prepare() -> Any:
        if overwrite:
            start_fresh(out, files)
        return manifest()

    return on_main(args, prepare)


def resume_point(args: Any, out: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from with `--resume`: the main process's view (without a filesystem shared
    by every node, the ranks could disagree)."""
    ckpt = on_main(args, lambda: last_checkpoint(out) if resume else None)
    if is_main(args):
        if resume and ckpt is None:
            console.print(f"[yellow]--resume: no checkpoint in {out}; starting from the beginning[/yellow]")
        elif ckpt is not None:
            console.print(f"resuming from {ckpt}")
    return ckpt


def read_log(out: Path) -> list[dict[str, Any]]:
    path = out / "log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def write_stats(args: Any, out: Path, stats: dict[str, Any], summary: str) -> None:
    """train_stats.json and a one-line summary, from the main process."""
    if is_main(args):
        (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
        console.print(f"{summary}; checkpoint in {out}", highlight=False)
