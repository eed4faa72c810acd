"""LLM backends behind one small async interface: chat messages in, text (or parsed JSON) out.

    backend = make_backend(RoleConfig(backend="hf"))
    [completions] = await backend.generate([messages], SamplingParams(n=2, json_schema=schema))

- `hf`: a local transformers checkpoint (the embedded model by default). Concurrent callers are gathered
  into batches (left padding) by a small micro-batcher, so that many episodes running as independent
  coroutines share one `model.generate` call; a prefix cache (`mtr.kvcache`) lets a prompt that starts
  like an earlier one (an episode's next turn) read only the rest. JSON-schema-constrained decoding
  through xgrammar.
- `llamacpp`: llama-cpp-python in-process on a GGUF file, with a grammar compiled from the JSON schema.
- `openai`: any OpenAI-compatible server through the `openai` client: bounded requests in flight,
  timeouts, and the client's own retries with exponential backoff on 429/5xx/connection errors.

Local backends render prompts with the same chat template (`mtr.chat_template`), so a prompt is the same
text whichever local backend plays the role. Every completion's text follows the Hermes convention: a
server's structured `tool_calls` are written back as `<tool_call>` blocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import jsonschema

from mtr.chat_template import install_chat_template, render
from mtr.config import RoleConfig
from mtr.kvcache import PrefixCache, generate_with_prefix_cache


class BackendError(RuntimeError):
    """A backend failed (unreachable, timed out, bad reply); the message is one line."""


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    json_schema: dict | None = field(default=None, compare=False, hash=False)
    seed: int | None = None

    def batch_key(self) -> tuple:
        """Requests with the same key can share one batched generate call. The seed is not part of it:
        `generate` cannot seed rows separately, so a batch is seeded with its first request's seed (runs
        are reproducible for the same inputs and concurrency, not row by row)."""
        return (self.temperature, self.top_p, self.max_tokens, self.stop, self.json_schema is not None)


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    json: Any = None
    json_error: str | None = None

    def require_json(self, who: str = "model") -> Any:
        """The parsed JSON, or a one-line BackendError saying what came back instead."""
        if self.json_error is not None:
            snippet = self.text.strip().replace("\n", " ")[:120]
            raise BackendError(f"{who} returned non-JSON where JSON was required ({self.json_error}): {snippet!r}")
        return self.json


def attach_json(c: Completion, schema: dict | None) -> Completion:
    """Parse and validate `c.text` against `schema`; problems go to `c.json_error`, never raised."""
    if schema is None:
        return c
    text = c.text.strip()
    if text.startswith("```"):  # servers without constrained decoding often fence their JSON
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        c.json_error = f"not JSON: {e.msg} at char {e.pos}"
        return c
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        c.json_error = f"JSON does not match the schema at {path}: {e.message[:200]}"
        return c
    c.json = value
    return c


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` before the first stop string (OpenAI semantics: the stop string is not returned)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Backend(ABC):
    kind: str = ""

    def __init__(self, cfg: RoleConfig):
        self.cfg = cfg

    def params(self, **overrides: Any) -> SamplingParams:
        """Sampling parameters from the role's config, with per-call overrides."""
        base = SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens)
        if "stop" in overrides and overrides["stop"] is not None:
            overrides["stop"] = tuple(overrides["stop"])
        return replace(base, **overrides)

    @abstractmethod
    async def generate(self, conversations: list[list[dict]], params: SamplingParams,
                       tools: list[list[dict]] | None = None) -> list[list[Completion]]:
        """For each conversation, `params.n` completions of the next assistant turn."""

    async def chat(self, messages: list[dict], params: SamplingParams | None = None,
                   tools: list[dict] | None = None) -> list[Completion]:
        [out] = await self.generate([messages], params or self.params(), [tools] if tools else None)
        return out

    def describe(self) -> str:
        return f"{self.kind}:{self.cfg.model}"

    def load(self) -> None:
        """Load weights / check reachability now rather than on the first request."""

    async def aclose(self) -> None:
        pass

    def batch_stats(self) -> dict[str, float] | None:
        """How many batches a local backend ran and their mean rows; None for a server."""
        return None


