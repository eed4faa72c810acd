"""`openai`: any OpenAI-compatible server through the `openai` client: bounded requests in flight, timeouts, and
the client's own retries with exponential backoff on 429/5xx/connection errors."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from typing import Any

from mtr.backends.base import Backend, BackendError, Completion, SamplingParams, attach_json, one_line
from mtr.config import RoleConfig


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
            return BackendError(f"{where}: server answered HTTP {e.status_code}: {one_line(e.message)}")
        return BackendError(f"{where}: {type(e).__name__}: {one_line(e)}")

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


