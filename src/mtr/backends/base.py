"""What every backend shares: sampling parameters, completions, errors, JSON checking, the `Backend` interface."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import jsonschema

from mtr.config import RoleConfig


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
        `generate` cannot seed rows separately, so a batch is seeded with its first request's seed, the rows
        sorted by prompt and seed first (`run_in_own_order`: runs are reproducible for the same inputs and
        batch size whatever the timing, not row by row)."""
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

    @contextmanager
    def lockstep(self, expected: Callable[[], int]) -> Iterator[Callable[[], None]]:
        """Within it, a local backend cuts a batch only when `expected()` requests are pending (or a full
        batch): one batch a turn for every episode in flight, not whichever arrived first. Yields what to
        call when the count changes. A server batches requests as they come: nothing to wait for."""
        yield lambda: None


def one_line(value: Any, limit: int = 200) -> str:
    return " ".join(str(value).split())[:limit]
