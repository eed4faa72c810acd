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
    assert stats["share_prompt"] is True  # micro-batches of 2 traces, packed
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2]
    assert 0 < log[0]["wall_s"] <= log[1]["wall_s"]  # a real trainer calls on_train_begin first
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-1").exists()  # save_total_limit reaches TRL
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size > 0
    tok = load_tokenizer(out)
    assert "{%- generation -%}" in tok.chat_template
    # --resume continues from the last checkpoint
    cfg = tiny_cfg(max_steps=3)
    with pytest.raises(RunDirError):  # a different config in the same directory is refused...
        train_sft(cfg, data, out, resume=True)
    with (out / "log.jsonl").open("a") as f:  # what a crash after the checkpoint left: a step, half a line
        f.write(json.dumps({"step": 3, "loss": 9.0, "wall_s": 99.0}) + '\n{"step": 3, "lo')
    stats = train_sft(tiny_cfg(), data, out, resume=True)  # ...the same one resumes
    assert stats["resumed_from"].endswith("checkpoint-2")
    again = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in again if "loss" in e] == [1, 2]  # the trainer's restored step reached the log
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


def test_shared_prefix_stops_where_rows_differ_or_a_token_is_trained():
    from mtr.shared_prompt import shared_prefix

    u = -100
    rows = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 3, 4]]
    assert shared_prefix(rows, [[u] * 5, [u] * 4, [u] * 4]) == 3
    # the prefix's first label is never predicted; a trained token at 2 ends it there (token 1 predicts it)
    assert shared_prefix(rows, [[7, u, u, u, u], [u] * 4, [u] * 4]) == 3
    assert shared_prefix(rows, [[u] * 5, [u, u, 3, u], [u] * 4]) == 2
    assert shared_prefix([[1, 2], [1, 2]], [[u, u], [u, 2]]) == 1


def tiny_sft_model(vocab_size=60):
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         initializer_range=0.2))  # attention far from uniform: positions count
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer patches its model
    return model.double()


def test_shared_prompt_collator_gives_the_padded_batchs_loss_and_gradients():
    """Three traces that begin with the same 20 untrained tokens, each trained on some of its own (an
    observation's tokens masked between): the packed row's loss and gradients are the padded batch's."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from mtr.shared_prompt import SharedPromptCollator, use_shared_prompt_attention

    model = tiny_sft_model()
    assert use_shared_prompt_attention(model)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 60, (20,), generator=g).tolist()
    examples = []
    for n in (7, 12, 4):
        own = torch.randint(3, 60, (n,), generator=g).tolist()
        labels = [-100] * 20 + [t if i % 5 != 2 else -100 for i, t in enumerate(own)]  # every fifth: untrained
        examples.append({"input_ids": prompt + own, "labels": labels})
    padded = DataCollatorForLanguageModeling(pad_token_id=0)
    packed = SharedPromptCollator(padded)

    def loss_and_grads(batch):
        model.zero_grad()
        inputs = {k: v for k, v in batch.items()}
        out = model(**inputs, fused_lm_head=True)
        counted = batch.get("shift_labels", batch["labels"][:, 1:])
        loss = -out.log_probs.sum() / (counted != -100).sum()  # SFTTrainer's loss with num_items_in_batch
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    want, want_g = loss_and_grads(padded(examples))
    batch = packed(examples)
    assert batch["input_ids"].shape == (1, 19 + 3 + 7 + 12 + 4)  # the prompt but its last token once
    assert "attention_mask" not in batch and batch["shared_prompt"][0] == 19
    got, got_g = loss_and_grads(batch)
    assert torch.allclose(got, want, atol=1e-10)
    assert all((a - b).norm() <= 1e-6 * b.norm() for a, b in zip(got_g, want_g))
    # rows that share less than min_shared tokens go to the padding collator
    other = [{"input_ids": [5] + e["input_ids"][1:], "labels": e["labels"]} for e in examples[:1]] + examples[1:]
    assert "attention_mask" in packed(other) and "attention_mask" in packed(examples[:1])


def test_logprob_tiles_on_a_cpu_give_the_same_loss_and_gradients(monkeypatch):
    """While training on a CPU, TRL's fused head scores a few positions at a time (CPU_LOGPROB_TILE, here 8
    of 3 x 30), with its own tile's loss and gradients; the setting is TRL's again afterwards, also after an
    error, and a GPU keeps TRL's."""
    from types import SimpleNamespace

    import torch
    from trl.kernels import chunked_logprob

    from mtr import training

    model = tiny_sft_model()
    ids = torch.randint(3, 60, (3, 30), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, :10] = -100

    def loss_and_grads():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        loss = -out.log_probs.sum() / (labels[:, 1:] != -100).sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    trl_tile = chunked_logprob.TOKEN_CHUNK_SIZE
    assert trl_tile >= 90  # TRL's tile holds the whole batch: one tile
    want, want_g = loss_and_grads()
    monkeypatch.setattr(training, "CPU_LOGPROB_TILE", 8)
    cpu = SimpleNamespace(device=torch.device("cpu"))
    with training.logprob_tiles(cpu) as tile:
        assert tile == 8 and chunked_logprob.TOKEN_CHUNK_SIZE == 8
        got, got_g = loss_and_grads()
    assert chunked_logprob.TOKEN_CHUNK_SIZE == trl_tile
    assert torch.allclose(got, want, atol=1e-10)
    assert all((a - b).norm() <= 1e-6 * b.norm() for a, b in zip(got_g, want_g))  # TRL sums them in fp32
    with pytest.raises(RuntimeError, match="mid-step"):
        with training.logprob_tiles(cpu):
            raise RuntimeError("mid-step")
    assert chunked_logprob.TOKEN_CHUNK_SIZE == trl_tile
    with training.logprob_tiles(SimpleNamespace(device=torch.device("cuda", 0))) as tile:
        assert tile is None and chunked_logprob.TOKEN_CHUNK_SIZE == trl_tile


