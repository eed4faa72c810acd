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
from the others' (`mtr.shared_prompt`): the same log-probabilities from fewer tokens.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from trl import GRPOTrainer

from mtr.shared_prompt import SHARED_PROMPT, packed_layout, use_shared_prompt_attention

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
