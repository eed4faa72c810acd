"""Configuration: one YAML file binds each role to a backend and a model, plus stage settings.

Validated with pydantic; every error is one line that names the file and the dotted field path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROLES = ("toolmaker", "autoagent", "toolactor", "policy", "reference")
BACKENDS = ("hf", "openai", "llamacpp")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "cpu-tiny.yaml"


class ConfigError(ValueError):
    """A bad config; the message is one line naming the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RoleConfig(_Strict):
    """Which backend and model play one role, and how to talk to it."""

    backend: Literal["hf", "openai", "llamacpp"] = "hf"
    model: str = Field("embedded", min_length=1,
                       description="`embedded`, a local checkpoint directory, a GGUF file, or a server model name")
    # openai
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1,
                             description="name of the environment variable holding the API key (never the key)")
    max_concurrency: int = Field(8, ge=1, le=4096)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    json_mode: Literal["json_schema", "json_object"] = Field(
        "json_schema", description="how a JSON schema is sent: OpenAI's `json_schema` response format (vLLM, "
        "SGLang, OpenAI) or `json_object` with a `schema` key (llama.cpp server); a server that rejects the "
        "first gets the second automatically")
    # local (hf / llamacpp)
    device: str = Field("auto", min_length=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto", description="hf: auto is bfloat16 on a GPU, float32 on a CPU; int8 quantizes the linear layers "
        "for CPU inference (2.2x faster decoding on one host, none on an AVX2-only one; outputs differ a little "
        "from float32)")
    batch_size: int = Field(16, ge=1, le=1024)
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)
    n_slots: int = Field(4, ge=1, le=64, description="llamacpp: contexts kept, each caching its last prompt; a "
                         "request goes to the one whose cache shares the most of its prompt")
    prefix_cache_mb: int = Field(1024, ge=0, description="hf: memory for the keys and values of earlier "
                                 "prompts, so that a prompt starting with the same tokens (an episode's next "
                                 "turn) reads only the rest; 0: off")
    # sampling defaults for this role
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _backend_fits_model(self) -> "RoleConfig":
        if self.backend == "openai" and self.model == "embedded":
            raise ValueError("the openai backend needs `model` set to the server's model name")
        if self.backend == "llamacpp" and self.model not in ("embedded",) and not self.model.endswith(".gguf"):
            raise ValueError("the llamacpp backend needs `model` to be `embedded` or a .gguf file")
        return self


class RolesConfig(_Strict):
    toolmaker: RoleConfig = Field(default_factory=RoleConfig)
    autoagent: RoleConfig = Field(default_factory=RoleConfig)
    toolactor: RoleConfig = Field(default_factory=RoleConfig)
    policy: RoleConfig = Field(default_factory=RoleConfig)
    reference: RoleConfig = Field(default_factory=RoleConfig)


class EpisodeConfig(_Strict):
    """How episodes run (shared by synthesis and evaluation): tools, budget, the ToolActor."""

    max_steps: int = Field(4, ge=1, le=32, description="tool calls allowed per episode before the answer")
    max_tools: int = Field(2, ge=1, le=8, description="task-specific tools the ToolMaker writes per question")
    toolmaker_retries: int = Field(2, ge=0, le=10)
    utility_tools: list[str] = Field(default_factory=lambda: ["search"],
                                     description="predefined tools offered beside the generated ones")
    grounding: Literal["none", "context"] = Field(
        "none", description="context: the ToolActor is given the record's paragraphs as its knowledge")
    actor_retries: int = Field(1, ge=0, le=5)
    concurrency: int | Literal["auto"] = Field(
        "auto", description="episodes in flight (batched on hf, requests in flight on a server); auto: 16, but 1 "
        "when a model plays the agent and every role the stage generates with is on llamacpp (one sequence at a "
        "time)")

    @field_validator("concurrency", mode="before")
    @classmethod
    def _concurrency_range(cls, v: Any) -> int | str:
        # one message for both halves of the union (pydantic would report each half's failure)
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096):
            return v
        raise ValueError("must be `auto` or a number of episodes from 1 to 4096")


