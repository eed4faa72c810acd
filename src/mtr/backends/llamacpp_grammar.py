"""Grammar-constrained sampling for llama-cpp-python in llama.cpp server's order: sample, then check.

llama-cpp-python puts the grammar first in its sampler chain, so every token the grammar is matched against
the whole vocabulary (49,152 tokens for SmolLM2). llama.cpp's own sampler (common/sampling.cpp, which its
server uses) samples without the grammar first and checks only the chosen token; only when the grammar
rejects it does it apply the grammar to the whole vocabulary and sample again: the same text at temperature
0 for a fraction of the sampling time (docs/performance.md). Hand-written because llama-cpp-python exposes
the sampler chain but not this order.

Without truncation the result is the grammar-constrained distribution: a token the grammar allows is kept
with its unconstrained probability p, and the rest of the time (1 - sum of allowed p) the resample draws from
the allowed tokens in proportion to p, which together is p / (sum of allowed p). With top-k/top-p/min-p the
first draw truncates among all tokens and the resample among the allowed ones, as in llama.cpp's server; a
rejected token also draws from the random stream twice, so seeded text at temperature > 0 differs from
grammar-first (at temperature 0 it is the same).
"""

from __future__ import annotations

import ctypes
import math

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar


class GrammarAfterSampler:
    """Takes the place of llama-cpp-python's sampler chain for one completion with a grammar."""

    def __init__(self, llm: "GrammarAfterLlama", chain, grammar: LlamaGrammar):
        self.chain = chain  # llama-cpp-python's own chain (penalties, top-k, ..., dist), built without the grammar
        self._free = llama_cpp.llama_sampler_free  # kept: at interpreter exit the module may be gone first
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self.grammar:
            raise ValueError("llama.cpp could not parse the grammar")
        self.buf, self.view, self.ids = llm._candidate_buffer()
        self.one = (llama_cpp.llama_token_data * 1)()
        self.sampled = self.rejected = 0

    def _all_tokens(self, ctx, idx: int):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, idx), shape=self.ids.shape)
        self.view["id"], self.view["logit"], self.view["p"] = self.ids, logits, 0.0
        return llama_cpp.llama_token_data_array(data=self.buf, size=len(self.ids), selected=-1, sorted=False)

    @staticmethod
    def _selected(cur, chain) -> int:
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
        if cur.selected < 0:  # the chain ends in a greedy or dist sampler, which always selects
            raise RuntimeError("llama.cpp sampler chain selected no token")
        return cur.data[cur.selected].id

    def sample(self, ctx, idx: int = -1) -> int:
        self.sampled += 1
        cur = self._all_tokens(ctx, idx)
        token = self._selected(cur, self.chain.sampler)
        self.one[0].id, self.one[0].logit, self.one[0].p = token, 0.0, 0.0
        single = llama_cpp.llama_token_data_array(data=self.one, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(single))
        if math.isinf(self.one[0].logit):  # the grammar set it to -inf: not allowed here
            self.rejected += 1
            cur = self._all_tokens(ctx, idx)
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(cur))
            token = self._selected(cur, self.chain.sampler)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.chain.sampler, token)
        return token

    def __del__(self):
        if getattr(self, "grammar", None):
            self._free(self.grammar)
            self.grammar = None


class GrammarAfterLlama(Llama):
    """`Llama` whose grammar-constrained completions sample first and check the token after."""

    last_sampler: GrammarAfterSampler | None = None
    _mtr_candidates: tuple | None = None

    def _candidate_buffer(self):
        # One candidate buffer per context (the vocabulary's size), reused by every completion on it.
        if self._mtr_candidates is None:
            n = self.n_vocab()
            buf = (llama_cpp.llama_token_data * n)()
            self._mtr_candidates = (buf, np.ctypeslib.as_array(buf), np.arange(n, dtype=np.int32))
        return self._mtr_candidates

    def _init_sampler(self, *args, grammar: LlamaGrammar | None = None, **kwargs):
        chain = super()._init_sampler(*args, grammar=None, **kwargs)
        if grammar is None:
            return chain
        self.last_sampler = GrammarAfterSampler(self, chain, grammar)
        return self.last_sampler
