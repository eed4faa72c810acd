import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mtr.cli import app

runner = CliRunner()


def test_help_lists_only_working_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("models", "chat", "demo"):
        assert cmd in r.output


def test_unknown_role_is_one_line_error():
    r = runner.invoke(app, ["chat", "judge", "hi"])
    assert r.exit_code == 2
    assert "unknown role 'judge'" in r.output


def test_bad_config_is_one_line_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("roles:\n  policy: {backend: vllm}\n")
    r = runner.invoke(app, ["models", "--config", str(p)])
    assert r.exit_code == 2
    assert "roles.policy.backend" in r.output and "Traceback" not in r.output


def test_unreachable_server_in_models_table(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("roles:\n  toolactor: {backend: openai, model: m, base_url: 'http://127.0.0.1:9/v1', "
                 "max_retries: 0, timeout_s: 2}\n")
    r = runner.invoke(app, ["models", "--config", str(p), "--no-check"])
    assert r.exit_code == 0 and "openai:m@http://127.0.0.1:9/v1" in r.output
    r = runner.invoke(app, ["chat", "toolactor", "hi", "--config", str(p)])
    assert r.exit_code == 2 and "cannot reach the server" in r.output


@pytest.mark.model
def test_chat_with_embedded_model():
    # a real subprocess: the installed entry point, as a user runs it
    r = subprocess.run([sys.executable, "-m", "mtr.cli", "chat", "policy", "What is the capital of France?",
                        "--temperature", "0", "--max-tokens", "12"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