def test_sft_trainer_loss_is_the_same_with_the_prompt_shared(tok, tmp_path):
    """TRL's own compute_loss on SFTTrainer's prepared rows (two real traces, the embedded tokenizer's chat
    template): the packed micro-batch reaches the attention with its layout and gives the padded one's loss."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from mtr.shared_prompt import SharedPromptCollator, use_shared_prompt_attention

    first, second = two_call_trace(), two_call_trace()
    second.question, second.steps = "Where did Tokarev teach?", second.steps[:1] + second.steps[2:]
    model = tiny_sft_model(vocab_size=len(tok))
    calls = []
    model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs.get("shared_prompt")), with_kwargs=True)
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True, bf16=False,
                     report_to=[], max_length=2048, per_device_train_batch_size=2)
    trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([stored(first), stored(second)]))
    rows = [trainer.train_dataset[i] for i in range(2)]
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        want = trainer.compute_loss(model, padded(rows), num_items_in_batch=None)
        assert use_shared_prompt_attention(model)
        batch = SharedPromptCollator(padded)(rows)
        got = trainer.compute_loss(model, batch, num_items_in_batch=None)
    shared, segments = batch["shared_prompt"]
    assert shared > 100 and len(segments) == 2 and calls[-1] == (shared, segments) and calls[0] is None
    assert torch.allclose(got, want, atol=1e-9)


def test_the_training_log_holds_the_seconds_since_training_began(tmp_path):
    """Each log line's wall_s: seconds since on_train_begin, rising, so that their differences are step times;
    lines logged before training began (none in practice) carry none rather than a wrong one."""
    from types import SimpleNamespace

    from mtr.jsonl import jsonl_log_callback

    path = tmp_path / "log.jsonl"
    cb = jsonl_log_callback(path)
    state = SimpleNamespace(global_step=0, epoch=0.0, is_world_process_zero=True)
    cb.on_log(None, state, None, logs={"loss": 3.0})
    cb.on_train_begin(None, state, None)
    for step in (1, 2):
        state.global_step = step
        cb.on_log(None, state, None, logs={"loss": 1.0 / step})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert "wall_s" not in lines[0]
    assert [x["step"] for x in lines[1:]] == [1, 2]
    assert 0 <= lines[1]["wall_s"] <= lines[2]["wall_s"] < 60
    # a rank other than the first writes nothing
    cb.on_log(None, SimpleNamespace(global_step=3, epoch=1.0, is_world_process_zero=False), None, logs={"loss": 0.1})
    assert len(path.read_text().splitlines()) == 3


def test_a_resumed_run_logs_each_step_once_and_its_clock_goes_on(tmp_path):
    """Resumed from the checkpoint of step 2, the trainer does step 3 again: the lines the crashed run wrote
    for it (the log's step 3; the rollouts of step 3, written when 2 steps were done) go, a torn last line
    too, and wall_s goes on from step 2's."""
    from types import SimpleNamespace

    from mtr.jsonl import jsonl_log_callback

    log, samples = tmp_path / "log.jsonl", tmp_path / "samples.jsonl"
    log.write_text("".join(json.dumps({"step": s, "reward": s, "wall_s": 100.0 * s}) + "\n" for s in (1, 2, 3))
                   + '{"step": 4, "rew')
    samples.write_text("".join(json.dumps({"step": s, "trace": {}}) + "\n" for s in (0, 1, 2, 2)))
    cb = jsonl_log_callback(log, samples)
    state = SimpleNamespace(global_step=2, epoch=0.5, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    assert [json.loads(x)["step"] for x in samples.read_text().splitlines()] == [0, 1]
    state.global_step = 3
    cb.on_log(None, state, None, logs={"reward": 3.5})
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and lines[-1]["reward"] == 3.5
    assert 200.0 <= lines[-1]["wall_s"] < 260.0
    # another rank leaves the files to the first
    cb = jsonl_log_callback(log, samples)
    cb.on_train_begin(None, SimpleNamespace(global_step=0, epoch=0.0, is_world_process_zero=False), None)
    assert len(log.read_text().splitlines()) == 3 and len(samples.read_text().splitlines()) == 2
    # --resume with no checkpoint (an attempt stopped before its first save) begins again at step 0: every
    # step is done again, so the stopped attempt's lines go (they stood twice in the reward curve before) and
    # the clock starts from zero
    cb = jsonl_log_callback(log, samples)
    state = SimpleNamespace(global_step=0, epoch=0.0, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    assert log.read_text() == "" and samples.read_text() == ""
    state.global_step = 1
    cb.on_log(None, state, None, logs={"reward": 0.5})
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1] and lines[0]["wall_s"] < 60


def test_a_corrupt_line_inside_a_log_is_named_not_dropped(tmp_path):
    from mtr.jsonl import drop_steps_from

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: corrupt record"):
        drop_steps_from(log, 2)
    assert log.read_text().count("\n") == 3  # nothing lost
