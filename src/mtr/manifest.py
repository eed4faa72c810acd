"""The run manifest written beside every stage's outputs: config, versions, data hashes, seed, git commit."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mtr.embedded import file_sha256

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


def write_manifest(out_dir: Path, stage: str, config: dict[str, Any], inputs: dict[str, Path], seed: int,
                   extra: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write `manifest.json`; a directory already holding a run of another config or data is refused
    unless `overwrite`, so that a resume never mixes two runs in one output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"stage": stage, "config": config, "seed": seed,
                "inputs": {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in inputs.items()},
                **(extra or {})}
    path = out_dir / "manifest.json"
    if path.exists() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        for key in ("stage", "config", "seed", "inputs", *(extra or {})):
            if old.get(key) != manifest[key]:
                raise RunDirError(f"{out_dir} holds a different {old.get('stage', '?')} run (its {key} differs); "
                                  "use another --out, or --overwrite to start afresh")
        manifest["created"] = old.get("created")
    manifest.update(created=manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), versions=versions(),
                    git_commit=git_commit(), argv=sys.argv)
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest
