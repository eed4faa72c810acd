import pytest

from mtr.config import ConfigError, load_config, parse_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_preset_is_embedded_everywhere():
    cfg = load_config()
    for role in ("toolmaker", "autoagent", "toolactor", "policy", "reference"):
        assert cfg.role(role).backend == "hf" and cfg.role(role).model == "embedded"


def test_gpu_example_parses():
    from mtr.config import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG.parent / "gpu-vllm.yaml")
    assert cfg.role("toolactor").backend == "openai"
    assert cfg.role("toolactor").base_url.endswith("/v1")


@pytest.mark.parametrize("text,expected", [
    ("roles:\n  policy: {backend: vllm}\n", "roles.policy.backend: Input should be 'hf', 'openai' or 'llamacpp'"),
    ("roles:\n  judge: {backend: hf}\n", "roles.judge: unknown field"),
    ("roles:\n  policy: {model: ''}\n", "roles.policy.model: String should have at least 1 character"),
    ("roles:\n  policy: {max_tokens: lots}\n", "roles.policy.max_tokens: Input should be a valid integer"),
    ("roles:\n  policy: {backend: openai}\n", "roles.policy: Value error, the openai backend needs `model`"),
    ("seed: [1]\n", "seed: Input should be a valid integer"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("roles: {policy: {backend: hf\n", "not valid YAML"),
])
def test_bad_config_is_one_line_naming_the_field(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(p))
    assert expected in msg


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/c.yaml")


def test_unknown_role_lookup():
    with pytest.raises(ConfigError, match="unknown role 'judge'"):
        parse_config({}).role("judge")


@pytest.mark.parametrize("name,kind", [("zero3.yaml", "DEEPSPEED"), ("fsdp.yaml", "FSDP")])
def test_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    from mtr.config import DEFAULT_CONFIG

    cc = ClusterConfig.from_yaml_file(DEFAULT_CONFIG.parent / "accelerate" / name)
    assert cc.distributed_type.value == kind and cc.mixed_precision == "bf16" and cc.num_processes == 8


def test_stage_presets_parse_and_budgets_are_distinct():
    from mtr.config import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG.parent / "grpo-cpu.yaml")
    assert cfg.grpo.num_generations == 4 and cfg.grpo.train_steps == 12 and cfg.grpo.max_steps == 2
    assert cfg.grpo.lora and cfg.grpo.peft_config().r == 16 and cfg.sft.peft_config() is None
    gpu = load_config(DEFAULT_CONFIG.parent / "gpu-vllm.yaml")
    assert gpu.grpo.num_generations == 8 and gpu.sft.bf16 and gpu.grpo.bf16 and gpu.grpo.use_vllm


@pytest.mark.parametrize("text,expected", [
    ("grpo: {num_generations: 3, per_device_train_batch_size: 8}\n", "must be a multiple of num_generations"),
    ("grpo: {num_generations: 4, per_device_train_batch_size: 1, gradient_accumulation_steps: 3}\n",
     "gradient_accumulation_steps (3) must be a multiple of num_generations (4)"),
    ("grpo: {reward_weights: {speed: 1.0}}\n", "unknown component(s) ['speed']"),
    ("sft: {too_long: ignore}\n", "sft.too_long"),
    ("eval: {modes: [tools-maybe]}\n", "eval.modes.0"),
    ("synth: {teacher: oracle}\n", "synth.teacher"),
])
def test_bad_stage_settings(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,stage,expected", [
    ("", "synth", 16),  # every role on hf: batched
    ("roles:\n  toolmaker: {backend: llamacpp}\n  autoagent: {backend: llamacpp}\n  toolactor: {backend: llamacpp}\n",
     "synth", 1),
    # the AutoAgent on hf batches, so episodes in flight pay even with the other roles on llama.cpp
    ("roles:\n  toolmaker: {backend: llamacpp}\n  toolactor: {backend: llamacpp}\n", "synth", 16),
    # with the scripted teacher, ToolMaker and ToolActor requests in flight run back to back on shared prefixes
    ("synth: {teacher: scripted}\nroles:\n  toolmaker: {backend: llamacpp}\n  toolactor: {backend: llamacpp, "
     "n_slots: 6}\n", "synth", 16),
    ("synth: {concurrency: 8}\nroles:\n  toolmaker: {backend: llamacpp}\n  autoagent: {backend: llamacpp}\n"
     "  toolactor: {backend: llamacpp}\n", "synth", 8),  # a number is taken as given
    ("roles:\n  toolmaker: {backend: llamacpp}\n  toolactor: {backend: llamacpp}\n", "eval", 16),  # policy on hf
    ("roles:\n  toolmaker: {backend: llamacpp}\n  toolactor: {backend: llamacpp}\n  policy: {backend: llamacpp}\n",
     "eval", 1),
])
def test_auto_concurrency_is_one_episode_at_a_time_only_when_every_role_is_on_llamacpp(tmp_path, text, stage,
                                                                                      expected):
    assert load_config(write(tmp_path, text)).episodes_in_flight(stage) == expected


def test_demo_preset_synthesises_many_episodes_in_flight():
    from mtr.config import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG.parent / "demo.yaml")
    assert cfg.synth.teacher == "scripted" and cfg.role("toolactor").backend == "llamacpp"
    assert cfg.episodes_in_flight("synth") == 16
    assert cfg.episodes_in_flight("eval") == 16  # the policy is on hf


@pytest.mark.parametrize("value", ["0", "many"])
def test_bad_concurrency_is_one_line(tmp_path, value):
    with pytest.raises(ConfigError, match=r"synth\.concurrency"):
        load_config(write(tmp_path, f"synth: {{concurrency: {value}}}\n"))
