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
