"""SFT and GRPO on two processes (torchrun, gloo on the CPU), as `accelerate launch` runs them on a cluster:
the files of the run directory are written once, the ToolMaker runs once, a failure stops every rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripted import qa_file
from servers import free_port
from test_sft import stored, two_call_trace, write_rows

DRIVER = Path(__file__).with_name("multiproc_train.py")


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """A one-layer random policy with the embedded tokenizer: the processes, not the model, are under test."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mtr.embedded import ensure_checkpoint
    from mtr.checkpoints import load_tokenizer

    tok = load_tokenizer(ensure_checkpoint())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id))
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def launch(stage: str, init: Path, data: Path, out: Path, lora: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(DRIVER), stage, str(init), str(data), str(out),
           "lora" if lora else "full"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400)


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]


def logged_steps(out: Path) -> list[int]:
    return [e["step"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]


@pytest.mark.model
def test_sft_on_two_processes_writes_one_log_and_a_lora_merged_checkpoint(tiny_policy, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_rows(tmp_path / "sft.jsonl", [stored(two_call_trace())] * 4)
    out = tmp_path / "out"
    run = launch("sft", tiny_policy, data, out, lora=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["stats"]["processes"] for r in ranks(out)] == [2, 2]
    assert [r["stats"]["steps"] for r in ranks(out)] == [2, 2]  # 4 rows, one a process a step: 2 steps
    assert logged_steps(out) == [1, 2]  # one line a step, not one per process
    assert json.loads((out / "train_stats.json").read_text())["processes"] == 2
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)  # merged into a plain checkpoint on the main process
    base = AutoModelForCausalLM.from_pretrained(tiny_policy)
    layer, base_layer = merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(layer, base_layer)  # the adapter is in the weights
    # what the trainer set on the policy survives the merge from disk
    assert base.config.pad_token_id is None and merged.config.pad_token_id == AutoTokenizer.from_pretrained(out).pad_token_id


@pytest.mark.model
def test_grpo_on_two_processes_makes_tools_once_for_both(tiny_policy, tmp_path):
    from transformers import AutoModelForCausalLM

    data = qa_file(tmp_path / "qa.jsonl", n=6)
    out = tmp_path / "out"
    run = launch("grpo", tiny_policy, data, out)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = ranks(out)
    # 2 steps x 2 rollouts x 2 processes / groups of 2: 4 questions, their tools made by the main process only
    assert rank0["calls"]["toolmaker"] == 4 and rank1["calls"]["toolmaker"] == 0
    assert rank0["stats"]["questions"] == rank1["stats"]["questions"] == 4
    tools = [json.loads(x)["id"] for x in (out / "tools.jsonl").read_text().splitlines()]
    assert len(tools) == len(set(tools)) == 4
    assert logged_steps(out) == [1, 2]
    samples = [json.loads(x)["step"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert samples == [0, 0]  # two traces of the first step, from the main process alone
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.model
def test_a_toolmaker_failure_on_the_main_process_stops_every_rank(tiny_policy, tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=6)
    run = launch("grpo-down", tiny_policy, data, tmp_path / "out")  # the timeout in `launch` catches a hang
    assert run.returncode != 0
    out = tmp_path / "out"
    for r in (0, 1):  # the main process's failure, raised on both ranks
        assert "the ToolMaker's backend failed on 4 question(s)" in (out / f"rank-{r}.err").read_text()
    assert not list(out.glob("rank-*.json"))
