"""Local backends share a micro-batcher: concurrent `generate` calls are queued and run together."""

from __future__ import annotations

import asyncio
import threading
import warnings
from abc import abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from mtr.backends.base import Backend, BackendError, Completion, SamplingParams, attach_json
from mtr.chat_template import render
from mtr.config import RoleConfig



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
        # ... but at most `stall_s` seconds from when it begins to wait: then what is pending runs (a batch per
        # key). An episode that waits on a result another episode's request would bring (one question's tools
        # for several episodes) then costs a late, smaller batch and a warning, not a run that hangs. Longer than
        # a role's request timeout (120 s by default), so a slow server alone does not cut a batch
        self.stall_s = 300.0
        self.stalls = 0
        self._overdue: set[asyncio.Future] = set()  # what was pending when a wait ran out: not to wait again
        self.batch_rows: list[int] = []  # rows of each batch run, for the stats of a stage
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    def submit(self, item: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self._drainer is not None and self._drainer.get_loop() is not loop:
            # A new event loop (each asyncio.run): whatever the old one left pending died with it.
            self._pending, self._drainer, self._overdue = [], None, set()
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

    def _ready(self) -> bool:
        """Whether to cut a batch now: at once, unless lockstep waits for the requests it still expects."""
        return (self.expected is None or len(self._pending) >= min(self.batch_size, self.expected())
                or any(fut in self._overdue for _, fut in self._pending))

    async def _drain(self) -> None:
        while self._pending:
            # Let every runnable coroutine submit its request before the batch is cut.
            for _ in range(3):
                await asyncio.sleep(0)
            deadline = asyncio.get_running_loop().time() + self.stall_s
            while self._pending and not self._ready():
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
                except asyncio.TimeoutError:
                    self.stalls += 1
                    if self.stalls == 1:
                        warnings.warn(f"{self.describe}: a batch in lockstep waited {self.stall_s:g} s for "
                                      f"{min(self.batch_size, self.expected())} requests and ran with the "
                                      f"{len(self._pending)} pending (an episode waits on something else)",
                                      RuntimeWarning, stacklevel=1)
                    self._overdue = {fut for _, fut in self._pending}
            if not self._pending:
                break
            key = self.key(self._pending[0][0])
            batch = [p for p in self._pending if self.key(p[0]) == key][: self.batch_size]
            taken = {id(p) for p in batch}
            self._pending = [p for p in self._pending if id(p) not in taken]
            self._overdue.difference_update(fut for _, fut in batch)
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


def run_in_own_order(items: list[Any], key: Callable[[Any], Any], run: Callable[[list[Any]], list[Any]]) -> list[Any]:
    """`run(items)` with the items sorted by `key`, its outputs given back in the items' order.

    Concurrent episodes join a batch in the order their tools answered (a search runs on a thread), and each
    row of a sampled batch draws its own random numbers (on hf, from the first row's seed): rows in an order
    of their own make a seed give the same samples whatever the timing."""
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    outs = run([items[i] for i in order])
    back: list[Any] = [None] * len(items)
    for out, i in zip(outs, order):
        back[i] = out
    return back


@dataclass
class Request:
    """One row of a batch: a rendered prompt and its own sampling parameters."""

    prompt: str
    params: SamplingParams


class LocalBackend(Backend):
    """Queues requests from concurrent coroutines and runs them in batches on a worker thread."""

    def __init__(self, cfg: RoleConfig):
        super().__init__(cfg)
        self._batcher = MicroBatcher(self._run_requests, cfg.batch_size, key=lambda r: self.batch_key(r.params),
                                     describe=f"{self.kind}:{cfg.model}")
        self._load_lock = threading.Lock()
        self.tokenizer: Any = None

    @abstractmethod
    def _run_batch(self, requests: list[Request]) -> list[Completion]:
        """One completion per request (runs on a worker thread). The requests share a `batch_key`, so the
        first one's parameters stand for the batch; what may differ per row (its JSON schema, on hf its
        temperature and token budget) is read from each request's own."""

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        self.load()
        return render(self.tokenizer, messages, tools, add_generation_prompt=True)

    async def generate(self, conversations, params, tools=None):
        futures = []
        for i, messages in enumerate(conversations):
            prompt = self.render(messages, tools[i] if tools else None)
            futures.append([self._batcher.submit(Request(prompt, replace(params, n=1))) for _ in range(params.n)])
        return [[await f for f in row] for row in futures]

    def batch_stats(self) -> dict[str, float] | None:
        rows = self._batcher.batch_rows
        return {"batches": len(rows), "rows": sum(rows), "mean_rows": sum(rows) / len(rows)} if rows else None

    @contextmanager
    def lockstep(self, expected: Callable[[], int]) -> Iterator[Callable[[], None]]:
        before = self._batcher.expected
        self._batcher.expected = expected
        try:
            yield self._batcher.notify
        finally:
            self._batcher.expected = before
            self._batcher.notify()

    def batch_key(self, params: SamplingParams) -> tuple:
        """Requests with the same key can share one batch."""
        return params.batch_key()

    def _run_requests(self, batch: list[Request]) -> list[Completion]:
        self.load()
        outs = run_in_own_order(batch, lambda r: (r.prompt, r.params.seed if r.params.seed is not None else -1),
                                self._run_batch)
        return [attach_json(out, r.params.json_schema) for r, out in zip(batch, outs)]


