"""Run-directory bookkeeping: the stages, their manifests, done marks, fresh starts and resumes.

Every stage writes into its own directory:

- `manifest.json`: the stage's own config (its section, the roles it uses, the seed), the versions, the
  inputs' hashes, the git commit. A directory holding a run of another config is refused unless
  `--overwrite`, so that a resume never mixes two runs in one output.
- `stage_done.json` (in `mtr run`): written when the stage finished; wall time and peak memory.

`mtr run` re-runs a stage whose recorded config differs from the current one, and every stage after it;
never the ones before. A setting added to mtr after a stage was recorded is no difference while it holds
its default (`same_settings`): upgrading mtr does not restart finished work.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from mtr.config import Config
from mtr.embedded import file_sha256
from mtr.jsonl import write_text_atomic

DONE = "stage_done.json"
PACKAGES = ("mtr", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "xgrammar",
            "llama_cpp_python", "openai", "pydantic")


class RunDirError(ValueError):
    """An output directory holds a different run."""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                           cwd=Path(__file__).resolve().parent)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def source_commit(root: Path) -> str:
    """HEAD's short hash for a benchmark's results, marked `+uncommitted src` when `root`'s src/ differs from it
    (what ran is then not that commit)."""
    commit = (git_commit() or "?")[:7]
    try:
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
                                 capture_output=True, text=True, timeout=5, cwd=root).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return commit
    return commit + ("+uncommitted src" if changed else "")


def write_manifest(out_dir: Path, stage: str, config: dict[str, Any], inputs: dict[str, Path],
                   extra: dict[str, Any] | None = None, overwrite: bool = False, inputs_may_grow: bool = False,
                   limits: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write `manifest.json`; `config` is what the stage reads (`Config.stage_config`). A directory already
    holding a run of another config or data is refused unless `overwrite`; with `inputs_may_grow` (a stage
    that adds records for new inputs beside the old ones) only another config is refused. `limits` names
    config values ("section.key") that say which inputs a stage takes: the first N (a number), or each of a
    list (e.g. evaluation's modes). One may grow on a resume (the records done stay, the new inputs are
    added), never shrink (the records beyond it would stay in the output)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"stage": stage, "config": config,
                "inputs": {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in inputs.items()},
                **(extra or {})}
    path = out_dir / "manifest.json"
    if path.exists() and not overwrite:
        old = read_manifest(out_dir)
        grown = _check_limits(out_dir, old.get("config") or {}, config, limits)
        for key in ("stage", "config") if inputs_may_grow else ("stage", "config", "inputs", *(extra or {})):
            if not (same_settings(grown, config) if key == "config" else old.get(key) == manifest[key]):
                raise RunDirError(f"{out_dir} holds a different {old.get('stage', '?')} run (its {key} differs); "
                                  "use another --out, or --overwrite to start afresh")
        manifest["created"] = old.get("created")
    manifest.update(created=manifest.get("created") or _now(), updated=_now(), versions=versions(),
                    git_commit=git_commit(), argv=sys.argv)
    write_text_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def _check_limits(out_dir: Path, old: dict[str, Any], new: dict[str, Any], limits: tuple[str, ...]
                  ) -> dict[str, Any]:
    """The old config with each of `limits` set to the new value where that value only grew; a limit that
    shrank is refused."""
    for path in limits:
        before, after = _lookup(old, path), _lookup(new, path)
        if before is _MISSING or after is _MISSING or before == after:
            continue
        if not _larger(after, before):
            raise RunDirError(f"{out_dir} holds a run with {path}={before}: a smaller {path} ({after}) would "
                              "keep its records beyond it; use another --out, or --overwrite to start afresh")
        old = _replaced(old, path, after)
    return old


def limit_grew(old: dict[str, Any], new: dict[str, Any], *paths: str) -> bool:
    """Whether `new` is `old` with some of the limits at `paths` ("section.key": a first-N limit, None: no limit,
    or a list of inputs) grown and nothing else changed: a stage that takes those inputs and skips those done
    then goes on from `old`'s output."""
    grown = False
    for path in paths:
        before, after = _lookup(old, path), _lookup(new, path)
        if before is _MISSING or after is _MISSING or before == after:
            continue
        if not _larger(after, before):
            return False
        old, grown = _replaced(old, path, after), True
    return grown and same_settings(old, new)


