"""Checkpoints and tokenizers: the one place that resolves `embedded`, installs the chat template, sets
padding, and saves a trained policy as a plain checkpoint.

    path = resolve_checkpoint("embedded")         # the cached HF checkpoint of the embedded model
    tok = load_tokenizer(path, padding_side="left")
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mtr.chat_template import install_chat_template


class CheckpointError(ValueError):
    """A model setting that names no usable checkpoint; one line naming the setting."""


def resolve_checkpoint(model: str, setting: str = "model") -> Path:
    """`embedded` -> the cached checkpoint of the embedded model (converted on first use); a directory ->
    itself, if it is a Hugging Face checkpoint."""
    if model == "embedded":
        from mtr.embedded import ensure_checkpoint

        return ensure_checkpoint()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{setting}: {path} is not a Hugging Face checkpoint directory (no config.json); "
                              "set it to `embedded` or a checkpoint directory")
    return path


def policy_checkpoint(cfg: Any) -> Path:
    """The policy the training stages start from (`roles.policy`, which must be a local checkpoint)."""
    policy = cfg.role("policy")
    if policy.backend != "hf":
        raise CheckpointError(f"roles.policy.backend is {policy.backend!r}: training needs a local checkpoint, "
                              "set it to hf")
    return resolve_checkpoint(policy.model, "roles.policy.model")


def load_tokenizer(path: Path, gguf_file: str | None = None, padding_side: str | None = None) -> Any:
    """The checkpoint's tokenizer with a chat template that renders tools and marks the assistant's tokens,
    and a pad token (the EOS token where the model has none)."""
    from transformers import AutoTokenizer

    tok = (AutoTokenizer.from_pretrained(path, gguf_file=gguf_file) if gguf_file
           else AutoTokenizer.from_pretrained(path))
    install_chat_template(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if padding_side is not None:
        tok.padding_side = padding_side
    return tok


def save_trained(trainer: Any, args: Any, out: Path, tok: Any, base: Path, lora: bool, dtype: Any) -> None:
    """The trained policy as a plain checkpoint in `out`, loadable by every other command; with LoRA also the
    adapter in `out/adapter`.

    The trainer saves (it gathers sharded weights under ZeRO-3 or FSDP, and writes on the main process). A
    LoRA adapter is merged on the main process into the base weights read back from disk (in `dtype`, the
    training's), because on several processes the in-memory model may hold only this rank's shard."""
    main = args.process_index == 0
    if lora:
        trainer.save_model(str(out / "adapter"))
        if main:
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
    if main:
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
