import warnings

import pytest

from mtr.config import Config, ConfigError, load_config, parse_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_preset_is_embedded_everywhere():
    cfg = load_config()
    for role in ("toolmaker", "autoagent", "toolactor", "policy"):
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
    assert cfg.grpo.trl["num_generations"] == 4 and cfg.grpo.trl["max_steps"] == 12 and cfg.grpo.max_tool_calls == 2
    assert cfg.grpo.lora_on and cfg.grpo.peft_config().r == 16 and cfg.sft.peft_config() is None
    gpu = load_config(DEFAULT_CONFIG.parent / "gpu-vllm.yaml")
    assert gpu.grpo.trl["num_generations"] == 8 and gpu.sft.trl["bf16"] and gpu.grpo.trl["bf16"]
    assert gpu.grpo.trl["use_vllm"]


@pytest.mark.parametrize("text,expected", [
    ("grpo: {trl: {num_generations: 3, per_device_train_batch_size: 8}}\n", "must be a multiple of trl.num_generations"),
    ("grpo: {trl: {num_generations: 4, per_device_train_batch_size: 1, gradient_accumulation_steps: 3}}\n",
     "trl.gradient_accumulation_steps (3) must be a multiple of trl.num_generations (4)"),
    ("grpo: {trl: {output_dir: /tmp/x}}\n", "output_dir is set by mtr"),
    ("sft: {lora: true}\n", "give peft's LoraConfig arguments as a mapping"),
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


@pytest.mark.parametrize("text,expected", [
    ("grpo: {train_steps: 5}\n", "grpo.train_steps: moved to grpo.trl.max_steps"),
    ("grpo: {learning_rate: 1.0e-5}\n", "grpo.learning_rate: moved to grpo.trl.learning_rate"),
    ("synth: {max_steps: 3}\n", "synth.max_steps: moved to synth.max_tool_calls"),
    ("eval: {max_tools: 1}\n", "eval.max_tools: moved to tools.max_tools"),
    ("filter: {max_tokens: 100}\n", "filter.max_tokens: moved to filter.max_trace_tokens"),
    ("sft: {warmup_ratio: 0.1}\n", "sft.warmup_ratio: moved to sft.trl.warmup_steps"),
    ("grpo: {lora_alpha: 8}\n", "grpo.lora_alpha: moved to grpo.lora.lora_alpha"),
    ("grpo: {on_toolmaker_failure: utilities}\n", "grpo.on_toolmaker_failure: moved to tools.on_failure"),
    ("roles:\n  reference: {backend: hf}\n", "roles.reference: gone: GRPO's KL reference is the initial policy"),
])
def test_an_old_key_names_its_new_place(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: {expected}" or str(e.value).startswith(f"{p}: {expected}")


def test_trl_arguments_pass_through_over_mtr_defaults():
    cfg = parse_config({"grpo": {"trl": {"learning_rate": 3e-6, "warmup_steps": 0.1, "max_grad_norm": 0.5}},
                        "sft": {"lora": {"r": 8}}})
    t = cfg.grpo.trl
    assert t["learning_rate"] == 3e-6 and t["warmup_steps"] == 0.1 and t["max_grad_norm"] == 0.5
    assert t["beta"] == 0.04 and t["num_generations"] == 8  # mtr's defaults stay where not overridden
    lora = cfg.sft.peft_config()
    assert lora.r == 8 and lora.task_type == "CAUSAL_LM" and cfg.grpo.peft_config() is None


def test_trl_arguments_reach_trl_and_unknown_ones_are_one_line(tmp_path):
    from trl import GRPOConfig

    from mtr.config import trl_args
    from mtr.training import trainer_args

    cfg = parse_config({"grpo": {"trl": {"warmup_steps": 0.25, "max_grad_norm": 0.5}}})
    args = trainer_args(GRPOConfig, "grpo", cfg.grpo.trl, tmp_path, seed=3)
    assert args.warmup_steps == 0.25 and args.max_grad_norm == 0.5 and args.beta == 0.04 and args.seed == 3
    assert args.output_dir == str(tmp_path) and args.use_cpu and not args.bf16
    # the configs' gradient_checkpointing reaches transformers under its new name, without its FutureWarning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gradient_checkpointing", category=FutureWarning)
        args = trainer_args(GRPOConfig, "grpo", {"gradient_checkpointing": True,
                                                 "gradient_checkpointing_kwargs": {"use_reentrant": False}}, tmp_path, 0)
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    with pytest.raises(ConfigError, match=r"^grpo\.trl\.learning_rat: not an argument of TRL's GRPOConfig$"):
        trl_args(GRPOConfig, "grpo", {"learning_rat": 1e-5, "output_dir": str(tmp_path)})


def test_a_stage_records_only_what_it_reads():
    a, b = parse_config({}), parse_config({"grpo": {"trl": {"learning_rate": 5e-6}}, "eval": {"limit": 3}})
    assert a.stage_config(("synth", "tools"), ("toolmaker",)) == b.stage_config(("synth", "tools"), ("toolmaker",))
    assert a.stage_config(("grpo",), ()) != b.stage_config(("grpo",), ())


def test_with_policy_points_a_copy_at_a_checkpoint():
    cfg = Config()
    trained = cfg.with_policy("runs/x/sft")
    assert (trained.roles.policy.backend, trained.roles.policy.model) == ("hf", "runs/x/sft")
    assert cfg.roles.policy.model == "embedded" and trained.roles.toolactor == cfg.roles.toolactor
