"""TRL's GRPOTrainer, scoring each micro-batch without the padding it shares with the rest of its group.

TRL pads a whole generation batch (a group of episodes) to its longest prompt and its longest completion,
then scores it a micro-batch at a time at that width: the reference pass, the loss's forward and its
backward all run over the padding. Multi-turn episodes differ in length far more than single answers do
(one stops after a turn, another reads two searches' passages), and on a CPU a step's update time is its
forward and backward passes (measured: docs/performance.md, *GRPO: the update without padding*). TRL has
no option for it; this trims each micro-batch to the columns a row of it uses before scoring, and pads the
per-token results back to the width TRL expects. Left padding trimmed moves every position by the same
offset, which RoPE attention does not see.

A group's episodes begin with the same prompt (the system message, the tools, the question: ~470 tokens at the
CPU preset, half an episode), and each pass reads it once per episode. With `share_prompt` the rows of a
micro-batch that share a prompt are packed into one sequence, the prompt once, each episode's tokens kept
from the others' (`packed_layout`, `shared_prompt_attention`): the same log-probabilities from fewer
tokens. TRL's GRPOTrainer has no way to share a prefix between the rows it scores (its SFTTrainer packs
only independent sequences), hence this.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from trl import GRPOTrainer

Scorer = Callable[..., tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


def used_columns(attention_mask: torch.Tensor, logits_to_keep: int) -> tuple[int, int]:
    """The first and one-past-last column any row attends to, never cutting into the completion from the
    left and keeping at least one completion column (a micro-batch of empty completions still scores)."""
    width = attention_mask.size(1)
    used = attention_mask.any(0).nonzero().flatten().tolist()
    first, last = (used[0], used[-1] + 1) if used else (0, width)
    return min(first, width - logits_to_keep), max(last, width - logits_to_keep + 1)


def score_unpadded(score: Scorer, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                   batch_size: int | None = None, compute_entropy: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`score(input_ids, attention_mask, logits_to_keep, compute_entropy=...)` (TRL's per-token log-probs and
    entropies of the last `logits_to_keep` positions) on each `batch_size` rows without their shared
    padding; the results padded back with zeros on the right (masked out of the loss there, as before)."""
    batch_size = batch_size or input_ids.size(0)
    start_of_completion = input_ids.size(1) - logits_to_keep
    logps, entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
        first, last = used_columns(mask, logits_to_keep)
        keep = last - start_of_completion
        lp, ent, _ = score(ids[:, first:last], mask[:, first:last], keep, compute_entropy=compute_entropy)
        logps.append(F.pad(lp, (0, logits_to_keep - keep)))
        if ent is not None:
            entropies.append(F.pad(ent, (0, logits_to_keep - keep)))
    return torch.cat(logps), torch.cat(entropies) if entropies else None


def prompt_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> list[list[int]] | None:
    """The rows of a micro-batch grouped by the prompt they share (first seen first), or None when a row's
    masks are not the plain layout (prompt padded on the left, completion on the right, no hole in either):
    packing a row with a hole would move the positions after it."""
    start = input_ids.size(1) - logits_to_keep
    groups: dict[tuple[int, ...], list[int]] = {}
    for r, mask in enumerate(attention_mask.tolist()):
        prompt, completion = mask[:start], mask[start:]
        p, c = sum(prompt), sum(completion)
        if p == 0 or prompt[start - p:] != [1] * p or completion[:c] != [1] * c:
            return None
        groups.setdefault(tuple(input_ids[r, start - p:start].tolist()), []).append(r)
    return list(groups.values())


