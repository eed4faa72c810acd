"""Peak resident memory (RSS) of this process, per stage.

`getrusage`'s `ru_maxrss` only ever grows, so in `mtr run`, where every stage shares one process, it would
report the largest stage so far for each later one. On Linux the kernel's high-water mark (`VmHWM`) can be
reset by writing 5 to `/proc/self/clear_refs`; each stage resets it at its start and reads it at its end.
Elsewhere the lifetime peak is reported, and `reset_peak` says that it could not reset.
"""

from __future__ import annotations

import ctypes
import resource
import sys
from pathlib import Path
from typing import Any


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The peak RSS since the last `reset_peak` (Linux), else since the process started, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, kB on Linux


_LIBC: Any = None


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's `malloc_trim`; nothing elsewhere).

    Generation on a CPU allocates key/value and attention tensors of a few MB each that grow with every
    token; glibc serves those from its heap (below its 32 MB mmap threshold) and keeps the freed pages, so
    an evaluation's RSS climbed batch after batch. A trim after each batch cut its peak by more than a third
    for a few % of time (benchmarks/bench_eval_memory.py, docs/performance.md)."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (musl has no malloc_trim)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def release_memory() -> None:
    """Give what the last stage freed back to the system before the next stage loads its model.

    Python's collector frees the stage's objects, but glibc keeps freed heap pages for reuse, so without a
    trim the process carries the previous stage's peak into the next one (the demo's evaluation sat on 7.5 GB
    left from training). `malloc_trim(0)` returns the free pages at the top and in the middle of the heap."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    trim_heap()
