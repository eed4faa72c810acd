"""`mtr sft`, Stage 1: teach the policy the trace grammar with TRL's SFTTrainer.

The data is sft.jsonl as synthesis writes it (conversational `messages` + `tools`). The loss covers the
assistant's own tokens only (thoughts, tool calls, answers, the end-of-turn token): TRL's
`assistant_only_loss=True` reads the `{% generation %}` markers of the chat template, and mtr's template
(`templates/chatml_tools.jinja`, installed on tokenizers that lack one) puts tool observations outside them.

What is written by hand here is what TRL does not do: strict reading of sft.jsonl with line numbers,
counting (not silently dropping) rows without assistant turns and over-long rows, the JSONL loss log, the
refusal to mix two runs in one directory; `mtr.checkpoints` merges a LoRA adapter into a plain checkpoint;
with `share_prompt`, a micro-batch's traces are trained as one sequence, the system message and tools they
all begin with read once (`mtr.shared_prompt`: TRL packs only independent sequences).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mtr.checkpoints import load_tokenizer, policy_checkpoint, save_trained
from mtr.config import Config
from mtr.distributed import is_main
from mtr.jsonl import json_lines, jsonl_log_callback
from mtr.peak_memory import peak_rss_mb, reset_peak
from mtr.rundir import write_manifest
from mtr.training import logprob_tiles, prepare_run, read_log, resume_point, trainer_args, write_stats

console = Console()
ROLES = ("policy",)


def stage_config(cfg: Config) -> dict[str, Any]:
    """What this stage's manifest records of the config (a change elsewhere leaves it alone)."""
    return cfg.stage_config(("sft",), ROLES)


class SFTDataError(ValueError):
    """sft.jsonl cannot be trained on; one line naming the file (and line)."""


def read_sft_rows(path: Path, tokenizer: Any, max_length: int, too_long: str) -> tuple[list[dict], dict[str, int]]:
    """Read and check sft.jsonl; returns the trainable rows and what was dropped or truncated, by reason."""
    if not path.is_file():
        raise SFTDataError(f"{path}: no such file")
    rows: list[dict] = []
    report = {"rows": 0, "no_assistant_turns": 0, "too_long_dropped": 0, "too_long_truncated": 0}
    for lineno, row in json_lines(path, lambda n, e: SFTDataError(f"{path}:{n}: malformed JSON ({e.msg})")):
        report["rows"] += 1
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise SFTDataError(f"{path}:{lineno}: field messages: expected a list of chat messages")
        if not any(m["role"] == "assistant" for m in msgs):
            report["no_assistant_turns"] += 1
            continue
        tools = row.get("tools")
        tools_list = json.loads(tools) if isinstance(tools, str) else tools
        n = len(tokenizer.apply_chat_template(msgs, tools=tools_list or None, tokenize=True,
                                              return_dict=True)["input_ids"])
        if n > max_length:
            if too_long == "drop":
                report["too_long_dropped"] += 1
                continue
            report["too_long_truncated"] += 1
        rows.append({"messages": msgs,
                     "tools": tools if isinstance(tools, str) else json.dumps(tools or [], ensure_ascii=False)})
    if not rows:
        raise SFTDataError(f"{path}: no trainable rows ({report['rows']} rows; {report['no_assistant_turns']} without "
                           f"assistant turns, {report['too_long_dropped']} longer than {max_length} tokens) - "
                           "was every trace rejected by the filter? see filter.json")
    return rows, report


def train_sft(cfg: Config, data: Path, out: Path, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from mtr.shared_prompt import SharedPromptCollator, use_shared_prompt_attention

    reset_peak()  # this stage's own peak memory, also when it shares the process with others (mtr run)
    s = cfg.sft
    src = policy_checkpoint(cfg)
    tok = load_tokenizer(src)
    max_length = s.trl["max_length"]
    rows, report = read_sft_rows(Path(data), tok, max_length, s.too_long)
    # The arguments first: creating them sets up the processes under a launcher, and the run directory is
    # then prepared by the main process alone. The loss is on the assistant's tokens (mtr's template marks
    # them); long rows were counted above and are cut at the end.
    args = trainer_args(SFTConfig, "sft", s.trl, out, cfg.seed,
                        fixed={"assistant_only_loss": True, "truncation_mode": "keep_start", "packing": False})
    main = is_main(args)
    prepare_run(args, out, overwrite, ("log.jsonl", "train_stats.json"), lambda: write_manifest(
        out, "sft", stage_config(cfg), {"data": Path(data)}, extra={"init": str(src)},
        overwrite=overwrite))
    dropped = report["no_assistant_turns"] + report["too_long_dropped"]
    if main:
        console.print(f"sft: {len(rows)} rows to train on; dropped {report['no_assistant_turns']} without assistant "
                      f"turns and {report['too_long_dropped']} over {max_length} tokens; truncated "
                      f"{report['too_long_truncated']}" + (" [yellow](see train_stats.json)[/yellow]" if dropped else ""))
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    # TRL's loss path that scores the labels as given (the fused head): label smoothing and a custom loss
    # would shift them again
    share_prompt = (s.share_prompt and args.per_device_train_batch_size > 1 and not args.label_smoothing_factor
                    and use_shared_prompt_attention(model))
    collator = SharedPromptCollator(DataCollatorForLanguageModeling(
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        pad_to_multiple_of=args.pad_to_multiple_of)) if share_prompt else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         data_collator=collator, peft_config=s.peft_config(),
                         callbacks=[jsonl_log_callback(out / "log.jsonl")])
    ckpt = resume_point(args, out, resume)
    t0 = time.perf_counter()
    with logprob_tiles(args) as tile:
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    wall = time.perf_counter() - t0
    save_trained(trainer, args, out, tok, base=src, lora=s.lora_on, dtype=model.dtype)
    logs = read_log(out)
    losses = [entry["loss"] for entry in logs if "loss" in entry]
    tokens = max((entry.get("num_tokens", 0) for entry in logs), default=0)
    stats = {
        "rows": len(rows), "data_report": report, "steps": result.global_step, "train_runtime_s": wall,
        "tokens_seen": tokens, "tokens_per_s": tokens / wall if wall > 0 else None,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "peak_rss_mb": peak_rss_mb(), "lora": s.lora_on, "init": str(src),
        "resumed_from": str(ckpt) if ckpt else None, "processes": args.world_size, "share_prompt": share_prompt,
        "logprob_tile": tile,
    }
    write_stats(args, out, stats, f"sft: {stats['steps']} steps in {wall:.0f}s, loss {stats['loss_first']} -> "
                f"{stats['loss_last']}, {stats['tokens_per_s'] or 0:.0f} tokens/s")
    return stats
