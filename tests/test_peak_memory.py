import sys

import pytest

from mtr.peak_memory import peak_rss_mb, release_memory, reset_peak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the high-water mark is reset through /proc")
def test_each_stage_sees_its_own_peak():
    release_memory()  # imports what it needs (torch) before the baseline is taken
    assert reset_peak()
    base = peak_rss_mb()
    block = bytearray(300 << 20)  # 300 MB, touched
    for i in range(0, len(block), 4096):
        block[i] = 1
    grown = peak_rss_mb()
    assert grown - base > 250
    del block
    release_memory()
    assert reset_peak()
    assert peak_rss_mb() < grown - 250  # the next stage does not inherit the previous one's peak


TRIM_CHILD = """
from pathlib import Path
from mtr.peak_memory import trim_heap
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
big = bytearray(30 << 20); del big  # glibc now serves blocks up to 30 MB from its heap, as in generation
chunks = [bytearray(4 << 20) for _ in range(25)]
keep = bytearray(1024)
del chunks
before = rss(); trim_heap(); print(before, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_heap_gives_freed_heap_pages_back():
    import subprocess

    out = subprocess.run([sys.executable, "-c", TRIM_CHILD], capture_output=True, text=True, check=True).stdout
    before, after = map(int, out.split())
    assert before - after >= 20, (before, after)  # most of the 100 MB of freed 4 MB blocks that the heap kept
