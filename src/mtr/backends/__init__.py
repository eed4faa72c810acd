"""LLM backends behind one small async interface: chat messages in, text (or parsed JSON) out.

    backend = make_backend(RoleConfig(backend="hf"))
    [completions] = await backend.generate([messages], SamplingParams(n=2, json_schema=schema))

- `hf`: a local transformers checkpoint (the embedded model by default). Concurrent callers are gathered
  into batches (left padding) by a small micro-batcher, so that many episodes running as independent
  coroutines share one `model.generate` call; a prefix cache (`mtr.backends.kvcache`) lets a prompt that starts
  like an earlier one (an episode's next turn) read only the rest. JSON-schema-constrained decoding
  through xgrammar.
- `llamacpp`: llama-cpp-python in-process on a GGUF file, with a grammar compiled from the JSON schema.
- `openai`: any OpenAI-compatible server through the `openai` client: bounded requests in flight,
  timeouts, and the client's own retries with exponential backoff on 429/5xx/connection errors.

Local backends render prompts with the same chat template (`mtr.chat_template`), so a prompt is the same
text whichever local backend plays the role. Every completion's text follows the Hermes convention: a
server's structured `tool_calls` are written back as `<tool_call>` blocks.
"""

from mtr.backends.base import Backend, BackendError, Completion, SamplingParams, attach_json, cut_at_stop
from mtr.backends.batching import LocalBackend, MicroBatcher
from mtr.backends.hf import HFBackend, quantize_int8
from mtr.backends.llamacpp import LlamaCppBackend
from mtr.backends.openai import OpenAIBackend
from mtr.backends.pool import BackendPool, make_backend

__all__ = ["Backend", "BackendError", "BackendPool", "Completion", "HFBackend", "LlamaCppBackend", "LocalBackend",
           "MicroBatcher", "OpenAIBackend", "SamplingParams", "attach_json", "cut_at_stop", "make_backend",
           "quantize_int8"]
