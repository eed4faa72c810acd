"""Resumable, crash-safe JSONL output and the concurrent runner that the stages share.

Records are appended one line per `write` call and flushed as they finish. On open, a torn last line (a
kill -9 mid-write) is cut off, so a re-run skips the ids already written and never duplicates or
corrupts a record.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a whole file so that a reader (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def is_retryable(record: dict[str, Any]) -> bool:
    """A record whose failure was the backend's (timeout, server down): a resume runs it again."""
    return bool(record.get("retryable") or (record.get("meta") or {}).get("retryable"))


def repair_tail(path: Path) -> int:
    """Cut a torn last line (a kill -9 mid-write) off a JSONL file; returns the bytes cut."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # find the last newline; everything after it is a torn record
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos - step + nl + 1
                break
            pos -= step
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def drop_steps_from(path: Path, first: int) -> list[dict[str, Any]]:
    """Cut from a per-step JSONL log (records with a `step`) those of steps `first` and later, and a torn last
    line; returns the records kept. A resumed trainer does again the steps after its checkpoint: their lines
    from the run that crashed would otherwise stand twice."""
    if not path.exists():
        return []
    repair_tail(path)
    records = read_jsonl(path)
    kept = [r for r in records if r.get("step", 0) < first]
    if len(kept) < len(records):
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return kept


class JsonlAppender:
    """Appends records; `done` holds the ids already finished (a retryable failure does not count)."""

    def __init__(self, path: str | Path, id_key: str = "id"):
        self.path = Path(path)
        self.id_key = id_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = repair_tail(self.path)
        records = read_jsonl(self.path, latest_by=id_key) if self.path.exists() else []
        self.done: set[str] = {str(r[id_key]) for r in records if not is_retryable(r)}
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._f.write(line)
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(str(record[self.id_key]))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def json_lines(path: str | Path, on_error: Callable[[int, json.JSONDecodeError], Exception] | None = None,
               errors: str = "strict") -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a JSONL file. A line that is not JSON raises
    what `on_error(line number, error)` returns, or yields (line number, None) without `on_error`."""
    with Path(path).open(encoding="utf-8", errors=errors) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                if on_error is not None:
                    raise on_error(lineno, e) from None
                yield lineno, None


def read_jsonl(path: str | Path, latest_by: str | None = None) -> list[dict[str, Any]]:
    """Read our own JSONL output; a corrupt line is an error naming the file and line. With `latest_by`,
    only the last record of each id is kept (a retried record replaces the failed one)."""
    out = [obj for _, obj in json_lines(path, lambda n, e: ValueError(f"{path}:{n}: corrupt record ({e.msg})"))]
    if latest_by is not None:
        out = list({str(r[latest_by]): r for r in out}.values())
    return out


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    """A stage's summary as a two-column table on the console."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for key, value in rows:
        table.add_row(key, str(value))
    Console().print(table)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())


def running_mean(key: str, label: str, percent: bool = False) -> Callable[[dict[str, Any]], str]:
    """A `run_pool` status: the mean of `key` over the records finished so far in this sitting (a resumed run's
    earlier records are not in it). The last record's own score, shown before, read as the run's: "EM 0" after
    a pass whose mean EM was 3 %."""
    total, n = 0.0, 0

    def status(record: dict[str, Any]) -> str:
        nonlocal total, n
        total, n = total + float(record.get(key) or 0.0), n + 1
        mean = total / n
        return f"{label} {100 * mean:.1f} %" if percent else f"{label} {mean:.2f}"

    return status


async def run_pool(items: Iterable[Any], worker: Callable[[Any], Awaitable[dict[str, Any]]],
                   out: JsonlAppender, concurrency: int, description: str,
                   status: Callable[[dict[str, Any]], str] | None = None, lockstep: Any = None) -> int:
    """Run `worker` on every item, at most `concurrency` at once, appending each record as it finishes.

    Local backends batch the concurrent requests; servers see `concurrency` requests in flight. With
    `lockstep` (the backend each item's turns go to), a batch waits for a turn of every item in flight.
    Returns the number of records written. Items must already exclude the finished ones.
    """
    items = list(items)
    sem = asyncio.Semaphore(concurrency)
    unfinished = len(items)

    async def one(item):
        nonlocal unfinished
        async with sem:
            try:
                return await worker(item)
            finally:
                unfinished -= 1
                notify()

    # While items remain, a finished one's place is taken at once: what a batch waits for is the smaller of
    # the pool and what is left (counting the items running would cut a batch in the moment between one
    # ending and the next one's first turn)
    steps = (lockstep.lockstep(lambda: min(concurrency, unfinished)) if lockstep is not None
             else nullcontext(lambda: None))
    written = 0
    with steps as notify, progress_bar() as bar:
        task = bar.add_task(description, total=len(items), status="")
        pending = [asyncio.create_task(one(it)) for it in items]
        try:
            for fut in asyncio.as_completed(pending):
                record = await fut
                out.write(record)
                written += 1
                bar.update(task, advance=1, status=status(record) if status else "")
        finally:
            for t in pending:
                t.cancel()
    return written


def jsonl_log_callback(path: Path, rollouts: Path | None = None):
    """A transformers TrainerCallback that appends every log (loss, rewards, KL...) to `path` as JSON lines,
    beside what `report_to` sends to TensorBoard. Each line also holds `wall_s`, the seconds since this
    process began training: with a line a step (mtr's configs log every step), the differences are step times
    (SFT's logs have none of their own). On a resume, the lines past the checkpoint go (the steps are done
    again), from `path` and from `rollouts` (a log written before each step's update, whose `step` is the
    steps done when it was written), and `wall_s` goes on from the last line kept; with no checkpoint to
    resume from (a run stopped before its first save), every line an earlier attempt wrote goes."""
    import time

    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        start = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            # resumed from a checkpoint, or begun again (step 0) over the lines of an attempt stopped before
            # its first save: those steps are all done again, and would otherwise stand twice in the curve
            if state.is_world_process_zero:
                kept = drop_steps_from(Path(path), state.global_step + 1)
                if rollouts is not None:
                    drop_steps_from(Path(rollouts), state.global_step)
                self.start -= next((r["wall_s"] for r in reversed(kept) if "wall_s" in r), 0.0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            # every rank logs; one writes (the others' lines would interleave with its own)
            if logs and state.is_world_process_zero:
                wall = {"wall_s": round(time.perf_counter() - self.start, 3)} if self.start is not None else {}
                with Path(path).open("a") as f:
                    f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs, **wall}) + "\n")

    return JsonlLog()
