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

import functools
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from mtr.peak_memory import trim_heap

if TYPE_CHECKING:
    import torch

# How a batch is laid out (docs/performance.md, `bench_kv_layout.py` turns them off to measure what they save):
# keys and values written in place in a buffer reserved for the whole generation, not grown by concatenation
BUFFERED = True
# on a CPU, each row's new tokens read on their own before the batch, not padded to the longest row's in it
READ_ROWS_ALONE = True
# on a CPU, a linear layer's product for a few rows (a decoding step's) computed as W @ x.T, not x @ W.T:
# None: where `weight_major_pays` measures it faster on this CPU; True or False to force it (benchmarks, tests)
WEIGHT_MAJOR: bool | None = None
WEIGHT_MAJOR_ROWS = 64  # rows (tokens of the batch) up to which it is used; a prompt read whole goes as before


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


@functools.cache
def _buffered_layer_class() -> type:
    """transformers' DynamicLayer writing into a buffer sized for the whole generation.

    DynamicLayer grows by concatenation: each decoding step copies every row's keys and values to add one
    token (~0.7 GB a step at 16 rows of ~1,000 tokens in fp32, more time on a CPU than attention itself,
    docs/performance.md); here a step writes its token in place and attention reads a view of what is filled.
    Hand-written because transformers' StaticCache, which also writes in place, makes attention read the whole
    buffer, unfilled part included, at every step."""
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length = capacity, 0
            self.key_buffer: torch.Tensor | None = None
            self.value_buffer: torch.Tensor | None = None

        def seed(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            """Take buffers whose first `length` positions already hold the reused keys and values."""
            self.lazy_initialization(keys, values)
            self.key_buffer, self.value_buffer, self.length = keys, values, length
            self.keys, self.values = keys[..., :length, :], values[..., :length, :]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if self.key_buffer is None or end > self.key_buffer.shape[-2]:  # more than was reserved: grow
                size = self.capacity if end <= self.capacity else 2 * end
                keys = key_states.new_zeros((*key_states.shape[:-2], size, key_states.shape[-1]))
                values = value_states.new_zeros((*value_states.shape[:-2], size, value_states.shape[-1]))
                if self.length:
                    keys[..., :self.length, :] = self.keys
                    values[..., :self.length, :] = self.values
                self.key_buffer, self.value_buffer = keys, values
            self.key_buffer[..., self.length:end, :] = key_states
            self.value_buffer[..., self.length:end, :] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
            return self.keys, self.values

    return BufferedLayer


def _generation_cache(model: Any, capacity: int) -> Any:
    """A DynamicCache for `model` whose full-attention layers are buffered (`_buffered_layer_class`); layers
    of other kinds (a sliding window) stay transformers' own."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if BUFFERED:
        buffered = _buffered_layer_class()
        cache.layers = [buffered(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@functools.cache
def weight_major_pays(margin: float = 1.25) -> bool:
    """Whether this CPU multiplies a few rows by a weight matrix at least `margin` times faster as W @ x.T than
    as x @ W.T (what `nn.Linear` does), measured once a process on weights of a 135M model's MLP shape, more
    of them than the caches hold, as a decoding step reads them.

    The two are one BLAS product with the operands' roles swapped, and torch's (MKL's) kernel for a few rows
    against a weight's transpose ran several times slower than the swapped form's on an AMD EPYC with AVX2
    (`benchmarks/bench_weight_major.py`, docs/performance.md), in every decoding step. A CPU whose BLAS does
    both alike keeps torch's own form; the margin keeps timing noise from flipping the choice, which changes
    the order the floats are summed in."""
    import torch

    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(1536, 576, generator=g) for _ in range(16)]  # 56 MB
    rows = torch.randn(8, 576, generator=g)

    with torch.inference_mode():
        as_torch = fastest_pass(lambda w: torch.nn.functional.linear(rows, w), weights)
        as_weight_major = fastest_pass(lambda w: w @ rows.t(), weights)
    return as_torch >= margin * as_weight_major


def fastest_pass(product: Any, weights: list, repeats: int = 3) -> float:
    """The best of `repeats` passes of `product` over `weights`, in seconds."""
    import time

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            product(w)
        best = min(best, time.perf_counter() - t0)
    return best


def weight_major_used() -> bool:
    """Whether this process's decoding computes a few rows' products weight-major: `WEIGHT_MAJOR` where set,
    else `weight_major_pays`."""
    return WEIGHT_MAJOR if WEIGHT_MAJOR is not None else weight_major_pays()


def _weight_major_forward(module: Any, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward`, but for at most WEIGHT_MAJOR_ROWS rows without gradients: (W @ x.T).T."""
    import torch

    rows = x.numel() // x.shape[-1] if x.dim() else 0
    if (not rows or rows > WEIGHT_MAJOR_ROWS or torch.is_grad_enabled() or x.dtype != module.weight.dtype):
        return torch.nn.functional.linear(x, module.weight, module.bias)
    flat = x.reshape(rows, x.shape[-1]).t()
    y = (torch.mm(module.weight, flat) if module.bias is None
         else torch.addmm(module.bias[:, None], module.weight, flat))
    # contiguous: the transposed view would make the next elementwise steps read memory by strides
    return y.t().contiguous().view(*x.shape[:-1], module.weight.shape[0])


@contextmanager
def weight_major(model: Any) -> Iterator[None]:
    """Within the block, the model's `nn.Linear` layers on a CPU compute few rows as W @ x.T (`WEIGHT_MAJOR`,
    else where `weight_major_pays`). Scoped, not set once on the model: a copy of the model (TRL's reference
    policy) would carry forwards bound to the original's layers, and training passes keep torch's own path."""
    import torch

    if not weight_major_used() or next(model.parameters()).device.type != "cpu":
        yield
        return
    # two roles on one set of weights may generate at once, each on its backend's worker thread: the layers
    # stay weight-major until the last block on the model is left
    with _WEIGHT_MAJOR_LOCK:
        if _WEIGHT_MAJOR_USERS.get(id(model), 0) == 0:
            for m in model.modules():
                if type(m) is torch.nn.Linear and "forward" not in m.__dict__:  # an instance's own (a hook's) stays
                    m.forward = functools.partial(_weight_major_forward, m)
        _WEIGHT_MAJOR_USERS[id(model)] = _WEIGHT_MAJOR_USERS.get(id(model), 0) + 1
    try:
        yield
    finally:
        with _WEIGHT_MAJOR_LOCK:
            _WEIGHT_MAJOR_USERS[id(model)] -= 1
            if _WEIGHT_MAJOR_USERS[id(model)] == 0:
                del _WEIGHT_MAJOR_USERS[id(model)]
                for m in model.modules():
                    if isinstance(m.__dict__.get("forward"), functools.partial) \
                            and m.__dict__["forward"].func is _weight_major_forward:
                        del m.forward


_WEIGHT_MAJOR_LOCK = threading.Lock()
_WEIGHT_MAJOR_USERS: dict[int, int] = {}  # id(model): blocks inside `weight_major` on it


def _prefill(model: Any, ids: list[int], entry: _Entry | None = None, reused: int = 0) -> _Entry:
    """Read `ids` at batch 1 and keep their keys and values; with `entry`, its first `reused` tokens (a prefix
    of `ids`) are taken from it and only the rest is read."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    if entry is not None and reused:
        for layer, (keys, values) in zip(cache.layers, entry.layers):
            layer.update(keys[None, :, :reused], values[None, :, :reused])
    with torch.inference_mode(), weight_major(model):
        # only the keys and values are kept: no logits over the vocabulary for every prompt token (a 1,500-token
        # prompt's would be 300 MB in fp32)
        model(input_ids=torch.tensor([ids[reused:]], device=device), cache=cache, use_cache=True, logits_to_keep=1)
    return _Entry(list(ids), [(layer.keys[0], layer.values[0]) for layer in cache.layers])


def _seed(generation: Any, reuse: list[tuple[int, _Entry | None]], width: int, capacity: int) -> None:
    """Lay each row's reused keys and values into the batch's cache, right-aligned at column `width` (the holes
    before a shorter row stay zero and are masked)."""
    source = next(e for _, e in reuse if e is not None).layers
    for li, layer in enumerate(generation.layers):
        k0, v0 = source[li]
        buffered = hasattr(layer, "seed")  # else transformers' own layer, which copies what it is given
        keys = k0.new_zeros((len(reuse), k0.shape[0], capacity if buffered else width, k0.shape[2]))
        values = v0.new_zeros(keys.shape)
        for i, (n, e) in enumerate(reuse):
            if n:
                keys[i, :, width - n:width] = e.layers[li][0][:, :n]
                values[i, :, width - n:width] = e.layers[li][1][:, :n]
        if buffered:
            layer.seed(keys, values, width)
        else:
            layer.update(keys, values)


def generate_with_prefix_cache(model: Any, rows: list[list[int]], cache: PrefixCache | None, pad_id: int,
                               eos_ids: set[int], **generate_kwargs: Any) -> torch.Tensor:
    """`model.generate` on the token rows (left-padded into one batch), reading only what `cache` does not
    already hold, then keeping each row's keys and values (prompt and generated turn, up to its end) for
    the next call. With no cache, batched `generate` reading every row whole.

    Returns the new tokens, [rows, new], rows that ended early padded with `pad_id` as `generate` does."""
    import torch

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
        # Each row's new tokens but its last are read on their own, at batch 1: read in the batch, every row
        # would be padded to the longest new part (an episode's observation beside another's one-line nudge),
        # and on a CPU the padding costs what real tokens do while batch 1 reads a prompt about as fast a token
        # as a batch does (docs/performance.md). The batch then starts at each row's last token. A GPU reads a
        # padded batch in about the time of its longest row, and rows one by one would each cost that: there
        # the batch reads them.
        if READ_ROWS_ALONE and device.type == "cpu":
            reuse = [(len(ids) - 1, _prefill(model, ids[:-1], e, n)) if len(ids) - 1 > n else (n, e)
                     for ids, (n, e) in zip(rows, reuse)]

    width_cached = max(n for n, _ in reuse)
    width_new = max(len(ids) - n for ids, (n, _) in zip(rows, reuse))
    input_ids, mask = [], []
    for ids, (n, _) in zip(rows, reuse):
        gap_c, gap_n = width_cached - n, width_new - (len(ids) - n)
        input_ids.append([pad_id] * gap_c + ids[:n] + [pad_id] * gap_n + ids[n:])
        mask.append([0] * gap_c + [1] * n + [0] * gap_n + [1] * (len(ids) - n))
    kwargs = dict(generate_kwargs)
    width = width_cached + width_new
    capacity = width + int(kwargs.get("max_new_tokens") or 0)
    generation = _generation_cache(model, capacity)
    if width_cached:
        _seed(generation, reuse, width_cached, capacity)
    kwargs["cache"] = generation
    # the rows' own entries (read alone above) are in the batch now: not held beside it while it decodes
    del reuse
    with torch.inference_mode(), weight_major(model):
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
    del out, kwargs, generation  # the batch's keys and values, freed before the trim
    trim_heap()
    return new
