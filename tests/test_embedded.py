import importlib.util

import pytest

from mtr import embedded
from mtr.embedded import EmbeddedModelError, check_gguf, ensure_checkpoint, gguf_path


def test_gguf_is_found_without_importing_the_package():
    p = gguf_path()
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size > 50_000_000


def test_missing_package_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedModelError) as e:
        gguf_path()
    assert "not installed" in str(e.value) and "pip install" in str(e.value) and "\n" not in str(e.value)


def test_corrupt_file_says_how_to_fix(tmp_path):
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"<html>not a model</html>" * 100_000)
    with pytest.raises(EmbeddedModelError, match="corrupt.*pip install --force-reinstall"):
        check_gguf(bad)
    with pytest.raises(EmbeddedModelError, match="missing"):
        check_gguf(tmp_path / "nothing.gguf")


def test_truncated_gguf_fails_conversion_with_one_line(tmp_path, tmp_home, monkeypatch):
    src = gguf_path()
    trunc = tmp_path / src.name
    with src.open("rb") as f:
        trunc.write_bytes(f.read(5_000_000))  # right magic, cut off
    monkeypatch.setattr(embedded, "gguf_path", lambda: trunc)
    with pytest.raises(EmbeddedModelError, match="cannot load embedded model") as e:
        ensure_checkpoint()
    assert "\n" not in str(e.value)
    # nothing half-written is left for a later load to trust
    assert not any(p.name.startswith("SmolLM2") for p in (tmp_home / "models").iterdir())


@pytest.mark.model
def test_conversion_writes_a_plain_checkpoint_once(tmp_home):
    from transformers import AutoModelForCausalLM

    path = ensure_checkpoint()
    assert path.is_relative_to(tmp_home)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime
    assert ensure_checkpoint() == path and (path / "model.safetensors").stat().st_mtime == mtime
    model = AutoModelForCausalLM.from_pretrained(path)  # a plain checkpoint: no gguf_file, no quantizer
    assert getattr(model, "hf_quantizer", None) is None
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
