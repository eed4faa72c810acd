import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "benchmarks"


@pytest.fixture(scope="session")
def embedded_backend():
    """One `hf` backend on the embedded model for the whole session (loads in a few seconds once cached)."""
    from mtr.backends import HFBackend
    from mtr.config import RoleConfig

    b = HFBackend(RoleConfig(batch_size=8))
    b.load()
    return b


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MTR_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
