"""`hf`: a local transformers checkpoint (the embedded model by default), batched, with a prefix KV cache and
JSON-schema-constrained decoding through xgrammar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtr.backends.base import BackendError, Completion, SamplingParams, cut_at_stop, one_line
from mtr.backends.batching import LocalBackend, Request
from mtr.backends.kvcache import PrefixCache, generate_with_prefix_cache
from mtr.checkpoints import CheckpointError, load_tokenizer, resolve_checkpoint
from mtr.config import RoleConfig


def quantize_int8(model: Any) -> Any:
    """The model's linear layers with int8 weights (per output channel) and int8 activations (per batch,
    dynamically), for inference on a CPU.

    Decoding on a CPU is bound by reading the weights (a 135M model in fp32 reads 540 MB a token); int8
    reads a quarter, and per-channel scales keep the answers close to fp32's (per-tensor ones did not). The
    gain depends on the CPU (docs/performance.md). This is torch's own dynamic quantization (fbgemm
    kernels), which torch marks deprecated; torchao, its successor, was slower than fp32 in eager mode on
    the CPUs tried, so the older API is used while the pinned torch ships it."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.(ao\.quantization is deprecated|quantize_per)")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def _resolve_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class HFBackend(LocalBackend):
    kind = "hf"

    def __init__(self, cfg: RoleConfig):
        super().__init__(cfg)
        self.model: Any = None
        self.prefix_cache: PrefixCache | None = None
        self._grammars: dict[str, Any] = {}
        self._compiler: Any = None

    def model_path(self) -> Path:
        try:
            return resolve_checkpoint(self.cfg.model, "hf backend: roles.<role>.model")
        except CheckpointError as e:
            raise BackendError(str(e)) from None

    def load(self) -> None:
        if self.model is not None:
            return
        with self._load_lock:
            if self.model is not None:
                return
            path = self.model_path()
            try:
                self._load_from(path)
            except BackendError:
                raise
            except Exception as e:  # noqa: BLE001 - transformers/torch raise many types for a bad checkpoint
                raise BackendError(f"hf backend: cannot load {path}: {type(e).__name__}: "
                                   f"{one_line(e)}") from None

    def _load_from(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        device = _resolve_device(self.cfg.device)
        if self.cfg.dtype == "int8" and device != "cpu":
            raise BackendError(f"hf backend: dtype int8 runs on the CPU only (device is {device}); "
                               "on a GPU use bfloat16")
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "int8": torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.cfg.dtype]
        tok = load_tokenizer(path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        model.eval()
        if self.cfg.dtype == "int8":
            model = quantize_int8(model)
        self.tokenizer, self.model, self.device = tok, model, device
        # An episode's next turn is its last prompt + the turn + the observation: read only what is new.
        self.prefix_cache = PrefixCache(self.cfg.prefix_cache_mb << 20) if self.cfg.prefix_cache_mb else None

    def _logits_processor(self, schemas: list[dict | None]) -> list:
        if all(s is None for s in schemas):
            return []
        import xgrammar as xgr
        from xgrammar.contrib.hf import LogitsProcessor

        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            self._compiler = xgr.GrammarCompiler(info)
        grammars = []
        for s in schemas:
            key = json.dumps(s, sort_keys=True) if s is not None else ""
            if key not in self._grammars:
                self._grammars[key] = (self._compiler.compile_json_schema(key, any_whitespace=False) if s is not None
                                       else self._compiler.compile_builtin_json_grammar())
            grammars.append(self._grammars[key])
        return [LogitsProcessor(grammars)]

    # Sampled rows of different temperatures and token budgets share a batch (one role's ToolMaker call beside
    # another's agent turn): per-row temperature and budget are applied inside `generate` (below).
    mixed_rows = True

    def batch_key(self, params: SamplingParams) -> tuple:
        if self.mixed_rows and params.temperature > 0:
            return ("sampled", params.top_p, params.stop, params.json_schema is not None)
        return params.batch_key()

    def _run_batch(self, requests: list[Request]) -> list[Completion]:
        import torch

        tok, model = self.tokenizer, self.model
        prompts, params = [r.prompt for r in requests], requests[0].params
        rows = [r.params for r in requests]
        budgets = [r.max_tokens for r in rows]
        kwargs: dict[str, Any] = dict(max_new_tokens=max(budgets), eos_token_id=tok.eos_token_id)
        processors = self._logits_processor([r.json_schema for r in rows])
        temperatures = [r.temperature for r in rows]
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            if len(set(temperatures)) > 1:
                # transformers applies custom processors before its own temperature and top-p: scaling each
                # row here, with the global temperature at 1, keeps that order
                processors.append(_RowTemperature(temperatures))
                kwargs["temperature"] = 1.0
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if len(set(budgets)) > 1:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([_RowBudget(budgets)])
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        if processors:
            kwargs["logits_processor"] = processors
        if params.seed is not None:
            torch.manual_seed(params.seed)
        rows = tok(prompts, add_special_tokens=False)["input_ids"]
        new = generate_with_prefix_cache(model, rows, self.prefix_cache, tok.pad_token_id, {tok.eos_token_id},
                                         **kwargs)
        results = []
        for i in range(len(prompts)):
            ids = new[i].tolist()[: budgets[i]]  # a row stopped at its own budget is padded after it
            ended = tok.eos_token_id in ids
            if ended:
                ids = ids[: ids.index(tok.eos_token_id)]
            while ids and ids[-1] == tok.pad_token_id:
                ids.pop()
            text, stopped = cut_at_stop(tok.decode(ids, skip_special_tokens=True), params.stop)
            results.append(Completion(
                text=text, finish_reason="stop" if ended or stopped else "length",
                prompt_tokens=len(rows[i]), completion_tokens=len(ids)))
        return results


class _RowTemperature:
    """A logits processor dividing each row's scores by its own temperature."""

    def __init__(self, temperatures: list[float]):
        self.temperatures = temperatures

    def __call__(self, input_ids, scores):
        import torch

        t = torch.tensor(self.temperatures, dtype=scores.dtype, device=scores.device)
        return scores / t[:, None]


class _RowBudget:
    """A stopping criterion ending each row after its own number of new tokens (`generate` takes one
    `max_new_tokens` for the batch). transformers' StoppingCriteria may answer per row; this is one."""

    def __init__(self, budgets: list[int]):
        self.budgets, self.start = budgets, None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.start is None:  # first called once the first new token is in
            self.start = input_ids.shape[1] - 1
        made = input_ids.shape[1] - self.start
        return torch.tensor([made >= b for b in self.budgets], device=input_ids.device)