# ---------------------------------------------------------------------------------------------------
# Local backends share a micro-batcher: concurrent `generate` calls are queued and run together.


class MicroBatcher:
    """Gathers items submitted by concurrent coroutines into batches for one blocking call on a worker thread.

    Many episodes run as independent coroutines; each submits one generation request and awaits it. Items
    with the same `key` that are pending together go into one `run(items)` call (at most `batch_size`),
    so a local model sees batches as large as the concurrency allows without the episodes knowing.
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], batch_size: int,
                 key: Callable[[Any], Any] = lambda item: None, describe: str = "batch",
                 expected: Callable[[], int] | None = None):
        self.run, self.batch_size, self.key, self.describe = run, batch_size, key, describe
        # `expected`: how many requests are still to come in this round (e.g. the live episodes of a GRPO
        # rollout). With it the batch is cut only when all of them are pending (lockstep): on a CPU the
        # ToolActor and the policy share the cores, so a batch of 8 costs about what a batch of 1 does.
        self.expected = expected
        self.batch_rows: list[int] = []  # rows of each batch run, for the stats of a stage
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    def submit(self, item: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self._drainer is not None and self._drainer.get_loop() is not loop:
            # A new event loop (each asyncio.run): whatever the old one left pending died with it.
            self._pending, self._drainer = [], None
        if self._wake is None or self._drainer is None:
            self._wake = asyncio.Event()
        fut = loop.create_future()
        self._pending.append((item, fut))
        self._wake.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return fut

    def notify(self) -> None:
        """Something `expected` counts has changed (an episode ended): look again whether to cut a batch."""
        if self._wake is not None:
            self._wake.set()

    async def _drain(self) -> None:
        while self._pending:
            # Let every runnable coroutine submit its request before the batch is cut.
            for _ in range(3):
                await asyncio.sleep(0)
            if self.expected is not None:
                while self._pending and len(self._pending) < min(self.batch_size, self.expected()):
                    self._wake.clear()
                    await self._wake.wait()
                if not self._pending:
                    break
            key = self.key(self._pending[0][0])
            batch = [p for p in self._pending if self.key(p[0]) == key][: self.batch_size]
            taken = {id(p) for p in batch}
            self._pending = [p for p in self._pending if id(p) not in taken]
            self.batch_rows.append(len(batch))
            try:
                outs = await asyncio.to_thread(self.run, [item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - every waiter must hear about the failure
                err = e if isinstance(e, BackendError) else BackendError(f"{self.describe}: {type(e).__name__}: {e}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (_, fut), out in zip(batch, outs):
                if not fut.done():
                    fut.set_result(out)


@dataclass
class _Request:
    prompt: str
    params: SamplingParams


class _LocalBackend(Backend):
    """Queues requests from concurrent coroutines and runs them in batches on a worker thread."""

    def __init__(self, cfg: RoleConfig):
        super().__init__(cfg)
        self._batcher = MicroBatcher(self._run_requests, cfg.batch_size, key=lambda r: self.batch_key(r.params),
                                     describe=f"{self.kind}:{cfg.model}")
        self._load_lock = threading.Lock()
        self.tokenizer: Any = None

    @abstractmethod
    def _run_batch(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Generate one completion per prompt (runs on a worker thread)."""

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        self.load()
        return render(self.tokenizer, messages, tools, add_generation_prompt=True)

    async def generate(self, conversations, params, tools=None):
        futures = []
        for i, messages in enumerate(conversations):
            prompt = self.render(messages, tools[i] if tools else None)
            futures.append([self._batcher.submit(_Request(prompt, replace(params, n=1))) for _ in range(params.n)])
        return [[await f for f in row] for row in futures]

    def batch_stats(self) -> dict[str, float] | None:
        rows = self._batcher.batch_rows
        return {"batches": len(rows), "rows": sum(rows), "mean_rows": sum(rows) / len(rows)} if rows else None

    def batch_key(self, params: SamplingParams) -> tuple:
        """Requests with the same key can share one batch."""
        return params.batch_key()

    def _run_requests(self, batch: list[_Request]) -> list[Completion]:
        self.load()
        # The first request's params stand for the batch (same batch_key); what may differ per row (its JSON
        # schema, on hf its temperature and token budget) is read from each row's own.
        self._row_params = [r.params for r in batch]
        outs = self._run_batch([r.prompt for r in batch], batch[0].params)
        return [attach_json(out, r.params.json_schema) for r, out in zip(batch, outs)]


