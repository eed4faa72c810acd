"""Training on several processes (`accelerate launch`, `torchrun`): what only the main process does.

SFT and GRPO run once per rank under a launcher. Their output directory is shared, so the files mtr writes
itself (the manifest, GRPO's tools.jsonl, log.jsonl, samples.jsonl, train_stats.json) are written by the
main process alone: on every rank they would race (an `--overwrite` deleting what another rank just
wrote, every rank paying the ToolMaker for the same questions and appending them to one file). The
weights are saved through the trainer, which gathers shards (ZeRO-3, FSDP) and writes on the main process.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def is_main(args: Any) -> bool:
    """Whether this is the main process of the run; `args` is the trainer's TrainingArguments (creating it
    sets up the processes, so it exists before the trainer does)."""
    return args.process_index == 0


def on_main(args: Any, fn: Callable[[], T]) -> T:
    """`fn()` on the main process only; every rank gets its result, or raises its exception.

    A failure on the main process (a refused run directory, a ToolMaker server down) is raised on every
    rank with the same message, instead of leaving the other ranks waiting at a barrier until the
    launcher's timeout."""
    if args.world_size == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    payload: list[Any] = [None]
    error: Exception | None = None
    if is_main(args):
        try:
            payload = [(True, fn())]
        except Exception as e:  # noqa: BLE001 - re-raised below, on this rank and on the others
            error = e
            payload = [(False, e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {e}"))]
    broadcast_object_list(payload, from_process=0)
    if error is not None:
        raise error
    ok, value = payload[0]
    if not ok:
        raise value
    return value


def _picklable(obj: Any) -> bool:
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:  # noqa: BLE001 - anything that does not survive the trip is sent as text
        return False
    return True
