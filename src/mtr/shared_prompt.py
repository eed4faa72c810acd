"""Rows that begin with the same tokens, scored as one sequence with those tokens once.

A GRPO group's episodes share their prompt (the system message, the tools, the question: ~470 tokens at the
CPU preset, half an episode), and SFT's traces share the system message and the tools. A forward and backward
pass over a batch of such rows reads the shared part once per row; packed, it reads it once. `packed_layout`
lays the rows out, `shared_prompt_attention` (a transformers attention function) keeps each row's tokens
from the others', so that every token gets the log-probability it has alone. TRL packs only independent
sequences (padding-free SFT) and never shares a prefix between rows, hence this. Used by
`mtr.grpo_trainer` (the update's passes) and `SharedPromptCollator` (SFT's micro-batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


def packed_layout(prompt: torch.Tensor, completions: list[torch.Tensor],
                  targets: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """One sequence for the rows that begin with `prompt`: the prompt but its last token once (the shared
    part), then for each row that last token and its own tokens (`completions`), at the positions they had
    alone. The prompt's last token is repeated because it predicts each row's own first token.
    `shift_labels` holds at each position the token it predicts, -100 where none is scored: none in the shared
    part, and with `targets` (each completion's labels, -100 where a token is not trained on, as SFT's
    assistant-only loss) only the tokens those keep. `segments` holds each row's (start, end) and `shared` the
    shared part's length, for `shared_prompt_attention`."""
    shared = prompt.numel() - 1
    ids, positions, labels, segments = [prompt[:-1]], [torch.arange(shared)], [torch.full((shared,), -100)], []
    length = shared
    for i, completion in enumerate(completions):
        n = completion.numel()
        segments.append((length, length + n + 1))
        ids.append(torch.cat([prompt[-1:], completion]))
        positions.append(torch.arange(shared, shared + n + 1))
        labels.append(torch.cat([completion if targets is None else targets[i], torch.tensor([-100])]))
        length += n + 1
    return {"input_ids": torch.cat(ids), "position_ids": torch.cat(positions), "shift_labels": torch.cat(labels),
            "shared": shared, "segments": segments}


def shared_prompt_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, shared_prompt: tuple[int, list] | None = None,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA, except on a packed row (`shared_prompt`: `packed_layout`'s shared length and segments), where the
    shared part attends causally to itself and each episode's tokens to the shared part and causally to their
    own, each piece one SDPA call: a single call with a block mask over the whole row would compute every pair
    of the row, each episode's tokens against the other episodes' included."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if shared_prompt is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    shared, segments = shared_prompt
    groups = query.size(1) // key.size(1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale, dropout = kwargs.get("scaling"), kwargs.get("dropout", 0.0)
    parts = []
    if shared:
        parts.append(F.scaled_dot_product_attention(query[:, :, :shared], key[:, :, :shared], value[:, :, :shared],
                                                    is_causal=True, scale=scale, dropout_p=dropout))
    for start, end in segments:
        n = end - start
        # row j sees the shared part and its episode's tokens up to itself
        allowed = torch.ones(n, shared + n, dtype=torch.bool, device=query.device).tril(diagonal=shared)
        parts.append(F.scaled_dot_product_attention(
            query[:, :, start:end], torch.cat([key[:, :, :shared], key[:, :, start:end]], 2),
            torch.cat([value[:, :, :shared], value[:, :, start:end]], 2), attn_mask=allowed, scale=scale,
            dropout_p=dropout))
    return torch.cat(parts, 2).transpose(1, 2).contiguous(), None


SHARED_PROMPT = "mtr_shared_prompt"


def use_shared_prompt_attention(model: Any) -> bool:
    """Route `model`'s attention through `shared_prompt_attention` (SDPA for every other call: generation,
    rows scored alone) and its masks through SDPA's; False, and nothing changed, unless it used SDPA with
    full attention (a sliding window would need the window in every piece). A setting of the model object:
    a gradient checkpoint's recomputation in the backward pass takes the same path as the forward did.
    transformers does not save it with the checkpoint."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    if config._attn_implementation == SHARED_PROMPT:
        return True
    windowed = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    if config._attn_implementation != "sdpa" or windowed:
        return False
    AttentionInterface.register(SHARED_PROMPT, shared_prompt_attention)
    AttentionMaskInterface.register(SHARED_PROMPT, sdpa_mask)
    config._attn_implementation = SHARED_PROMPT
    return True


def shared_prefix(rows: list[list[int]], labels: list[list[int]]) -> int:
    """The length of the longest prefix every row begins with and none is trained on inside (labels as TRL
    gives them, unshifted, -100 where untrained: the prefix's first label is never predicted, and the label
    right after it is predicted by the prefix's last token, which `packed_layout` repeats in each row)."""
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        n = min(n, next((i for i, (a, b) in enumerate(zip(rows[0], r)) if a != b), n))
    for lab in labels:
        n = min(n, next((i for i, t in enumerate(lab) if i > 0 and t != -100), n))
    return n


@dataclass
class SharedPromptCollator:
    """SFT's micro-batch as one packed row (`packed_layout`) when its traces begin with the same untrained
    tokens (the system message and the tools: half of a CPU-preset trace), for a model whose attention is
    `shared_prompt_attention`; otherwise, or for fewer than `min_shared` such tokens, `fallback` (TRL's
    padding collator). The row's `labels` are already shifted (`shift_labels`), which TRL's fused head scores
    as they are, and the loss over them is the padded batch's token mean."""

    fallback: Callable[[list[dict[str, Any]]], dict[str, Any]]
    min_shared: int = 16

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [list(e["input_ids"]) for e in examples]
        labels = [list(e.get("labels", e["input_ids"])) for e in examples]
        n = shared_prefix(rows, labels)
        if len(rows) < 2 or n - 1 < self.min_shared:  # n - 1: the tokens read once
            return self.fallback(examples)
        layout = packed_layout(torch.tensor(rows[0][:n]), [torch.tensor(r[n:]) for r in rows],
                               [torch.tensor(lab[n:]) for lab in labels])
        shift = layout["shift_labels"][None]
        # `labels` too, so that the Trainer counts the step's trained tokens (it reads `shift_labels` when both
        # are there) and gradient accumulation weighs micro-batches by them
        return {"input_ids": layout["input_ids"][None], "position_ids": layout["position_ids"][None],
                "shift_labels": shift, "labels": shift, "shared_prompt": (layout["shared"], layout["segments"])}