class SynthConfig(EpisodeConfig):
    """Trace synthesis (`mtr synth`)."""

    episodes_per_question: int = Field(1, ge=1, le=64)
    teacher: Literal["model", "scripted"] = Field(
        "model", description="who plays the AutoAgent: the autoagent role's model, or the scripted teacher "
        "that walks a record's supporting facts (labelled teacher: scripted)")


class EvalConfig(EpisodeConfig):
    """Evaluation (`mtr eval`): the policy on benchmarks, tools on and off."""

    benchmarks: list[str] = Field(default_factory=lambda: ["bamboogle"],
                                  description="names (hotpotqa, 2wiki, musique, bamboogle) or QA .jsonl paths")
    modes: list[Literal["tools-on", "tools-off"]] = Field(default_factory=lambda: ["tools-on", "tools-off"])
    limit: int | None = Field(None, ge=1, description="first N questions of each benchmark")


class FilterConfig(_Strict):
    """Trace filtering: which episodes become SFT data."""

    answer_metric: Literal["em", "f1"] = "em"
    f1_threshold: float = Field(0.8, ge=0.0, le=1.0)
    max_validation_errors: int = Field(0, ge=0)
    max_steps: int = Field(6, ge=1)
    max_tokens: int = Field(2048, ge=16, description="tokens of the rendered trace, policy tokenizer")
    require_tool_call: bool = Field(True, description="reject episodes that answer without any tool call")


class LoraSettings(_Strict):
    lora: bool = Field(False, description="train a LoRA adapter (peft) instead of all weights")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: str | list[str] = "all-linear"

    def peft_config(self) -> Any:
        """peft's LoraConfig for these settings, or None without `lora`."""
        if not self.lora:
            return None
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules, task_type="CAUSAL_LM")


class SFTStageConfig(LoraSettings):
    """Stage 1 (`mtr sft`): TRL's SFTTrainer on sft.jsonl, loss on the assistant's own tokens only."""

    learning_rate: float = Field(5e-5, gt=0)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="stop after N optimizer steps (-1: run the epochs)")
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_length: int = Field(1024, ge=32, description="tokens per training sequence")
    too_long: Literal["drop", "truncate"] = Field(
        "drop", description="what to do with longer sequences (counted and reported either way)")
    bf16: bool = Field(False, description="bfloat16 mixed precision (GPU)")
    gradient_checkpointing: bool = False
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])


class GRPOStageConfig(EpisodeConfig, LoraSettings):
    """Stage 2 (`mtr grpo`): TRL's GRPOTrainer with MTR's multi-turn rollout and composite reward."""

    num_generations: int = Field(8, ge=2, description="group size: rollouts per question (paper: 8)")
    per_device_train_batch_size: int = Field(8, ge=1, description="rollouts in one forward/backward pass; times "
                                             "gradient_accumulation_steps: rollouts per step, whole groups")
    gradient_accumulation_steps: int = Field(1, ge=1)
    beta: float = Field(0.04, ge=0.0, description="KL coefficient to the reference (the initial policy)")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "grpo"
    learning_rate: float = Field(1e-6, gt=0)
    train_steps: int = Field(100, ge=1, description="optimizer steps (max_steps is the tool-call budget)")
    max_turn_tokens: int = Field(128, ge=8, description="tokens the policy may write in one turn")
    max_completion_tokens: int = Field(1024, ge=16, description="tokens of a whole episode after the prompt")
    temperature: float = Field(1.0, gt=0.0)
    answer_metric: Literal["em", "f1"] = "em"
    call_budget: int = Field(2, ge=0, description="calls beyond this cost call_penalty each (efficiency)")
    call_penalty: float = Field(0.1, ge=0.0)
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"answer": 1.0, "format": 0.5, "consistency": 0.5, "efficiency": 0.2})
    on_toolmaker_failure: Literal["skip", "utilities"] = Field(
        "skip", description="skip (and count) questions whose ToolMaker failed, or give them the utility tools")
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_vllm: bool = Field(False, description="GPU: sample the policy's turns with vLLM through TRL (colocate mode)")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0,
                                               description="share of each GPU's memory vLLM may take beside training")
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(25, ge=1)
    save_total_limit: int = Field(2, ge=1)
    sample_every: int = Field(5, ge=1, description="write sample episodes to samples.jsonl every N steps")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    process_timeout_s: int = Field(
        10800, ge=60, description="several processes: how long a rank waits for the others (TrainingArguments' "
        "ddp_timeout); it covers the ToolMaker run on the main process before training")

    @model_validator(mode="after")
    def _weights_and_groups(self) -> "GRPOStageConfig":
        unknown = set(self.reward_weights) - {"answer", "format", "consistency", "efficiency"}
        if unknown:
            raise ValueError(f"reward_weights: unknown component(s) {sorted(unknown)}; "
                             "components are answer, format, consistency, efficiency")
        # TRL rolls out per_device_train_batch_size x gradient_accumulation_steps episodes at once (its generation
        # batch) and takes the loss on them in micro-batches: the whole groups must be in one generation batch
        rollouts = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if rollouts % self.num_generations:
            raise ValueError(f"per_device_train_batch_size x gradient_accumulation_steps ({rollouts}) must be a "
                             f"multiple of num_generations ({self.num_generations})")
        return self