def quantize_int8(model: Any) -> Any:
    """The model's linear layers with int8 weights (per output channel) and int8 activations (per batch,
    dynamically), for inference on a CPU.

    Decoding on a CPU is bound by reading the weights (a 135M model in fp32 reads 540 MB a token); int8
    reads a quarter. Measured on a 2-core CPU: 2.2x faster greedy generation than fp32 (no faster on another,
    AVX2-only host: the gain depends on the CPU), and the answers stay sensible (per-tensor scales did not:
    "What is the capital of France?" lost "Paris"). This is torch's
    own dynamic quantization (fbgemm kernels), which torch marks deprecated; torchao 0.18, its successor, was
    slower than fp32 in eager mode on this CPU (int8 weight-only 1.5x slower, dynamic 4.7x), so the older
    API is used while the pinned torch ships it."""
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


class HFBackend(_LocalBackend):
    kind = "hf"

    def __init__(self, cfg: RoleConfig):
        super().__init__(cfg)
        self.model: Any = None
        self.prefix_cache: PrefixCache | None = None
        self._grammars: dict[str, Any] = {}
        self._compiler: Any = None

    def model_path(self) -> Path:
        if self.cfg.model == "embedded":
            from mtr.embedded import ensure_checkpoint

            return ensure_checkpoint()
        p = Path(self.cfg.model).expanduser()
        if not (p / "config.json").is_file():
            raise BackendError(f"hf backend: {p} is not a Hugging Face checkpoint directory (no config.json); "
                               "set roles.<role>.model to `embedded` or a checkpoint directory")
        return p

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
                                   f"{_one_line(e)}") from None

    def _load_from(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = _resolve_device(self.cfg.device)
        if self.cfg.dtype == "int8" and device != "cpu":
            raise BackendError(f"hf backend: dtype int8 runs on the CPU only (device is {device}); "
                               "on a GPU use bfloat16")
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "int8": torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.cfg.dtype]
        tok = AutoTokenizer.from_pretrained(path)
        install_chat_template(tok)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
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

    def _run_batch(self, prompts, params):
        import torch

        tok, model = self.tokenizer, self.model
        rows = self._row_params
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


class LlamaCppBackend(_LocalBackend):
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
                from mtr.llamacpp_grammar import GrammarAfterLlama
            except ImportError as e:
                raise BackendError("llamacpp backend: llama-cpp-python is not installed; "
                                   "fix: python -m mtr.llamacpp_build install") from e
            from mtr.llamacpp_build import INSTALL_HINT, installed_build

            build = installed_build()
            if build.get("missing_on_cpu"):  # built on another CPU (a shared home, a copied venv)
                raise BackendError(f"llamacpp backend: this llama.cpp build uses {' '.join(build['missing_on_cpu'])}, "
                                   f"which this CPU lacks (built for another machine); fix: {INSTALL_HINT}")
            # Grammar-constrained sampling checks the sampled token instead of the whole vocabulary
            # (mtr.llamacpp_grammar): 10-15x less sampling time a token, the same text at temperature 0.
            self._llama = GrammarAfterLlama
            from transformers import AutoTokenizer

            path = self.gguf()
            try:
                if self.cfg.model == "embedded":
                    from mtr.embedded import ensure_checkpoint

                    tok = AutoTokenizer.from_pretrained(ensure_checkpoint())
                else:
                    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                install_chat_template(tok)
                llm = self._new_context(path)
            except Exception as e:  # noqa: BLE001 - llama.cpp and transformers raise many types for a bad file
                raise BackendError(f"llamacpp backend: cannot load {path}: {type(e).__name__}: "
                                   f"{_one_line(e)}") from None
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

    def _run_batch(self, prompts, params):
        # llama-cpp-python's high-level API decodes one sequence at a time; the batcher still saves the
        # per-request thread hops, and the llama.cpp server (openai backend) is the batched path.
        results = []
        for i, prompt in enumerate(prompts):
            schema = self._row_params[i].json_schema
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


