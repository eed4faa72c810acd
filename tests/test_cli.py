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
    assert r.stdout.strip() and "tokens in" in r.stderr and "finish=" in r.stderr


def test_prompts_shows_each_role():
    for role, needle in (("toolmaker", "You design tools"), ("toolactor", "You are simulating the tool"),
                         ("autoagent", "one tool call per turn"), ("policy", "<tool_call>")):
        r = runner.invoke(app, ["prompts", role])
        assert r.exit_code == 0 and needle in r.output
    r = runner.invoke(app, ["prompts", "judge"])
    assert r.exit_code == 2 and "unknown prompt 'judge'" in r.output


def test_synth_bad_data_is_one_line(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text('{"id": "a", "question": "q", "answers": ["x"]}\n{oops\n')
    r = runner.invoke(app, ["synth", "--data", str(p), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "qa.jsonl:2: malformed JSON" in r.output and "Traceback" not in r.output, r.output


def test_an_error_names_a_file_whose_name_looks_like_markup(tmp_path):
    p = tmp_path / "qa[bold]2.jsonl"  # rich would take "[bold]" for a style and print "qa2.jsonl"
    p.write_text("{oops\n")
    r = runner.invoke(app, ["synth", "--data", str(p), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and f"{p}:1: malformed JSON" in r.output, r.output


def test_sft_and_grpo_bad_input_is_one_line(tmp_path):
    empty = tmp_path / "sft.jsonl"
    empty.write_text("")
    r = runner.invoke(app, ["sft", "--data", str(empty), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no trainable rows" in r.output
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": "a", "question": "q", "answers": ["x"]}\n')
    r = runner.invoke(app, ["grpo", "--data", str(qa), "--init", str(tmp_path), "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "not a Hugging Face checkpoint directory" in r.output


@pytest.mark.parametrize("name, default, chosen", [
    ("OMP_WAIT_POLICY", "PASSIVE", "ACTIVE"),  # OpenMP waits passively
    ("XLA_PYTHON_CLIENT_PREALLOCATE", "false", "true"),  # JAX, woken by bm25s, does not take 75 % of the GPU
])
def test_importing_mtr_sets_its_process_defaults_unless_the_user_chose(name, default, chosen):
    code = f"import mtr, os; print(os.environ[{name!r}])"
    env = {k: v for k, v in os.environ.items() if k != name}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == default
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, name: chosen})
    assert out.stdout.strip() == chosen


def test_importing_mtr_keeps_models_off_the_hubs_kernels_unless_the_user_chose(tmp_path):
    """A model loaded after `import mtr` is not kernelized (on a GPU that downloads kernels at training's first
    step); USE_HUB_KERNELS=YES, the user's choice, turns them back on."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=64)).save_pretrained(tmp_path)
    code = ("import mtr; from transformers import AutoModelForCausalLM; "
            f"print(AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).use_kernels)")
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr[-500:]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "USE_HUB_KERNELS": "YES"})
    assert out.stdout.strip() == "True", out.stderr[-500:]


def test_importing_mtr_turns_hub_telemetry_off():
    code = ("import mtr; from huggingface_hub import constants; "
            "print(constants.HF_HUB_DISABLE_TELEMETRY)")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "True"
