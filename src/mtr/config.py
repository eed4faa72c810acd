"""Configuration: one YAML file binds each role to a backend and a model, plus each stage's settings.

Validated with pydantic; every error is one line that names the file and the dotted field path. The names
are the method's, one meaning each (`max_tool_calls`, `max_turns`, `max_trace_tokens`); TRL's and peft's own
arguments pass through unchanged under `sft.trl`, `grpo.trl` and `*.lora` (any option of `SFTConfig`,
`GRPOConfig` or `LoraConfig` works without a field here). A key of an older mtr gets a one-line error that
names its new place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROLES = ("toolmaker", "autoagent", "toolactor", "policy")
STAGES = ("tools", "synth", "filter", "sft", "grpo", "eval")  # the order data flows in
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
        "for CPU inference (docs/performance.md: the gain depends on the CPU; outputs differ a little)")
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
    max_tokens: int = Field(256, ge=1, description="tokens a reply may have (the sampling budget)")

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


class ToolsConfig(_Strict):
    """Stage `tools`: the ToolMaker writes each question's tools once; synthesis, GRPO and evaluation read them."""

    toolmaker: bool = Field(True, description="false: no task-specific tools, the utility tools alone (the "
                            "ToolMaker ablation)")
    max_tools: int = Field(2, ge=1, le=8, description="task-specific tools the ToolMaker writes per question")
    toolmaker_retries: int = Field(2, ge=0, le=10)
    utility_tools: list[str] = Field(default_factory=lambda: ["search", "lookup", "calculate"],
                                     description="predefined tools: `search` beside every question's generated "
                                     "ones, and those the ToolMaker chooses for the question's domain (lookup, "
                                     "calculate)")
    on_failure: Literal["skip", "utilities"] = Field(
        "skip", description="a question whose ToolMaker failed: run it with the utility tools alone (the "
        "failure is recorded in its episodes), or skip it in training (synthesis records a failed episode, GRPO "
        "draws another question); evaluation always uses the utility tools, so every question is scored")


class RetrieverConfig(_Strict):
    """The real `search` tool: a local BM25 index, or a retrieval server (the Search-R1 protocol)."""

    kind: Literal["bm25", "remote"] = "bm25"
    corpus: str = Field("default", min_length=1, description="bm25: `default` (the shipped data's paragraphs, "
                        "indexed once under $MTR_HOME), a corpus directory, or a corpus JSONL (id, title, text)")
    url: str | None = Field(None, description="remote: the server's address, e.g. http://127.0.0.1:8000/retrieve")
    top_k: int = Field(3, ge=1, le=20, description="passages a search returns")
    max_chars: int = Field(600, ge=50, le=20000, description="a passage's text in an observation is cut to this")
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)

    @model_validator(mode="after")
    def _remote_has_url(self) -> "RetrieverConfig":
        if self.kind == "remote" and not self.url:
            raise ValueError("a remote retriever needs `url` (e.g. http://127.0.0.1:8000/retrieve)")
        return self


