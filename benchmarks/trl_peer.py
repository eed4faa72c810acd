"""The peer a user would pick instead of mtr's rollout: TRL's own multi-turn tool loop
(`GRPOTrainer(tools=[...])`), from the same checkpoint, on the same questions, with the same live tools,
the same system prompt and the same Rubric. Used by bench_learning.py's `trl-peer` arm.

What is the same: the model and its chat template (mtr's ChatML with Hermes tool calls, which TRL parses with
its Qwen response template: the same `<think>`, `<tool_call>{json}</tool_call>` convention), the questions,
the utility tools played by the same retriever (their schemas as mtr declares them), the group size, batch,
learning rate, KL, completion budget and call limit (TRL's `max_tool_calling_iterations`), and the reward:
each completion is read back into an mtr Trace, its calls and observations validated as mtr's Environment
validates them, and scored by mtr's Rubric. What differs is the loop itself: TRL generates every turn of a
batch with `model.generate`, runs the tools, appends the results and generates again; mtr's rollout adds
the validation pre-check before a call reaches a tool, the one-world-per-group memo, and a nudge to answer
on the last turn, which TRL's loop has no place for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def make_tools(cfg: Any) -> tuple[list[Any], list[Any]]:
    """TRL tools (async functions named and documented as mtr's utility tools) and mtr's schemas for them."""
    from mtr.livetools import live_players
    from mtr.retrieval import make_retriever
    from mtr.toolmaker import utility_tools
    from mtr.trace import ToolCall

    r = cfg.retriever
    players = live_players(make_retriever(r), r.top_k, r.max_chars)

    async def play(name: str, **arguments: Any) -> str:
        text, _, _ = await players[name].observe(None, None, ToolCall(name=name, arguments=arguments), {})
        return text

    # TRL builds each tool's schema from its signature and docstring (transformers' get_json_schema), so the
    # three are written out rather than generated: their names, arguments and descriptions are mtr's.
    async def search(query: str) -> str:
        """Search an encyclopedia and return the most relevant passages.

        Args:
            query: what to look up
        """
        return await play("search", query=query)

    async def lookup(title: str) -> str:
        """Return the passage of the encyclopedia article with exactly this title.

        Args:
            title: the article's title
        """
        return await play("lookup", title=title)

    async def calculate(expression: str) -> str:
        """Compute an arithmetic expression (numbers, + - * / ** and parentheses).

        Args:
            expression: the expression
        """
        return await play("calculate", expression=expression)

    names = list(cfg.tools.utility_tools)
    funcs = {"search": search, "lookup": lookup, "calculate": calculate}
    return [funcs[n] for n in names], utility_tools(names)


def episode_of(prompt: list[dict], completion: list[dict], answers: list[str], schemas: list[Any]) -> Any:
    """A TRL completion (assistant and tool messages) as an mtr Trace, with the checks mtr's Environment
    would have recorded: the call against the tool's schema, the observation against its declared shape."""
    from mtr.trace import Trace
    from mtr.validate import validate_call, validate_observation

    messages = []
    for m in [*prompt, *completion]:
        m = dict(m)
        if m.get("role") == "assistant" and m.get("reasoning_content"):  # TRL split <think> off: put it back
            m["content"] = f"<think>{m.pop('reasoning_content')}</think>" + (m.get("content") or "")
        messages.append(m)
    try:
        trace = Trace.from_conversation({"messages": messages, "tools": [t.openai() for t in schemas]},
                                        answers=answers)
    except (ValueError, KeyError, json.JSONDecodeError) as e:  # a completion TRL could not parse into turns
        trace = Trace.from_conversation({"messages": messages[:2], "tools": [t.openai() for t in schemas]},
                                        answers=answers)
        trace.error = f"unreadable completion: {e}"
    by_name = {t.name: t for t in schemas}
    for step in trace.steps:
        if step.call is not None:
            step.checks = validate_call(step.call, schemas)
            if step.observation is not None and step.call.name in by_name:
                step.checks.append(validate_observation(step.observation, by_name[step.call.name]))
    return trace


def peer_solvable_first(cfg: Any, examples: list, init: Path, out: Path, solvable_from: Path | None = None) -> list:
    """The questions in `grpo.question_order: solvable-first` order, as mtr's GRPO stage orders them (and, as
    it does, with `solvable_from`'s answers taken where this run has none: `train_grpo`)."""
    import asyncio

    from mtr.backends import BackendPool
    from mtr.env import Environment
    from mtr.stages.grpo import solvable_first
    from mtr.toolmaker import ToolStore

    pool = BackendPool(cfg)
    env = Environment.from_config(cfg, "grpo", pool)
    if env.store is not None:
        env.store = ToolStore.from_config(cfg, pool, out / "tools.jsonl")
    try:
        return solvable_first(cfg, env, examples, init, out / "solvable.jsonl", answers_from=solvable_from)[0]
    finally:
        env.close()
        asyncio.run(pool.aclose())


def train_trl_peer(cfg: Any, data: Path, init: Path, out: Path, limit: int | None = None, resume: bool = False,
                   overwrite: bool = False, candidates: int | None = None,
                   solvable_from: Path | None = None) -> dict[str, Any]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen3_template

    from mtr.checkpoints import load_tokenizer, save_trained
    from mtr.data import load_qa
    from mtr.jsonl import jsonl_log_callback
    from mtr.prompts import fill
    from mtr.rubric import Rubric
    from mtr.stages.grpo import questions_needed
    from mtr.training import prepare_run, read_log, resume_point, trainer_args, write_stats

    g, t = cfg.grpo, cfg.grpo.trl
    tok = load_tokenizer(Path(init))
    tok.response_template = qwen3_template  # mtr's template writes tool calls as Qwen's does
    tools, schemas = make_tools(cfg)
    rubric = Rubric.from_config(g)
    args = trainer_args(GRPOConfig, "grpo", t, out, cfg.seed,
                        fixed={"reward_weights": rubric.trl_weights(),
                               "max_tool_calling_iterations": g.max_tool_calls})
    prepare_run(args, out, overwrite, ("log.jsonl", "train_stats.json", "solvable.jsonl", "tools.jsonl"),
                lambda: None)
    if g.question_order == "solvable-first":  # chosen by the same rule as mtr's GRPO chooses them
        examples = peer_solvable_first(cfg, load_qa(data, candidates), Path(init), out, solvable_from)
        examples = examples[:limit] if limit else examples
    else:
        examples = load_qa(data, limit)
    examples = examples[:questions_needed(t)]  # the questions mtr's GRPO draws from the same file
    system = fill("policy")
    dataset = Dataset.from_list([{"prompt": [{"role": "system", "content": system},
                                             {"role": "user", "content": ex.question}],
                                  "answers": ex.answers} for ex in examples])
    mtr_funcs = rubric.trl_reward_funcs()

    def adapt(func: Any) -> Any:
        def reward(prompts: list, completions: list, answers: list, **kwargs: Any) -> list[float]:
            episodes = [episode_of(p, c, a, schemas) for p, c, a in zip(prompts, completions, answers)]
            return func(prompts, completions, episode=episodes, **kwargs)

        reward.__name__ = func.__name__
        return reward

    trainer = GRPOTrainer(model=str(init), reward_funcs=[adapt(f) for f in mtr_funcs], args=args,
                          train_dataset=dataset, processing_class=tok, tools=tools,
                          callbacks=[jsonl_log_callback(out / "log.jsonl")], peft_config=g.peft_config())
    ckpt = resume_point(args, out, resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    wall = time.perf_counter() - t0
    save_trained(trainer, args, out, tok, base=Path(init), lora=g.lora_on, dtype="auto")
    steps = [e for e in read_log(out) if "reward" in e]
    stats = {"steps": result.global_step, "train_runtime_s": wall, "seconds_per_step": wall / max(1, result.global_step),
             "step_time": [e.get("step_time") for e in steps]}
    write_stats(args, out, stats, f"trl peer: {stats['steps']} steps in {wall:.0f}s")
    return stats

