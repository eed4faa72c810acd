"""QA data: strict JSONL loading (errors name the file and line) and the named benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from mtr.jsonl import json_lines
from mtr.trace import QAExample

REPO_ROOT = Path(__file__).resolve().parents[2]
# Each name's files in order of preference; the second HotpotQA file is the slice this repository ships.
BENCHMARKS = {
    "hotpotqa": ("hotpotqa_dev_500.jsonl", "hotpotqa_dev_first40.jsonl"),
    "2wiki": ("2wiki_dev_500.jsonl",),
    "musique": ("musique_dev_500.jsonl",),
    "bamboogle": ("bamboogle.jsonl",),
}


class DataError(ValueError):
    """Bad QA data; one line naming the file, the line and the field."""


def data_dirs() -> list[Path]:
    """Where named benchmarks are looked for: $MTR_DATA_DIR, the shared data beside the checkout, the copy
    this repository ships (data/benchmarks: Bamboogle and a HotpotQA slice)."""
    dirs = [Path(os.environ["MTR_DATA_DIR"])] if os.environ.get("MTR_DATA_DIR") else []
    dirs += [REPO_ROOT.parent / "shared" / "data" / "benchmarks", REPO_ROOT / "data" / "benchmarks"]
    return dirs


def resolve_benchmark(name_or_path: str) -> Path:
    if name_or_path in BENCHMARKS:
        for name in BENCHMARKS[name_or_path]:
            for d in data_dirs():
                if (d / name).is_file():
                    return d / name
        raise DataError(f"benchmark {name_or_path!r}: {BENCHMARKS[name_or_path][0]} not found in "
                        f"{', '.join(str(d) for d in data_dirs())}; set MTR_DATA_DIR")
    p = Path(name_or_path)
    if p.suffix == ".jsonl" or p.exists():
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        return p
    raise DataError(f"unknown benchmark {name_or_path!r}; named benchmarks are {', '.join(BENCHMARKS)}, "
                    "or give a path to a QA .jsonl file")


def load_qa(path: str | Path, limit: int | None = None) -> list[QAExample]:
    """Read a QA JSONL file (`id`, `question`, `answers`, optional `context`), strictly.

    Every problem is a DataError naming `file:line` and the field: malformed JSON, a record that is not an
    object, a missing or empty question/answers, duplicate ids, an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    examples: list[QAExample] = []
    seen: dict[str, int] = {}
    for lineno, obj in json_lines(path, lambda n, e: DataError(f"{path}:{n}: malformed JSON ({e.msg} at column "
                                                               f"{e.colno})")):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        try:
            ex = QAExample.model_validate(obj)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(record)"
            raise DataError(f"{path}:{lineno}: field {field}: {err['msg']}") from None
        if ex.id in seen:
            raise DataError(f"{path}:{lineno}: duplicate id {ex.id!r} (first on line {seen[ex.id]})")
        seen[ex.id] = lineno
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(f"{path}: no QA records (empty file)")
    return examples