class EpisodeConfig(_Strict):
    """How a stage's episodes run in the Environment: who plays the tools, the call budget, episodes in flight."""

    max_tool_calls: int = Field(4, ge=0, le=32, description="tool calls an episode may make before it must answer")
    tool_mode: Literal["simulated", "live", "hybrid", "off"] = Field(
        "simulated", description="who plays the tools: the ToolActor (simulated); the retriever for `search`, the "
        "only tool then offered (live); `search` live and the ToolMaker's tools simulated, grounded in retrieval "
        "(hybrid); no tools at all (off: the tools-off ablation)")
    precheck: bool = Field(True, description="the validation pre-check: a call whose tool or arguments are invalid "
                           "gets an error observation instead of reaching the ToolActor (false: the pre-check "
                           "ablation, invalid calls are played too)")
    grounding: Literal["none", "retrieval", "oracle"] = Field(
        "none", description="what the ToolActor knows beside its own weights: nothing, the passages the retriever "
        "finds for the call's arguments, or the record's own paragraphs, gold ones included (oracle: training only, "
        "labelled)")
    live_share: float = Field(0.0, ge=0.0, le=1.0, description="with tool_mode simulated: the share of episodes "
                              "(of GRPO groups) played hybrid instead, drawn per question and seed")
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

    @field_validator("grounding", mode="before")
    @classmethod
    def _old_grounding(cls, v: Any) -> Any:
        if v == "context":
            raise ValueError("context is now `oracle` (the record's own paragraphs, gold ones included); "
                             "`retrieval` grounds the ToolActor in what a search finds")
        return v

    def uses_retriever(self) -> bool:
        return self.tool_mode in ("live", "hybrid") or self.grounding == "retrieval" or self.live_share > 0


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
    modes: list[Literal["tools-on", "tools-off", "simulated", "live", "hybrid"]] = Field(
        default_factory=lambda: ["tools-on", "tools-off"],
        description="tools-on: tools played as `tool_mode` says; simulated, live, hybrid: that mode, whatever "
        "`tool_mode` is (e.g. [simulated, live] for the transfer gap); tools-off: no tools")
    limit: int | None = Field(None, ge=1, description="first N questions of each benchmark")
    allow_oracle: bool = Field(False, description="allow `grounding: oracle` in evaluation (the simulator then "
                               "reads the gold paragraphs: a figure of the simulator, not of the policy)")

    @model_validator(mode="after")
    def _no_oracle_unasked(self) -> "EvalConfig":
        if self.grounding == "oracle" and not self.allow_oracle:
            raise ValueError("grounding: oracle hands the ToolActor the record's own paragraphs, gold ones included; "
                             "set eval.allow_oracle: true to evaluate with it anyway")
        return self

    def mode_of(self, mode: str) -> str:
        """The tool mode an evaluation mode plays: off, simulated, live or hybrid."""
        return {"tools-on": self.tool_mode, "tools-off": "off"}.get(mode, mode)

    def uses_retriever(self) -> bool:
        return super().uses_retriever() or any(self.mode_of(m) in ("live", "hybrid") for m in self.modes)


class FilterConfig(_Strict):
    """Trace filtering (`mtr filter`): which episodes become SFT data."""

    answer_metric: Literal["em", "f1"] = "em"
    f1_threshold: float = Field(0.8, ge=0.0, le=1.0)
    max_validation_errors: int = Field(0, ge=0)
    max_turns: int = Field(6, ge=1, description="assistant turns of an episode")
    max_trace_tokens: int = Field(2048, ge=16, description="tokens of the rendered trace, policy tokenizer")
    require_tool_call: bool = Field(True, description="reject episodes that answer without any tool call")
    require_support: bool = Field(True, description="reject episodes whose answer their own observations do not "
                                  "support (mtr.evidence), whoever the teacher")


def _lora(value: Any) -> Any:
    if value is None or isinstance(value, dict):
        return value
    raise ValueError("give peft's LoraConfig arguments as a mapping (e.g. {r: 16, lora_alpha: 32, "
                     "target_modules: all-linear}), or null for full fine-tuning")


class TrainStage(_Strict):
    """What SFT and GRPO share: TRL's arguments (passed through), LoRA (peft's arguments, passed through)."""

    trl: dict[str, Any] = Field(default_factory=dict, description="arguments of TRL's config class, as TRL names them")
    lora: dict[str, Any] | None = Field(None, description="peft LoraConfig arguments; null: full fine-tuning")

    # mtr's defaults for TRL's arguments; the user's `trl` mapping is laid over them key by key
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_mapping(cls, v: Any) -> Any:
        return _lora(v)

    @field_validator("trl", mode="before")
    @classmethod
    def _merge_defaults(cls, v: Any) -> Any:
        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise ValueError("a mapping of TRL's arguments (e.g. {learning_rate: 1.0e-5})")
        if "output_dir" in v:
            raise ValueError("output_dir is set by mtr (the stage's --out)")
        return {**cls.TRL_DEFAULTS, **v}

    def peft_config(self) -> Any:
        """peft's LoraConfig for these settings, or None for full fine-tuning."""
        if self.lora is None:
            return None
        from peft import LoraConfig

        return LoraConfig(**{"task_type": "CAUSAL_LM", "target_modules": "all-linear", **self.lora})

    @property
    def lora_on(self) -> bool:
        return self.lora is not None


