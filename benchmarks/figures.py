"""Figures quoted in the README and the docs, tied to the results files they come from.

A quoted figure is written as

    <!--fig:demo:live-tools.runs.0.wall_s:.0f-->298<!--/fig-->

(invisible in the rendered page): the results file (`benchmarks/results/demo.json`), the dotted path of the
value in it (list items by index), and how it is printed (a format spec, optionally divided: `.1f/1024`).
`tests/test_figures.py` checks every one against its file; this script rewrites them after a benchmark:

    .venv/bin/python benchmarks/figures.py            # check (exit 1 on a stale figure)
    .venv/bin/python benchmarks/figures.py --update   # rewrite the quoted figures from the results files
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIG = re.compile(r"<!--fig:(?P<file>[\w.-]+):(?P<path>[^:>]+):(?P<fmt>[^>]*?)-->(?P<text>.*?)<!--/fig-->")


def value_at(file: str, path: str) -> object:
    node: object = json.loads((RESULTS / f"{file}.json").read_text())
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
    return node


def render(value: object, fmt: str) -> str:
    spec, _, divisor = fmt.partition("/")
    if divisor:
        value = float(value) / float(divisor)  # type: ignore[arg-type]
    return format(value, spec) if spec else str(value)


def figures(text: str) -> list[re.Match]:
    return list(FIG.finditer(text))


def check(paths: list[Path] = DOCS) -> list[str]:
    """Every quoted figure that differs from its results file (or names a value that is not there), and every
    figure written as a template (`{f(...)}`, as the docs' generator writes them) that nothing rendered."""
    problems = []
    for path in paths:
        text = path.read_text()
        for m in re.finditer(r"\{f\([^}]*\)\}", text):
            problems.append(f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: an unrendered figure {m[0]!r}")
        for m in figures(text):
            try:
                want = render(value_at(m["file"], m["path"]), m["fmt"])
            except (OSError, KeyError, IndexError, ValueError, TypeError) as e:
                problems.append(f"{path.name}: {m['file']}:{m['path']}: {type(e).__name__}: {e}")
                continue
            if m["text"] != want:
                problems.append(f"{path.name}: {m['file']}:{m['path']} says {m['text']!r}, the file {want!r}")
    return problems


def update(paths: list[Path] = DOCS) -> int:
    changed = 0
    for path in paths:
        text = path.read_text()

        def fresh(m: re.Match) -> str:
            return m.group(0).replace(f"-->{m['text']}<!--/fig-->",
                                      f"-->{render(value_at(m['file'], m['path']), m['fmt'])}<!--/fig-->")

        new = FIG.sub(fresh, text)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--update", action="store_true")
    args = ap.parse_args()
    if args.update:
        print(f"rewrote {update()} file(s)")
    problems = check()
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
