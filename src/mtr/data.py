"""QA data: strict JSONL loading (errors name the file and line), the named benchmarks, and the split that
keeps training questions apart from evaluation ones.

The shipped HotpotQA, 2WikiMultihopQA and MuSiQue files are split by question id, deterministically: a
question is in the training split when the first 8 hex digits of sha256("mtr-split|" + id), read as a
fraction, fall below 0.4 (about 40 %), else in the evaluation split. `hotpotqa` names the evaluation split
(what `mtr eval` scores), `hotpotqa-train` the training split (what the presets train on); likewise `2wiki`
and `musique`. Bamboogle has no training split. A split is written once under $MTR_HOME/splits/, in the
source file's order, so the first N questions of a split are the same on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import hashlib

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


SPLIT = {"hotpotqa", "2wiki", "musique"}  # the named benchmarks that have a training split
TRAIN_SHARE = 0.4


class DataError(ValueError):
    """Bad QA data; one line naming the file, the line and the field."""


def data_dirs() -> list[Path]:
    """Where named benchmarks are looked for: $MTR_DATA_DIR, the shared data beside the checkout, the copy
    this repository ships (data/benchmarks: Bamboogle and a HotpotQA slice)."""
    dirs = [Path(os.environ["MTR_DATA_DIR"])] if os.environ.get("MTR_DATA_DIR") else []
    dirs += [REPO_ROOT.parent / "shared" / "data" / "benchmarks", REPO_ROOT / "data" / "benchmarks"]
    return dirs


def split_of(question_id: str) -> str:
    """`train` or `eval`, by the question's id alone (see the module's docstring)."""
    h = hashlib.sha256(f"mtr-split|{question_id}".encode("utf-8")).hexdigest()[:8]
    return "train" if int(h, 16) / 16 ** 8 < TRAIN_SHARE else "eval"


def source_file(name: str) -> Path:
    """The shipped file behind a named benchmark, whole (both splits)."""
    for fname in BENCHMARKS[name]:
        for d in data_dirs():
            if (d / fname).is_file():
                return d / fname
    raise DataError(f"benchmark {name!r}: {BENCHMARKS[name][0]} not found in "
                    f"{', '.join(str(d) for d in data_dirs())}; set MTR_DATA_DIR")


def split_file(source: Path, split: str) -> Path:
    """The `split` half of `source`, written once under $MTR_HOME/splits/ (keyed by the source's content)."""
    from mtr.embedded import file_sha256, mtr_home
    from mtr.jsonl import write_text_atomic

    out = mtr_home() / "splits" / f"{source.stem}.{split}.{file_sha256(source)[:12]}.jsonl"
    if not out.is_file():
        lines = [line for line in source.read_text(encoding="utf-8").splitlines()
                 if line.strip() and split_of(str(_id_of(line, source))) == split]
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, "".join(line + "\n" for line in lines))
    return out


def _id_of(line: str, source: Path) -> str:
    import json

    try:
        return json.loads(line)["id"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{source}: a line without an id cannot be split") from None


def benchmark_names() -> list[str]:
    return [*BENCHMARKS, *(f"{n}-train" for n in BENCHMARKS if n in SPLIT)]


def resolve_benchmark(name_or_path: str) -> Path:
    """A named benchmark (`hotpotqa`: its evaluation split; `hotpotqa-train`: its training split; `bamboogle`:
    the whole file) or a QA file's path, as a path."""
    if name_or_path in BENCHMARKS:
        source = source_file(name_or_path)
        return split_file(source, "eval") if name_or_path in SPLIT else source
    if name_or_path.endswith("-train") and name_or_path.removesuffix("-train") in SPLIT:
        return split_file(source_file(name_or_path.removesuffix("-train")), "train")
    p = Path(name_or_path)
    if p.suffix == ".jsonl" or p.exists():
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        return p
    raise DataError(f"unknown benchmark {name_or_path!r}; named benchmarks are {', '.join(benchmark_names())}, "
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
