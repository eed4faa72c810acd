import json

import pytest

from mtr.checkpoints import load_tokenizer, policy_checkpoint
from mtr.config import Config
from mtr.rundir import RunDirError
from mtr.stages.sft import SFTDataError, read_sft_rows, train_sft

from test_trace import two_call_trace


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(policy_checkpoint(Config()))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stored(trace):
    return trace.to_conversation(for_storage=True)


def test_trainer_labels_cover_assistant_tokens_only(tok, tmp_path):
    """The labels SFTTrainer builds: every observation token masked, every assistant token trained."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    trace = two_call_trace()
    model = AutoModelForCausalLM.from_pretrained(policy_checkpoint(Config()))
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, report_to=[], max_length=2048)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([stored(trace)]),
                         processing_class=tok)
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    trained = tok.decode([i for i, l in zip(ids, labels) if l != -100])
    masked = tok.decode([i for i, l in zip(ids, labels) if l == -100])
    assert trained == "".join(step.text() + "<|im_end|>" for step in trace.steps)
    for step in trace.steps:
        if step.observation:
            assert step.observation in masked and step.observation not in trained
    assert trace.question in masked and "# Tools" in masked


def test_bad_sft_files(tok, tmp_path):
    with pytest.raises(SFTDataError, match="no trainable rows"):
        read_sft_rows(write_rows(tmp_path / "empty.jsonl", []), tok, 1024, "drop")
    no_assistant = {"messages": [{"role": "user", "content": "hi"}], "tools": "[]"}
    with pytest.raises(SFTDataError, match="2 without assistant turns"):
        read_sft_rows(write_rows(tmp_path / "a.jsonl", [no_assistant, no_assistant]), tok, 1024, "drop")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(stored(two_call_trace())) + "\n{not json\n")
    with pytest.raises(SFTDataError, match="bad.jsonl:2: malformed JSON"):
        read_sft_rows(bad, tok, 1024, "drop")
    with pytest.raises(SFTDataError, match="bad.jsonl:1: field messages"):
        read_sft_rows(write_rows(tmp_path / "bad.jsonl", [{"text": "x"}]), tok, 1024, "drop")


def test_too_long_rows_are_counted(tok, tmp_path):
    path = write_rows(tmp_path / "s.jsonl", [stored(two_call_trace()), {"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "<answer>a</answer>"}]}])
    rows, report = read_sft_rows(path, tok, 100, "drop")
    assert len(rows) == 1 and report["too_long_dropped"] == 1
    rows, report = read_sft_rows(path, tok, 100, "truncate")
    assert len(rows) == 2 and report["too_long_truncated"] == 1


def tiny_cfg(lora=False, **trl):
    cfg = Config()
    # a checkpoint with its optimizer is 1.6 GB: keep one
    cfg.sft.trl = {"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 1, "save_total_limit": 1,
                   "report_to": [], **trl}
    cfg.sft.lora = {"r": 16, "lora_alpha": 32} if lora else None
    return cfg


@pytest.mark.model
def test_full_finetune_resume_and_checkpoint_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    data = write_rows(tmp_path / "sft.jsonl", [stored(two_call_trace())] * 4)
    out = tmp_path / "out"
    stats = train_sft(tiny_cfg(), data, out)
    assert stats["steps"] == 2 and stats["loss_first"] is not None and stats["tokens_per_s"] > 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2]
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-1").exists()  # save_total_limit reaches TRL
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size > 0
    tok = load_tokenizer(out)
    assert "{%- generation -%}" in tok.chat_template
    # --resume continues from the last checkpoint
    cfg = tiny_cfg(max_steps=3)
    with pytest.raises(RunDirError):  # a different config in the same directory is refused...
        train_sft(cfg, data, out, resume=True)
    stats = train_sft(tiny_cfg(), data, out, resume=True)  # ...the same one resumes
    assert stats["resumed_from"].endswith("checkpoint-2")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "sft" and manifest["inputs"]["data"]["sha256"]


@pytest.mark.model
def test_lora_merges_into_a_plain_checkpoint(tmp_path):
    import asyncio

    from mtr.backends import HFBackend, SamplingParams
    from mtr.config import RoleConfig

    data = write_rows(tmp_path / "sft.jsonl", [stored(two_call_trace())] * 2)
    out = tmp_path / "lora"
    stats = train_sft(tiny_cfg(lora=True, max_steps=1, learning_rate=1e-3), data, out)
    assert stats["lora"] and (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "adapter_config.json").exists()  # the root is a plain, merged checkpoint
    b = HFBackend(RoleConfig(model=str(out)))  # loadable as the policy of every other command
    [c] = asyncio.run(b.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=4)))
    assert c.completion_tokens > 0