class RunConfig(_Strict):
    """The whole pipeline (`mtr run`): the training questions and which stages run, in this order."""

    train_data: str = Field("hotpotqa", description="QA for synthesis and GRPO: a benchmark name or a .jsonl path")
    train_limit: int | None = Field(None, ge=1, description="first N training questions")
    stages: list[Literal["synth", "sft", "grpo", "eval"]] = Field(
        default_factory=lambda: ["synth", "sft", "grpo", "eval"])
    eval_base: bool = Field(False, description="also evaluate the initial policy, for a before/after table")

    @model_validator(mode="after")
    def _stage_order(self) -> "RunConfig":
        order = ["synth", "sft", "grpo", "eval"]
        if [s for s in order if s in self.stages] != self.stages:
            raise ValueError(f"stages must be a subset of {order} in that order (got {self.stages})")
        return self


class Config(_Strict):
    """The whole run configuration. Each stage reads its own section."""

    seed: int = 0
    roles: RolesConfig = Field(default_factory=RolesConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def role(self, name: str) -> RoleConfig:
        if name not in ROLES:
            raise ConfigError(f"unknown role {name!r}; roles are: {', '.join(ROLES)}")
        return getattr(self.roles, name)

    def episodes_in_flight(self, stage: Literal["synth", "eval"]) -> int:
        """The stage's `concurrency`, with `auto` resolved.

        llama-cpp-python decodes one sequence at a time, so when every role a stage generates with is on
        `llamacpp`, episodes in flight only take turns. With a model playing the agent an episode alternates
        between two prompts (agent, ToolActor) that evict each other's cached prefix, and one episode at a
        time was fastest (16 in flight: 0.87x on 4 questions, 0.67x on 32; docs/performance.md). With the
        scripted teacher the requests in flight are ToolMaker and ToolActor prompts that share their
        templates, and a batch of them runs back to back on one cached prefix: on the demo's 12 questions
        16 in flight ran at 1.11x 4 in flight (2 runs each). Anywhere else episodes in flight pay too:
        `hf` batches them, a server serves them in parallel."""
        section = self.synth if stage == "synth" else self.eval
        if section.concurrency != "auto":
            return section.concurrency
        model_agent = stage == "eval" or self.synth.teacher == "model"
        agent = "policy" if stage == "eval" else "autoagent"
        if model_agent and all(self.role(r).backend == "llamacpp" for r in ("toolmaker", "toolactor", agent)):
            return 1
        return 16


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    value = first.get("input")
    shown = "" if first["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {value!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{shown}{more}"


def parse_config(data: Any, source: str = "<config>") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(source, e)) from None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a YAML config; `None` means the packaged CPU preset (`cpu-tiny.yaml`)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ConfigError(f"{p}: {where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return parse_config(data, str(p))
