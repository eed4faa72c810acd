"""`llamacpp`: llama-cpp-python in-process on a GGUF file, with a grammar compiled from the JSON schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtr.backends.base import BackendError, Completion, one_line
from mtr.backends.batching import LocalBackend, Request
from mtr.checkpoints import load_tokenizer, resolve_checkpoint
from mtr.config import RoleConfig


class LlamaCppBackend(LocalBackend):
    kind = "llamacpp"

    def __init__(self, cfg: RoleConfig):
        super().__init__(cfg)
        self.llm: Any = None  # the first slot; the others are made when a prompt needs one
        self.slots: list[Any] = []  # least recently used first
        self._grammars: dict[str, Any] = {}

    def gguf(self) -> Path:
        if self.cfg.model == "embedded":
            from mtr.embedded import gguf_path

            return gguf_path()
        p = Path(self.cfg.model).expanduser()
        if not p.is_file():
            raise BackendError(f"llamacpp backend: GGUF file not found: {p}")
        return p

    def load(self) -> None:
        if self.llm is not None:
            return
        with self._load_lock:
            if self.llm is not None:
                return
            try:
                from mtr.backends.llamacpp_grammar import GrammarAfterLlama
            except ImportError as e:
                raise BackendError("llamacpp backend: llama-cpp-python is not installed; "
                                   "fix: python -m mtr.llamacpp_build install") from e
            from mtr.llamacpp_build import INSTALL_HINT, installed_build

            build = installed_build()
            if build.get("missing_on_cpu"):  # built on another CPU (a shared home, a copied venv)
                raise BackendError(f"llamacpp backend: this llama.cpp build uses {' '.join(build['missing_on_cpu'])}, "
                                   f"which this CPU lacks (built for another machine); fix: {INSTALL_HINT}")
            # Grammar-constrained sampling checks the sampled token instead of the whole vocabulary
            # (mtr.backends.llamacpp_grammar), with the same text at temperature 0.
            self._llama = GrammarAfterLlama
            path = self.gguf()
            try:
                # the embedded model's tokenizer from its converted checkpoint (the same text as on hf)
                tok = (load_tokenizer(resolve_checkpoint("embedded")) if self.cfg.model == "embedded"
                       else load_tokenizer(path.parent, gguf_file=path.name))
                llm = self._new_context(path)
            except Exception as e:  # noqa: BLE001 - llama.cpp and transformers raise many types for a bad file
                raise BackendError(f"llamacpp backend: cannot load {path}: {type(e).__name__}: "
                                   f"{one_line(e)}") from None
            self.tokenizer, self.llm = tok, llm
            self.slots = [llm]

    def _new_context(self, path: Path):
        # The weights are memory-mapped, so a further slot costs its KV cache and buffers, not the model.
        return self._llama(model_path=str(path), n_ctx=self.cfg.n_ctx, n_threads=self.cfg.n_threads,
                           n_batch=512, seed=0, verbose=False)

    def slot_for(self, prompt: str) -> Any:
        """The context to run `prompt` on: the one whose cached tokens share the longest prefix with it.

        llama-cpp-python reuses the cached prefix of a context's previous prompt and re-reads only the rest,
        and on a CPU reading the prompt is most of a call's cost. With one context, roles and episodes that
        take turns (agent, ToolActor, agent...) evict each other's prefix every call; with several, an
        agent's next turn finds its own history. The rule is llama.cpp server's slot choice: take the best
        match if it covers at least half the prompt, else a new slot while there is room, else the least
        recently used one. (Hand-written: llama-cpp-python keeps one sequence per context and no pool.)
        """
        # As create_completion tokenises it (BOS when the model wants one), so the prefixes compare.
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        shared = [self._llama.longest_token_prefix(s._input_ids.tolist(), tokens) for s in self.slots]
        best = max(range(len(self.slots)), key=lambda i: (shared[i], i))  # ties: the most recent
        if shared[best] * 2 < len(tokens):
            empty = [i for i, s in enumerate(self.slots) if s.n_tokens == 0]
            if empty:
                best = empty[0]
            elif len(self.slots) < self.cfg.n_slots:
                self.slots.append(self._new_context(self.gguf()))
                best = len(self.slots) - 1
            else:
                best = 0
        slot = self.slots.pop(best)
        self.slots.append(slot)
        return slot

    def _grammar(self, schema: dict):
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def _run_batch(self, requests: list[Request]) -> list[Completion]:
        # llama-cpp-python's high-level API decodes one sequence at a time; the batcher still saves the
        # per-request thread hops, and the llama.cpp server (openai backend) is the batched path.
        results = []
        params = requests[0].params
        for r in requests:
            prompt, schema = r.prompt, r.params.json_schema
            out = self.slot_for(prompt).create_completion(
                prompt=prompt, max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, stop=list(params.stop) or None,
                grammar=self._grammar(schema) if schema is not None else None,
                seed=params.seed if params.seed is not None else -1)
            choice, usage = out["choices"][0], out["usage"]
            results.append(Completion(text=choice["text"], finish_reason=choice.get("finish_reason") or "stop",
                                      prompt_tokens=usage["prompt_tokens"],
                                      completion_tokens=usage["completion_tokens"]))
        return results