class SFTStageConfig(TrainStage):
    """Stage 1 (`mtr sft`): TRL's SFTTrainer on sft.jsonl, loss on the assistant's own tokens only."""

    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {"learning_rate": 5e-5, "num_train_epochs": 3.0, "max_steps": -1, "per_device_train_batch_size": 4,
                    "gradient_accumulation_steps": 1, "max_length": 1024, "gradient_checkpointing": False,
                    "logging_steps": 1, "save_steps": 50, "save_total_limit": 2, "report_to": ["tensorboard"]}
    trl: dict[str, Any] = Field(default_factory=lambda: dict(SFTStageConfig.TRL_DEFAULTS),
                                description="arguments of TRL's SFTConfig, as TRL names them")
    too_long: Literal["drop", "truncate"] = Field(
        "drop", description="what to do with sequences over trl.max_length tokens (counted and reported either way)")
    share_prompt: bool = Field(
        True, description="train each micro-batch of traces as one sequence, the tokens they all begin with (the "
        "system message, the tools) once: the same loss and gradients from fewer tokens (SDPA attention; others "
        "pad the batch). It pays when trl.per_device_train_batch_size is above 1")


class GRPOStageConfig(EpisodeConfig, TrainStage):
    """Stage 2 (`mtr grpo`): TRL's GRPOTrainer with MTR's multi-turn rollout and composite reward."""

    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {"num_generations": 8, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                    "beta": 0.04, "loss_type": "dapo", "learning_rate": 1e-6, "max_steps": 100, "temperature": 1.0,
                    "max_completion_length": 1024, "gradient_checkpointing": False, "logging_steps": 1,
                    "save_steps": 25, "save_total_limit": 2, "report_to": ["tensorboard"], "ddp_timeout": 10800}
    trl: dict[str, Any] = Field(default_factory=lambda: dict(GRPOStageConfig.TRL_DEFAULTS),
                                description="arguments of TRL's GRPOConfig, as TRL names them; max_completion_length "
                                "is an episode's whole token budget, ddp_timeout covers the ToolMaker before training")
    max_turn_tokens: int = Field(128, ge=8, description="tokens the policy may write in one turn")
    answer_metric: Literal["em", "f1"] = "em"
    call_budget: int = Field(1, ge=0, description="calls beyond this cost call_penalty each (efficiency); below "
                             "max_tool_calls, so that the penalty can fire")
    call_penalty: float = Field(0.1, ge=0.0)
    token_budget: int = Field(256, ge=1, description="the agent's tokens in an episode beyond this cost "
                              "token_penalty per token_budget (efficiency)")
    token_penalty: float = Field(0.2, ge=0.0)
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"answer": 1.0, "format": 0.5, "consistency": 0.5, "efficiency": 0.2})
    consistency_when_right: bool = Field(
        False, description="pay the consistency reward only beside an answer that scores above 0: when a group's "
        "answers are all wrong, a grounded wrong answer then earns nothing over an ungrounded one")
    sample_every: int = Field(5, ge=1, description="write sample episodes to samples.jsonl every N steps")
    share_prompt: bool = Field(
        True, description="score the episodes of a micro-batch that share a prompt (a group) as one sequence, the "
        "prompt once: the same log-probabilities from fewer tokens (SDPA attention; others score each episode). "
        "It pays when trl.per_device_train_batch_size holds whole groups")
    question_order: Literal["file", "solvable-first"] = Field(
        "file", description="which questions training draws first: the file's (shuffled when steps draw fewer than "
        "it holds), or those the initial policy answers at least partly right (greedy, token F1 > 0, this stage's "
        "tools; the others after them): a group's answers can then differ, and the answer reward gives a signal")

    @model_validator(mode="after")
    def _weights_and_groups(self) -> "GRPOStageConfig":
        from mtr.rubric import REWARD_NAMES

        unknown = set(self.reward_weights) - set(REWARD_NAMES)
        if unknown:
            raise ValueError(f"reward_weights: unknown component(s) {sorted(unknown)}; "
                             f"components are {', '.join(REWARD_NAMES)}")
        t = self.trl
        # TRL rolls out per_device_train_batch_size x gradient_accumulation_steps episodes at once (its
        # generation batch) and takes the loss on them in micro-batches: whole groups must be in one batch
        rollouts = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
        if rollouts % t["num_generations"]:
            raise ValueError(f"trl.per_device_train_batch_size x trl.gradient_accumulation_steps ({rollouts}) must "
                             f"be a multiple of trl.num_generations ({t['num_generations']})")
        if t["max_completion_length"] < 16:
            raise ValueError("trl.max_completion_length: an episode needs at least 16 tokens")
        if self.max_tool_calls and self.call_budget >= self.max_tool_calls:
            raise ValueError(f"call_budget ({self.call_budget}) must be below max_tool_calls ({self.max_tool_calls}), "
                             "or the efficiency penalty for calls can never fire")
        return self