def packed_layout(prompt: torch.Tensor, completions: list[torch.Tensor]) -> dict[str, Any]:
    """One sequence for the episodes of one prompt: the prompt but its last token once (the shared part), then
    for each episode that last token and its completion, at the positions they had alone. The prompt's last
    token is repeated because it predicts each episode's own first token. `shift_labels` holds at each
    position the token it predicts (-100: none); `segments` each episode's (start, end) and `shared` the shared
    part's length, for `shared_prompt_attention`."""
    shared = prompt.numel() - 1
    ids, positions, labels, segments = [prompt[:-1]], [torch.arange(shared)], [torch.full((shared,), -100)], []
    length = shared
    for completion in completions:
        n = completion.numel()
        segments.append((length, length + n + 1))
        ids.append(torch.cat([prompt[-1:], completion]))
        positions.append(torch.arange(shared, shared + n + 1))
        labels.append(torch.cat([completion, torch.tensor([-100])]))
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


def score_packed(forward: Callable[..., Any], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 logits_to_keep: int, groups: list[list[int]], compute_entropy: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TRL's per-token log-probs (and entropies) of the last `logits_to_keep` columns, each group of rows that
    share a prompt scored as one packed row (`packed_layout`) by `forward(input_ids=, position_ids=,
    shift_labels=, shared_prompt=)`, a causal LM with TRL's fused head whose attention is
    `shared_prompt_attention`; 0 where a row has no token, as TRL's."""
    start = input_ids.size(1) - logits_to_keep
    device = input_ids.device
    logps: list[torch.Tensor | None] = [None] * input_ids.size(0)
    entropies: list[torch.Tensor | None] = [None] * input_ids.size(0)
    for rows in groups:
        lengths = [int(attention_mask[r, start:].sum()) for r in rows]
        p = int(attention_mask[rows[0], :start].sum())
        layout = packed_layout(input_ids[rows[0], start - p:start].cpu(),
                               [input_ids[r, start:start + n].cpu() for r, n in zip(rows, lengths)])
        out = forward(input_ids=layout["input_ids"][None].to(device),
                      position_ids=layout["position_ids"][None].to(device),
                      shift_labels=layout["shift_labels"][None].to(device),
                      shared_prompt=(layout["shared"], layout["segments"]))
        for r, n, (s, _) in zip(rows, lengths, layout["segments"]):
            logps[r] = F.pad(out.log_probs[0, s:s + n], (0, logits_to_keep - n))
            if compute_entropy:
                entropies[r] = F.pad(out.entropy[0, s:s + n], (0, logits_to_keep - n))
    return torch.stack(logps), torch.stack(entropies) if compute_entropy else None


class UnpaddedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose log-probability passes skip the group's padding and, with `share_prompt`, score the
    rows of a micro-batch that share a prompt as one sequence, the prompt once (text-only models with SDPA
    attention; images, the MoE auxiliary loss and other attention kernels go through TRL's own path or the
    unpadded one)."""

    def __init__(self, *args: Any, share_prompt: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        models = [self.accelerator.unwrap_model(self.model)] + ([self.ref_model] if self.ref_model is not None else [])
        self.share_prompt = share_prompt and all([use_shared_prompt_attention(m) for m in models])

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, batch_size: int | None = None,
                                           compute_entropy: bool = False, compute_aux_loss: bool = False,
                                           **extra: Any):
        if compute_aux_loss or any(v is not None for v in extra.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **extra)

        def score(ids, mask, keep, compute_entropy):
            return super(UnpaddedGRPOTrainer, self)._get_per_token_logps_and_entropies(
                model, ids, mask, keep, batch_size=ids.size(0), compute_entropy=compute_entropy)

        def forward(**inputs):
            with self.accelerator.autocast():
                return model(**inputs, fused_lm_head=True)

        pack = self.share_prompt and self.accelerator.unwrap_model(model).config._attn_implementation == SHARED_PROMPT
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        # the micro-batch (TRL's batch_size) still bounds what one pass holds: packing happens within it
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
            groups = prompt_groups(ids, mask, logits_to_keep) if pack else None
            if groups is not None and len(groups) < ids.size(0):
                lp, ent = score_packed(forward, ids, mask, logits_to_keep, groups, compute_entropy)
            else:
                lp, ent = score_unpadded(score, ids, mask, logits_to_keep, None, compute_entropy)
            logps.append(lp)
            if ent is not None:
                entropies.append(ent)
        return torch.cat(logps), torch.cat(entropies) if entropies else None, None