# ---------------------------------------------------------------------------------------------------


def to_openai_messages(messages: list[dict]) -> list[dict]:
    """OpenAI wants tool-call arguments as a JSON string; TRL/`datasets` keep them as objects."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                fn = dict(tc.get("function", tc))
                if not isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.dumps(fn.get("arguments") or {}, ensure_ascii=False)
                calls.append({"type": "function", "id": tc.get("id", "call_0"), "function": fn})
            m["tool_calls"] = calls
        out.append(m)
    return out


def _one_line(value: Any, limit: int = 200) -> str:
    return " ".join(str(value).split())[:limit]


class OpenAIBackend(Backend):
    kind = "openai"

    def __init__(self, cfg: RoleConfig):
        super().__init__(cfg)
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._json_mode = cfg.json_mode

    def _response_format(self, schema: dict, kwargs: dict) -> dict:
        if self._json_mode == "json_object":
            # llama-cpp-python's server (0.3.x) drops the schema grammar when a `seed` is also sent, and
            # then returns unconstrained text; the schema matters more than the seed.
            kwargs.pop("seed", None)
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}

    def _client_kwargs(self) -> dict:
        # The key is read here and handed to the client only; it is never logged or put in a manifest.
        key = os.environ.get(self.cfg.api_key_env) or "EMPTY"
        return dict(base_url=self.cfg.base_url, api_key=key, timeout=self.cfg.timeout_s,
                    max_retries=self.cfg.max_retries)

    @property
    def client(self):
        # An async client (and its semaphore) belongs to the event loop it was made in; each
        # `asyncio.run` (one per CLI command or test) gets its own.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(**self._client_kwargs())
            self._sem = asyncio.Semaphore(self.cfg.max_concurrency)
            self._loop = loop
        return self._client

    def describe(self) -> str:
        return f"openai:{self.cfg.model}@{self.cfg.base_url or 'api.openai.com'}"

    def _error(self, e: Exception) -> BackendError:
        import openai

        where = self.describe()
        if isinstance(e, openai.APITimeoutError):
            return BackendError(f"{where}: request timed out after {self.cfg.timeout_s:g}s "
                                f"({self.cfg.max_retries} retries)")
        if isinstance(e, openai.APIConnectionError):
            return BackendError(f"{where}: cannot reach the server ({self.cfg.max_retries} retries); is it running?")
        if isinstance(e, openai.APIStatusError):
            return BackendError(f"{where}: server answered HTTP {e.status_code}: {_one_line(e.message)}")
        return BackendError(f"{where}: {type(e).__name__}: {_one_line(e)}")

    async def _one(self, messages: list[dict], params: SamplingParams, tools: list[dict] | None) -> Completion:
        import openai

        client = self.client
        kwargs: dict[str, Any] = dict(model=self.cfg.model, messages=to_openai_messages(messages),
                                      temperature=params.temperature, top_p=params.top_p,
                                      max_tokens=params.max_tokens)
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if tools:
            kwargs["tools"] = [{"type": "function", "function": t["function"]} for t in tools]
        async with self._sem:
            try:
                if params.json_schema is not None:
                    kwargs["response_format"] = self._response_format(params.json_schema, kwargs)
                try:
                    resp = await client.chat.completions.create(**kwargs)
                except openai.APIStatusError as e:
                    msg = str(e.message)
                    rejected_format = e.status_code in (400, 422, 500) and ("response_format" in msg
                                                                           or "json_schema" in msg)
                    sent = kwargs.get("response_format", {}).get("type")
                    if sent != "json_schema" or not rejected_format:
                        raise
                    # A server that does not know OpenAI's `json_schema` format (llama.cpp) gets `json_object`.
                    self._json_mode = "json_object"
                    kwargs["response_format"] = self._response_format(params.json_schema, kwargs)
                    resp = await client.chat.completions.create(**kwargs)
            except openai.OpenAIError as e:
                raise self._error(e) from None
        if not getattr(resp, "choices", None):
            raise BackendError(f"{self.describe()}: reply has no choices")
        choice = resp.choices[0]
        text = choice.message.content or ""
        for tc in choice.message.tool_calls or []:
            try:
                args = json.loads(tc.function.arguments or "{}")
            except json.JSONDecodeError:
                args = tc.function.arguments
            text += ("\n" if text else "") + "<tool_call>\n" + json.dumps(
                {"name": tc.function.name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
        usage = resp.usage
        return attach_json(Completion(text=text, finish_reason=choice.finish_reason or "stop",
                                      prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                                      completion_tokens=getattr(usage, "completion_tokens", 0) or 0),
                           params.json_schema)

    async def generate(self, conversations, params, tools=None):
        # One request per sample: `n>1` is not supported by every server (llama.cpp ignores it).
        tasks = [[asyncio.create_task(self._one(m, replace(params, n=1), tools[i] if tools else None))
                  for _ in range(params.n)] for i, m in enumerate(conversations)]
        try:
            return [[await t for t in row] for row in tasks]
        finally:
            for row in tasks:
                for t in row:
                    t.cancel()

    def load(self) -> None:
        """Check the server answers and knows the model (a cheap `GET /models`)."""
        import openai

        try:
            with openai.OpenAI(**self._client_kwargs()) as client:
                names = [m.id for m in client.models.list().data]
        except openai.OpenAIError as e:
            raise self._error(e) from None
        if names and self.cfg.model not in names and not any(self.cfg.model in n for n in names):
            raise BackendError(f"{self.describe()}: server does not serve model {self.cfg.model!r} "
                               f"(it serves: {', '.join(names[:5])})")

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = None


_BACKENDS = {"hf": HFBackend, "llamacpp": LlamaCppBackend, "openai": OpenAIBackend}


def make_backend(cfg: RoleConfig) -> Backend:
    try:
        cls = _BACKENDS[cfg.backend]
    except KeyError:
        raise BackendError(f"unknown backend {cfg.backend!r}; backends are: {', '.join(_BACKENDS)}") from None
    return cls(cfg)


class BackendPool:
    """One backend per distinct (backend, model, connection) so that roles sharing a model load it once."""

    _SHARED_FIELDS = ("backend", "model", "base_url", "api_key_env", "device", "dtype", "n_ctx", "n_threads",
                      "n_slots", "prefix_cache_mb", "max_concurrency", "timeout_s", "max_retries", "batch_size",
                      "json_mode")

    def __init__(self, config):
        self.config = config
        self._by_key: dict[tuple, Backend] = {}
        self._by_role: dict[str, Backend] = {}

    def get(self, role: str) -> Backend:
        if role not in self._by_role:
            cfg = self.config.role(role)
            key = tuple(getattr(cfg, f) for f in self._SHARED_FIELDS)
            shared = self._by_key.get(key)
            if shared is None:
                shared = self._by_key[key] = make_backend(cfg)
                self._by_role[role] = shared
            else:
                # Same weights, the role's own sampling defaults.
                self._by_role[role] = _SharedView(shared, cfg)
        return self._by_role[role]

    def backends(self) -> list[Backend]:
        """The distinct backends loaded so far (roles sharing a model share one)."""
        return list(self._by_key.values())

    async def aclose(self) -> None:
        for b in self._by_key.values():
            await b.aclose()


class _SharedView(Backend):
    """A role's view of a backend another role already loaded: its own sampling defaults, shared weights."""

    def __init__(self, inner: Backend, cfg: RoleConfig):
        super().__init__(cfg)
        self.inner = inner
        self.kind = inner.kind

    async def generate(self, conversations, params, tools=None):
        return await self.inner.generate(conversations, params, tools)

    def load(self) -> None:
        self.inner.load()

    def describe(self) -> str:
        return self.inner.describe()

    @property
    def tokenizer(self):
        return getattr(self.inner, "tokenizer", None)

