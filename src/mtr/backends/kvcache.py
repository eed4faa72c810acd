"""Reuse the keys and values of tokens a transformers model has already read: a prompt that starts with
tokens of an earlier row (the episode's previous turn, or the prompt a GRPO group shares) reads only the rest.

    cache = PrefixCache(max_bytes=1 << 30)
    new = generate_with_prefix_cache(model, [ids_a, ids_b], cache, pad_id, eos_ids, max_new_tokens=64)

On a CPU a multi-turn episode spends much of its time re-reading its own history: each turn's prompt is the
previous prompt + the model's turn + the tool's observation, and `generate` reads all of it again. The cache
keeps each row's keys and values after a batch; a later row takes the entry that shares the longest prefix
with it. Rows reuse different lengths, so the batch's cache is laid out like left padding: each row's
reused part ends at the same column, its new tokens follow, and the attention mask hides the holes (positions
come from the mask, so a reused token keeps the position it was read at).

Hand-written because transformers' `generate` can continue from one cache but keeps no store of caches to
match prompts against; vLLM and llama.cpp do this inside their servers, which the CPU path does not have.
The cache belongs to one set of weights: make a new one after an update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtr.peak_memory import trim_heap

if TYPE_CHECKING:
    import torch


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


@dataclass
class _Entry:
    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [heads, len(ids), head_dim]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


class PrefixCache:
    """Keys and values of recent rows, least recently used first, within `max_bytes`. A prefix shorter than
    `min_reuse` tokens is not worth the copy and the holes it leaves in the batch."""

    def __init__(self, max_bytes: int = 1 << 30, min_reuse: int = 16):
        self.max_bytes, self.min_reuse = max_bytes, min_reuse
        self.entries: list[_Entry] = []
        self.reused_tokens = 0  # prompt tokens taken from the cache instead of read
        self.read_tokens = 0    # prompt tokens read

    def lookup(self, ids: list[int]) -> tuple[int, _Entry | None]:
        best, entry = 0, None
        for e in self.entries:
            n = common_prefix(e.ids, ids)
            if n > best:
                best, entry = n, e
        return (best, entry) if best >= self.min_reuse else (0, None)

    def add(self, entry: _Entry) -> None:
        # An entry that the new one extends will not be matched better than the new one: drop it.
        self.entries = [e for e in self.entries
                        if not (len(e.ids) <= len(entry.ids) and entry.ids[:len(e.ids)] == e.ids)]
        self.entries.append(entry)
        total = sum(e.nbytes for e in self.entries)
        while total > self.max_bytes and self.entries:
            total -= self.entries.pop(0).nbytes

    def touch(self, entry: _Entry) -> None:
        if entry in self.entries:
            self.entries.remove(entry)
            self.entries.append(entry)


def _prefill(model: Any, ids: list[int]) -> _Entry:
    """Read `ids` once (batch 1) and keep their keys and values."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        # only the keys and values are kept: no logits over the vocabulary for every prompt token (a 1,500-token
        # prompt's would be 300 MB in fp32)
        model(input_ids=torch.tensor([ids], device=device), cache=cache, use_cache=True, logits_to_keep=1)
    return _Entry(list(ids), [(layer.keys[0], layer.values[0]) for layer in cache.layers])


def generate_with_prefix_cache(model: Any, rows: list[list[int]], cache: PrefixCache | None, pad_id: int,
                               eos_ids: set[int], **generate_kwargs: Any) -> torch.Tensor:
    """`model.generate` on the token rows (left-padded into one batch), reading only what `cache` does not
    already hold, then keeping each row's keys and values (prompt and generated turn, up to its end) for
    the next call. With no cache, plain batched `generate`.

    Returns the new tokens, [rows, new], rows that ended early padded with `pad_id` as `generate` does."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    reuse: list[tuple[int, _Entry | None]] = [(0, None)] * len(rows)
    if cache is not None:
        reuse = []
        for ids in rows:
            n, e = cache.lookup(ids)
            reuse.append((min(n, len(ids) - 1), e))  # generate needs at least one token to read
        # A prefix every row shares (a GRPO group's first turn: the same prompt n times) is read once.
        lead = min(len(ids) for ids in rows) - 1
        for ids in rows[1:]:
            lead = min(lead, common_prefix(rows[0], ids))
        if lead >= cache.min_reuse and sum(n < lead for n, _ in reuse) >= 2:
            shared = _prefill(model, rows[0][:lead])
            cache.read_tokens += lead
            reuse = [(lead, shared) if n < lead else (n, e) for n, e in reuse]
        for n, e in reuse:
            if e is not None:
                cache.touch(e)
        cache.reused_tokens += sum(n for n, _ in reuse)
        cache.read_tokens += sum(len(ids) - n for ids, (n, _) in zip(rows, reuse))

    width_cached = max(n for n, _ in reuse)
    width_new = max(len(ids) - n for ids, (n, _) in zip(rows, reuse))
    input_ids, mask = [], []
    for ids, (n, _) in zip(rows, reuse):
        gap_c, gap_n = width_cached - n, width_new - (len(ids) - n)
        input_ids.append([pad_id] * gap_c + ids[:n] + [pad_id] * gap_n + ids[n:])
        mask.append([0] * gap_c + [1] * n + [0] * gap_n + [1] * (len(ids) - n))
    kwargs = dict(generate_kwargs)
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    if width_cached:
        for li, (k0, v0) in enumerate(next(e for _, e in reuse if e is not None).layers):
            keys = k0.new_zeros((len(rows), k0.shape[0], width_cached, k0.shape[2]))
            values = v0.new_zeros((len(rows), v0.shape[0], width_cached, v0.shape[2]))
            for i, (n, e) in enumerate(reuse):
                if n:
                    keys[i, :, width_cached - n:] = e.layers[li][0][:, :n]
                    values[i, :, width_cached - n:] = e.layers[li][1][:, :n]
            layers.append((keys, values))
        kwargs["cache"] = DynamicCache(ddp_cache_data=layers, config=model.config)
    width = width_cached + width_new
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor(input_ids, device=device),
                             attention_mask=torch.tensor(mask, device=device), pad_token_id=pad_id,
                             return_dict_in_generate=True, use_cache=True, **kwargs)
    new = out.sequences[:, width:]
    if cache is not None:
        held = out.cache.get_seq_length()  # the last token generated was not read back
        for i, ids in enumerate(rows):
            row = new[i].tolist()
            end = next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))
            kept = min(end, held - width)
            real = [j for j, m in enumerate(mask[i]) if m] + list(range(width, width + kept))
            index = torch.tensor(real, device=device)
            cache.add(_Entry(ids + row[:kept], [(layer.keys[i].index_select(1, index),
                                                 layer.values[i].index_select(1, index))
                                                for layer in out.cache.layers]))
    del out, kwargs, layers  # the batch's keys and values, freed before the trim
    trim_heap()
    return new