def inputs_shrank(old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
    """Whether `new` is `old` with the list of inputs at `path` ("section.key": modes...) cut to some of them and
    nothing else changed (up to settings added to mtr since `old` was recorded, at their defaults): a stage
    finished on `old` then holds the whole of `new`'s output."""
    before, after = _lookup(old, path), _lookup(new, path)
    if not (isinstance(before, list) and isinstance(after, list) and set(after) < set(before)):
        return False
    return same_settings(_replaced(old, path, after), new)


_MISSING = object()


def _larger(after: Any, before: Any) -> bool:
    if isinstance(before, list):  # a list of inputs (modes...): grown when it keeps every one and adds some
        return isinstance(after, list) and set(before) < set(after)
    return before is not None and (after is None or (after is not _MISSING and after > before))


def _lookup(d: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return _MISSING
        d = d[key]
    return d


def _replaced(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    return {**d, head: _replaced(d[head], rest, value) if rest else value}


def same_settings(old: Any, new: Any, model: type[BaseModel] | None = Config) -> bool:
    """Whether settings recorded as `old` are `new`, up to settings added to mtr since `old` was recorded that
    hold their default in `new`: the stage then ran as it would run now, so an upgrade that adds an option
    does not restart finished stages. `model` is the pydantic model whose dump `new` is (by default the whole
    Config, of which a stage's config holds some sections); below it, its fields' own models. A key that is not
    one of the model's settings, a setting dropped or any other change: not the same."""
    if old == new:
        return True
    if not (isinstance(old, dict) and isinstance(new, dict)) or model is None or set(old) - set(new):
        return False
    for key, value in new.items():
        if key in old and old[key] == value:
            continue
        field = model.model_fields.get(key)
        if field is None:
            return False
        if key not in old:
            try:
                default = to_jsonable_python(field.get_default(call_default_factory=True))
            except Exception:  # a default built from other fields: not knowable here, so not the same
                return False
            if default != value:
                return False
            continue
        sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        if not same_settings(old[key], value, sub):
            return False
    return True


def same_identity(old: Any, new: dict[str, Any]) -> bool:
    """Whether a finished stage's recorded identity is `new`: its `config` the same settings (`same_settings`),
    everything else (inputs' hashes, limits, upstream checkpoints) equal."""
    return isinstance(old, dict) and old.keys() == new.keys() and all(
        same_settings(old[k], v) if k == "config" else old[k] == v for k, v in new.items())


def read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((out_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def start_fresh(out: Path, files: tuple[str, ...]) -> None:
    """`--overwrite`: remove what an earlier run of the stage wrote (its checkpoints and `files`)."""
    if not out.exists():
        return
    for p in out.glob("checkpoint-*"):
        shutil.rmtree(p)
    for name in (*files, "manifest.json", DONE):
        (out / name).unlink(missing_ok=True)


def last_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def stage_done(stage_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((stage_dir / DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def checkpoint_stamp(path: Path) -> str | None:
    """When the stage that wrote the checkpoint at `path` finished (its stage_done.json), or None for a
    checkpoint no stage wrote (the embedded model, a user's own). A later stage's identity holds this stamp
    instead of the path, so that it runs again when its input was trained again in the same place."""
    return (stage_done(Path(path)) or {}).get("finished")


def mark_done(stage_dir: Path, wall_s: float, **extra: Any) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stage_dir / DONE, json.dumps({"wall_s": wall_s, "finished": _now(), **extra}, indent=2))
