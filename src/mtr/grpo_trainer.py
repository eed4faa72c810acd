"""TRL's GRPOTrainer, scoring each micro-batch without the padding it shares with the rest of its group.

TRL pads a whole generation batch (a group of episodes) to its longest prompt and its longest completion,
then scores it a micro-batch at a time at that width: the reference pass, the loss's forward and its
backward all run over the padding. Multi-turn episodes differ in length far more than single answers do
(one stops after a turn, another reads two searches' passages), and on a CPU a step's update time is its
forward and backward passes (measured: docs/performance.md, *GRPO: the update without padding*). TRL has
no option for it; this trims each micro-batch to the columns a row of it uses before scoring, and pads the
per-token results back to the width TRL expects. Left padding trimmed moves every position by the same
offset, which RoPE attention does not see.
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


class UnpaddedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose log-probability passes skip the group's padding (text-only models; images and the
    MoE auxiliary loss go through TRL's own path)."""

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

        logps, entropies = score_unpadded(score, input_ids, attention_mask, logits_to_keep, batch_size,
                                          compute_entropy)
        return logps, entropies, None
