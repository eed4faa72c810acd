"""`mtr sft`, Stage 1: teach the policy the trace grammar with TRL's SFTTrainer.

The data is sft.jsonl as synthesis writes it (conversational `messages` + `tools`). The loss covers the
assistant's own tokens only (thoughts, tool calls, answers, the end-of-turn token): TRL's
`assistant_only_loss=True` reads the `{% generation %}` markers of the chat template, and mtr's template
(`templates/chatml_tools.jinja`, installed on tokenizers that lack one) puts tool observations outside them.

What is written by hand here is what TRL does not do: strict reading of sft.jsonl with line numbers,
counting (not silently dropping) rows without assistant turns and over-long rows, the JSONL loss log, the
refusal to mix two runs in one directory, and merging a LoRA adapter into a plain checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

from mtr.chat_template import install_chat_template
from mtr.config import Config
from mtr.distributed import is_main, on_main
from mtr.jsonl import jsonl_log_callback
from mtr.manifest import write_manifest
from mtr.peak_memory import peak_rss_mb, reset_peak

console = Console()


class SFTDataError(ValueError):
    """sft.jsonl cannot be trained on; one line naming the file (and line)."""


def policy_source(cfg: Config) -> Path:
    policy = cfg.role("policy")
    if policy.backend != "hf":
        raise SFTDataError(f"roles.policy.backend is {policy.backend!r}: SFT trains a local checkpoint, set it to hf")
    if policy.model == "embedded":
        from mtr.embedded import ensure_checkpoint

        return ensure_checkpoint()
    path = Path(policy.model)
    if not (path / "config.json").is_file():
        raise SFTDataError(f"roles.policy.model: {path} is not a Hugging Face checkpoint directory")
    return path


def load_policy_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    install_chat_template(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def read_sft_rows(path: Path, tokenizer: Any, max_length: int, too_long: str) -> tuple[list[dict], dict[str, int]]:
    """Read and check sft.jsonl; returns the trainable rows and what was dropped or truncated, by reason."""
    if not path.is_file():
        raise SFTDataError(f"{path}: no such file")
    rows: list[dict] = []
    report = {"rows": 0, "no_assistant_turns": 0, "too_long_dropped": 0, "too_long_truncated": 0}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            report["rows"] += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SFTDataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
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
                           "was every trace rejected by the filter? see stats.json of the synthesis run")
    return rows, report


def last_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def save_trained(trainer: Any, args: Any, out: Path, tok: Any, lora: bool, base: Path, dtype: Any) -> None:
    """The trained policy as a plain checkpoint in `out`, loadable by every other command; with LoRA also the
    adapter in `out/adapter`.

    The trainer saves (it gathers sharded weights under ZeRO-3 or FSDP, and writes on the main process). A
    LoRA adapter is merged on the main process into the base weights read back from disk (in `dtype`, the
    training's), because on several processes the in-memory model may hold only this rank's shard."""
    if lora:
        trainer.save_model(str(out / "adapter"))
        if is_main(args):
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            trained = trainer.accelerator.unwrap_model(trainer.model)
            with _without_zero3():
                merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype),
                                                   out / "adapter").merge_and_unload()
            # what the trainer set on the policy (pad token, generation defaults), as the base on disk lacks it
            merged.config.pad_token_id = trained.config.pad_token_id
            merged.generation_config = trained.generation_config
            merged.save_pretrained(out, safe_serialization=True)
    else:
        trainer.save_model(str(out))
    if is_main(args):
        tok.save_pretrained(out)
    trainer.accelerator.wait_for_everyone()


@contextmanager
def _without_zero3() -> Iterator[None]:
    """While a ZeRO-3 trainer is registered, transformers builds every model inside `deepspeed.zero.Init`,
    which broadcasts each parameter: collectives that the other ranks, waiting at a barrier, never join.
    The merge runs on the main process alone, so it loads without it."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    registered = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if registered is not None:
            hf_deepspeed.set_hf_deepspeed_config(registered)


def train_sft(cfg: Config, data: Path, out: Path, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    reset_peak()  # this stage's own peak memory, also when it shares the process with others (mtr run)
    s = cfg.sft
    src = policy_source(cfg)
    tok = load_policy_tokenizer(src)
    rows, report = read_sft_rows(Path(data), tok, s.max_length, s.too_long)
    cuda = torch.cuda.is_available()
    # The arguments first: creating them sets up the processes under a launcher, and the run directory is
    # then prepared by the main process alone.
    args = SFTConfig(
        output_dir=str(out), assistant_only_loss=True, max_length=s.max_length, truncation_mode="keep_start",
        packing=False, learning_rate=s.learning_rate, num_train_epochs=s.num_train_epochs, max_steps=s.max_steps,
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, warmup_steps=s.warmup_ratio,
        weight_decay=s.weight_decay, logging_steps=s.logging_steps, save_steps=s.save_steps,
        save_total_limit=s.save_total_limit, report_to=s.report_to,
        seed=cfg.seed, bf16=s.bf16 and cuda, gradient_checkpointing=s.gradient_checkpointing, use_cpu=not cuda,
        dataloader_num_workers=0, disable_tqdm=False, save_only_model=False,
    )
    main = is_main(args)

    def prepare_run_dir() -> None:
        if overwrite and out.exists():
            for p in out.glob("checkpoint-*"):
                shutil.rmtree(p)
            for name in ("log.jsonl", "train_stats.json"):
                (out / name).unlink(missing_ok=True)
        write_manifest(out, "sft", cfg.model_dump(mode="json"), {"data": Path(data)}, cfg.seed,
                       extra={"init": str(src)}, overwrite=overwrite)

    on_main(args, prepare_run_dir)
    dropped = report["no_assistant_turns"] + report["too_long_dropped"]
    if main:
        console.print(f"sft: {len(rows)} rows to train on; dropped {report['no_assistant_turns']} without assistant "
                      f"turns and {report['too_long_dropped']} over {s.max_length} tokens; truncated "
                      f"{report['too_long_truncated']}" + (" [yellow](see train_stats.json)[/yellow]" if dropped else ""))

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16 if (s.bf16 and cuda) else torch.float32)
    peft_config = s.peft_config()
    log_path = out / "log.jsonl"
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config, callbacks=[jsonl_log_callback(log_path)])
    # the main process's view: without a filesystem shared by every node, the ranks could disagree
    ckpt = on_main(args, lambda: last_checkpoint(out) if resume else None)
    if main and resume and ckpt is None:
        console.print(f"[yellow]--resume: no checkpoint in {out}; starting from the beginning[/yellow]")
    elif main and ckpt is not None:
        console.print(f"resuming from {ckpt}")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    wall = time.perf_counter() - t0
    save_trained(trainer, args, out, tok, lora=s.lora, base=src, dtype=model.dtype)
    logs = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    losses = [entry["loss"] for entry in logs if "loss" in entry]
    tokens = max((entry.get("num_tokens", 0) for entry in logs), default=0)
    stats = {
        "rows": len(rows), "data_report": report, "steps": result.global_step, "train_runtime_s": wall,
        "tokens_seen": tokens, "tokens_per_s": tokens / wall if wall > 0 else None,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "peak_rss_mb": peak_rss_mb(),
        "lora": s.lora, "init": str(src), "resumed_from": str(ckpt) if ckpt else None,
        "processes": args.world_size,
    }
    if main:
        (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
        console.print(f"sft: {stats['steps']} steps in {wall:.0f}s, loss {stats['loss_first']} -> "
                      f"{stats['loss_last']}, {stats['tokens_per_s'] or 0:.0f} tokens/s; checkpoint in {out}")
    return stats