class RunConfig(_Strict):
    """The whole pipeline (`mtr run`): the training questions and which stages run, in this order."""

    train_data: str = Field("hotpotqa-train", description="QA for synthesis and GRPO: a training split "
                            "(hotpotqa-train, 2wiki-train, musique-train) or a .jsonl path")
    train_limit: int | None = Field(None, ge=1, description="first N training questions")
    stages: list[Literal["tools", "synth", "filter", "sft", "grpo", "eval"]] = Field(
        default_factory=lambda: ["tools", "synth", "filter", "sft", "grpo", "eval"])
    eval_base: bool = Field(False, description="also evaluate the initial policy, for a before/after table")
    grpo_init: Literal["sft", "base"] = Field(
        "sft", description="where GRPO starts: the SFT checkpoint, or the initial policy (base: the paper's "
        "cold-start ablation, GRPO without SFT)")
    allow_overlap: bool = Field(False, description="let training and evaluation questions overlap (an error "
                                "otherwise: scores on trained-on questions say nothing)")

    @model_validator(mode="after")
    def _stage_order(self) -> "RunConfig":
        if [s for s in STAGES if s in self.stages] != self.stages:
            raise ValueError(f"stages must be a subset of {list(STAGES)} in that order (got {self.stages})")
        return self


class Config(_Strict):
    """The whole run configuration. Each stage reads its own section (and records only that one)."""

    seed: int = 0
    roles: RolesConfig = Field(default_factory=RolesConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def with_policy(self, model: str | Path) -> "Config":
        """A copy of this config whose policy is the transformers checkpoint at `model` (a trained stage's
        output, or a user's own): how every stage and benchmark evaluates a trained policy."""
        c = self.model_copy(deep=True)
        c.roles.policy = c.roles.policy.model_copy(update={"backend": "hf", "model": str(model)})
        return c

    def role(self, name: str) -> RoleConfig:
        if name not in ROLES:
            raise ConfigError(f"unknown role {name!r}; roles are: {', '.join(ROLES)}")
        return getattr(self.roles, name)

    def stage_config(self, sections: tuple[str, ...], roles: tuple[str, ...]) -> dict[str, Any]:
        """What a stage's manifest records: the sections it reads (and the retriever when its episodes use
        it), the roles it uses, the seed. A change anywhere else leaves the stage (and its directory) alone."""
        episodes = [getattr(self, s) for s in sections if isinstance(getattr(self, s), EpisodeConfig)]
        if any(e.uses_retriever() for e in episodes):
            sections = (*sections, "retriever")
        return {"seed": self.seed, **{s: getattr(self, s).model_dump(mode="json") for s in sections},
                "roles": {r: self.role(r).model_dump(mode="json") for r in roles}}

    def episodes_in_flight(self, stage: Literal["synth", "eval", "grpo"]) -> int:
        """The stage's `concurrency`, with `auto` resolved.

        llama-cpp-python decodes one sequence at a time, so when every role a stage generates with is on
        `llamacpp`, episodes in flight only take turns; with a model playing the agent an episode alternates
        between two prompts (agent, ToolActor) that evict each other's cached prefix, and one episode at a
        time is fastest. With the scripted teacher the requests in flight are ToolActor prompts that share
        their templates and run back to back on one cached prefix. Anywhere else episodes in flight pay:
        `hf` batches them, a server serves them in parallel (docs/performance.md)."""
        section = {"synth": self.synth, "eval": self.eval, "grpo": self.grpo}[stage]
        if section.concurrency != "auto":
            return section.concurrency
        model_agent = stage != "synth" or self.synth.teacher == "model"
        agent = "autoagent" if stage == "synth" else "policy"
        if model_agent and all(self.role(r).backend == "llamacpp" for r in ("toolmaker", "toolactor", agent)):
            return 1
        return 16


# Keys of older configs -> where they live now (a dotted path), or why they are gone.
MOVED = {
    "roles.reference": "gone: GRPO's KL reference is the initial policy (--init); its weight is grpo.trl.beta",
    **{f"{s}.max_steps": f"{s}.max_tool_calls" for s in ("synth", "eval")},
    **{f"{s}.{k}": f"tools.{k}" for s in ("synth", "eval", "grpo") for k in ("max_tools", "toolmaker_retries",
                                                                             "utility_tools")},
    "grpo.on_toolmaker_failure": "tools.on_failure",
    "grpo.max_steps": "grpo.max_tool_calls",
    "grpo.train_steps": "grpo.trl.max_steps",
    "grpo.max_completion_tokens": "grpo.trl.max_completion_length",
    "grpo.process_timeout_s": "grpo.trl.ddp_timeout",
    "filter.max_steps": "filter.max_turns",
    "filter.max_tokens": "filter.max_trace_tokens",
    "sft.max_length": "sft.trl.max_length",
    "sft.max_steps": "sft.trl.max_steps",
    "sft.warmup_ratio": "sft.trl.warmup_steps (a number below 1 is a share of the steps)",
    **{f"{s}.{k}": f"{s}.trl.{k}" for s in ("sft", "grpo") for k in (
        "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "bf16",
        "gradient_checkpointing", "logging_steps", "save_steps", "save_total_limit", "report_to")},
    **{f"sft.{k}": f"sft.trl.{k}" for k in ("num_train_epochs", "weight_decay")},
    **{f"grpo.{k}": f"grpo.trl.{k}" for k in ("num_generations", "beta", "loss_type", "temperature", "use_vllm",
                                              "vllm_gpu_memory_utilization")},
    **{f"{s}.lora_{k}": f"{s}.lora.{'lora_' if k in ('alpha', 'dropout') else ''}{k}" for s in ("sft", "grpo")
       for k in ("r", "alpha", "dropout", "target_modules")},
}


def _moved_key(data: dict) -> str | None:
    for path, where in MOVED.items():
        node: Any = data
        for part in path.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            return f"{path}: {where}" if where.startswith("gone") else f"{path}: moved to {where}"
    return None


_MISSING = object()


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
    if moved := _moved_key(data):
        raise ConfigError(f"{source}: {moved}")
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


def trl_args(config_class: type, section: str, values: dict[str, Any]) -> Any:
    """TRL's config object from `values`; an argument TRL does not know is a one-line ConfigError."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}.trl.{unknown[0]}: not an argument of TRL's {config_class.__name__}")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{section}.trl: TRL's {config_class.__name__} refused the arguments: "
                          f"{' '.join(str(e).split())[:300]}") from None
