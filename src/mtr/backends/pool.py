"""Roles to backends: one backend per distinct model and connection, shared by the roles that name it."""

from __future__ import annotations

from mtr.backends.base import Backend, BackendError
from mtr.backends.hf import HFBackend
from mtr.backends.llamacpp import LlamaCppBackend
from mtr.backends.openai import OpenAIBackend
from mtr.config import RoleConfig


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

    def lockstep(self, expected):
        return self.inner.lockstep(expected)

    def describe(self) -> str:
        return self.inner.describe()

    @property
    def tokenizer(self):
        return getattr(self.inner, "tokenizer", None)

