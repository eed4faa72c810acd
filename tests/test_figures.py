"""Every figure the README and the docs quote comes from a results file in the repository, and says what the
file says (benchmarks/figures.py)."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import figures  # noqa: E402


def test_quoted_figures_match_their_results_files():
    assert figures.check() == []


def test_the_readmes_figures_are_all_tied_to_results():
    readme = (ROOT / "README.md").read_text()
    assert len(figures.figures(readme)) >= 20
    section = readme[readme.index("## Measured on this machine"):readme.index("Throughput levers")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    for row in rows:
        quoted = figures.FIG.sub("", row.rsplit("|", 2)[-2])
        assert not re.search(r"\d", quoted), f"a figure not read from a results file: {row[:80]}"
    demo = readme[readme.index("Stage times and peak memory below"):readme.index("A 135M model does not answer")]
    assert not re.search(r"\d+ s\b|\d\.\d GB|\| \d", figures.FIG.sub("", demo)), "the demo's figures must be tied"


def test_a_stale_figure_is_caught(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("wall <!--fig:demo:live-tools.runs.0.wall_s:.0f-->1<!--/fig--> s, "
                   "<!--fig:demo:no.such.key:.0f-->2<!--/fig-->")
    problems = figures.check([doc])
    assert len(problems) == 2 and "says '1'" in problems[0] and "KeyError" in problems[1]
    # a figure left as the generator's template, never rendered
    doc.write_text("a gain of\n{f(P3+'.comparisons.12.f1.0', '+.1f')} F1")
    assert figures.check([doc]) == ["x.md:2: an unrendered figure \"{f(P3+'.comparisons.12.f1.0', '+.1f')}\""]
