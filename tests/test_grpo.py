import asyncio
import json
import math
from types import SimpleNamespace

import pytest

from mtr.backends import BackendError, MicroBatcher
from mtr.chat_template import render
from mtr.config import Config
from mtr.checkpoints import load_tokenizer, policy_checkpoint
from mtr.env import Environment
from mtr.prompts import FINAL_NUDGE
from mtr.rollout import RolloutAgent
from mtr.rubric import RewardError, Rubric, answer_reward, consistency_reward, efficiency_reward, format_reward
from mtr.stages.grpo import draw_questions, make_rollout_func, train_grpo
from mtr.toolmaker import utility_tools
from mtr.trace import Check, QAExample, Step, ToolCall, Trace

from scripted import GOOD_TOOLS, Pool, ScriptedBackend, ScriptedLocal, qa_file, scripted_env


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(policy_checkpoint(Config()))


class ScriptedSampler:
    """Returns scripted turns as token ids (ending with EOS), so the masks can be checked exactly."""

    def __init__(self, tok, turns):
        self.tok, self.turns, self.i = tok, list(turns), 0

    async def sample(self, ids, max_new_tokens):
        text = self.turns[min(self.i, len(self.turns) - 1)]
        self.i += 1
        new = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return new, True


EX = QAExample(id="q1", question="In what year was Moscow State University founded?", answers=["1755"])
TURNS = ['<think>Search it.</think>\n<tool_call>\n{"name": "search", "arguments": {"query": "Moscow State University"}}\n</tool_call>',
         '<think>Check again.</think>\n<tool_call>\n{"name": "search", "arguments": {"query": "MSU founding"}}\n</tool_call>',
         "<think>It says 1755.</think>\n<answer>1755</answer>"]


def run_rollout(tok, turns=TURNS, actor_fn=None, max_steps=3):
    env = scripted_env([EX], ScriptedBackend(actor=actor_fn or (lambda m: json.dumps(
        {"results": [{"title": "MSU", "text": "Founded in 1755."}]}))), max_tool_calls=max_steps)
    agent = RolloutAgent(ScriptedSampler(tok, turns), tok, max_turn_tokens=200, max_completion_tokens=2000)
    trace = asyncio.run(env.rollout(EX, agent, "q1#0"))
    return trace, agent.episodes["q1#0"]


def test_env_mask_matches_the_rendered_multi_turn_text(tok):
    trace, st = run_rollout(tok)
    assert [s.call.name if s.call else s.answer for s in trace.steps] == ["search", "search", "1755"]
    # prompt + completion is exactly the chat template's rendering of the whole conversation
    text = tok.decode(st.prompt_ids + st.completion_ids)
    assert text == render(tok, st.messages, trace.policy_tools()).rstrip("\n")
    model_text = tok.decode([t for t, m in zip(st.completion_ids, st.env_mask) if m == 1])
    env_text = tok.decode([t for t, m in zip(st.completion_ids, st.env_mask) if m == 0])
    assert model_text == "".join(turn + "<|im_end|>" for turn in TURNS)
    assert env_text.count("<tool_response>") == 2 and "Founded in 1755." in env_text
    assert "Founded in 1755." not in model_text
    assert st.completion_ids[-1] == tok.eos_token_id and st.env_mask[-1] == 1


def test_final_turn_gets_the_nudge(tok):
    trace, st = run_rollout(tok, max_steps=2)
    env_text = tok.decode([t for t, m in zip(st.completion_ids, st.env_mask) if m == 0])
    assert FINAL_NUDGE in env_text and trace.final_answer == "1755"


@pytest.mark.parametrize("budget", [1, 2, 3])
def test_the_rollout_shows_the_nudge_exactly_where_the_trace_marks_it(tok, budget):
    """The policy's token stream and the trace (hence the SFT data and the report) follow one rule."""
    trace, st = run_rollout(tok, max_steps=budget)
    env_text = tok.decode([t for t, m in zip(st.completion_ids, st.env_mask) if m == 0])
    assert env_text.count(FINAL_NUDGE) == sum(s.nudged for s in trace.steps) == (1 if budget < 3 else 0)


def test_nudge_due_only_after_spent_calls_with_tools():
    with_tools = Trace(id="t", question="q", answers=["a"], tools=utility_tools(["search"]))
    assert not with_tools.nudge_due(final=True)  # a budget of 0: the first turn is the last, nothing was spent
    with_tools.steps.append(Step(call=ToolCall(name="search", arguments={"query": "x"}), observation="o"))
    assert with_tools.nudge_due(final=True) and not with_tools.nudge_due(final=False)
    bare = Trace(id="t", question="q", answers=["a"], steps=with_tools.steps)
    assert not bare.nudge_due(final=True)  # tools off: no call budget to speak of


def test_toolactor_failure_mid_rollout_is_scored_not_raised(tok):
    trace, st = run_rollout(tok, actor_fn=lambda m: BackendError("openai:x: request timed out after 5s"))
    assert trace.error.startswith("toolactor: openai:x: request timed out")
    assert format_reward(trace) == 0.0 and efficiency_reward(trace) == 0.0  # the missing answer is format's
    assert len(st.completion_ids) == len(st.env_mask) > 0


def test_policy_that_never_stops_hits_the_budget(tok):
    class Rambler:
        async def sample(self, ids, max_new_tokens):
            return [tok.encode("blah")[0]] * max_new_tokens, False

    agent = RolloutAgent(Rambler(), tok, max_turn_tokens=16, max_completion_tokens=64)
    trace = asyncio.run(scripted_env([EX], system="s").rollout(EX, agent, "e"))
    assert trace.steps[0].parse_error.startswith("length:") and len(agent.episodes["e"].completion_ids) == 16


def test_lockstep_batches_wait_for_every_live_episode():
    """Episodes whose tools answer at different times still share one policy batch per turn; an episode
    that ends no longer holds the batch up."""
    batches = []
    alive = {"n": 3}
    batcher = MicroBatcher(lambda items: batches.append(sorted(items)) or items, 8, expected=lambda: alive["n"])

    async def episode(i, tool_delays):
        try:
            for turn, delay in enumerate(tool_delays):
                await batcher.submit((turn, i))
                await asyncio.sleep(delay)  # the tool call between two turns
        finally:
            alive["n"] -= 1
            batcher.notify()

    async def main():
        await asyncio.gather(episode(0, [0.05, 0.0]), episode(1, [0.0, 0.0]), episode(2, [0.02]))

    asyncio.run(main())
    assert batches == [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1)]]
    assert batcher.batch_rows == [3, 2]

    # without `expected` the same episodes get the second turn in pieces, as their tools come back
    batches.clear()
    alive["n"] = 3
    batcher = MicroBatcher(lambda items: batches.append(sorted(items)) or items, 8)
    asyncio.run(main())
    assert len(batches) > 2


def test_a_seed_gives_each_episode_the_same_sample_whatever_order_its_tools_answer_in():
    """A sampled batch's rows draw random numbers in row order, and episodes join a lockstep batch as their
    tools answer (a search runs on a thread): the sampler puts the rows in an order of their own."""
    import random

    from mtr.backends.batching import run_in_own_order
    from mtr.rollout import BatchedSampler, Sampled

    class RowOrderSampler(BatchedSampler):
        def generate(self, items):
            self.rows.append([ids for ids, _ in items])
            return [Sampled([ids[0], self.rng.randrange(10**9)], False) for ids, _ in items]

    def second_turns(tool_delays):
        sampler = RowOrderSampler(batch_size=8, episodes=3)
        sampler.rng, sampler.rows = random.Random(0), []

        async def episode(i):
            try:
                first = await sampler.sample([1, 5, 7], 4)  # the group's one prompt
                await asyncio.sleep(tool_delays[i])  # the tool call, answered sooner or later
                return (first, await sampler.sample([1, 5, 7, 20 + i], 4))
            finally:
                sampler.episode_ended()

        async def main():
            return await asyncio.gather(*[episode(i) for i in range(3)])

        return asyncio.run(main()), sampler.rows

    a, rows_a = second_turns([0.0, 0.02, 0.04])
    b, rows_b = second_turns([0.04, 0.0, 0.02])
    assert a == b and rows_a == rows_b and rows_a[1] == [[1, 5, 7, 20], [1, 5, 7, 21], [1, 5, 7, 22]]
    assert len({second.ids[1] for _, second in a}) == 3  # each row its own draw
    # the helper gives each output back to its own item
    assert run_in_own_order(["b", "c", "a"], lambda x: x, lambda xs: [x.upper() for x in xs]) == ["B", "C", "A"]


def test_a_local_backend_runs_a_batch_in_its_own_order_and_answers_each_caller():
    """A local backend's sampled batch is seeded with its first row's seed: rows sorted by prompt and seed
    first, so the callers' arrival order changes neither the seed nor which row draws what."""
    import random

    from mtr.backends import SamplingParams
    from mtr.backends.base import Completion
    from mtr.backends.batching import LocalBackend
    from mtr.config import RoleConfig

    class SeededRows(LocalBackend):
        kind = "seeded-rows"

        def load(self):
            pass

        def render(self, messages, tools=None):
            return messages[0]["content"]

        def _run_batch(self, requests):
            rng = random.Random(requests[0].params.seed)
            return [Completion(text=f"{r.prompt}:{rng.randrange(10**9)}") for r in requests]

    def answers(order):
        backend = SeededRows(RoleConfig(batch_size=8))

        async def main():
            calls = [backend.generate([[{"role": "user", "content": p}]], SamplingParams(seed=s))
                     for p, s in order]
            return await asyncio.gather(*calls)

        return {o[0][0].text.split(":")[0]: o[0][0].text for o in asyncio.run(main())}

    a = answers([("q2", 7), ("q1", 3), ("q3", 5)])
    assert a == answers([("q3", 5), ("q2", 7), ("q1", 3)]) and set(a) == {"q1", "q2", "q3"}


class FakeVLLMGeneration:
    """TRL's `trainer.vllm_generation` as the rollout uses it: token-id prompts in, completions with top-1
    logprobs out. Writes a call until the prompt holds a tool response, then an answer; tokens after EOS
    (vLLM never gives them, but a budget cut must never keep them) are there to be cut."""

    def __init__(self, tok):
        self.tok, self.batches = tok, []

    def generate(self, prompts, images, num_generations):
        assert images is None and num_generations == 1
        self.batches.append(len(prompts))
        completions = []
        for ids in prompts:
            text = TURNS[0] if "<tool_response>" not in self.tok.decode(ids) else TURNS[2]
            completions.append(self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id, 42])
        return prompts, completions, [[[-0.5]] * len(c) for c in completions], None


def test_vllm_rollout_batches_every_live_episode_and_returns_logprobs(tok, tmp_path):
    cfg = Config()
    cfg.grpo.trl["use_vllm"], cfg.grpo.max_tool_calls, cfg.grpo.max_turn_tokens = True, 2, 200
    examples = {f"q{i}": EX.model_copy(update={"id": f"q{i}", "question": f"{EX.question} ({i})"}) for i in range(2)}
    env = scripted_env(examples.values(), ScriptedBackend(actor=lambda m: json.dumps(
        {"results": [{"title": "MSU", "text": "1755."}]})), max_tool_calls=2)
    rollout = make_rollout_func(cfg, env, list(examples.values()), tok, tmp_path)
    gen = FakeVLLMGeneration(tok)
    trainer = SimpleNamespace(vllm_generation=gen, state=SimpleNamespace(global_step=0))
    prompts = [[{"role": "user", "content": ex.question}] for ex in examples.values() for _ in range(2)]
    out = rollout(prompts, trainer)
    assert gen.batches == [4, 4]  # two turns, each one call for all four episodes
    assert [e["steps"][-1]["answer"] for e in out["episode"]] == ["1755"] * 4
    for ids, mask, lps in zip(out["completion_ids"], out["env_mask"], out["logprobs"]):
        assert len(ids) == len(mask) == len(lps) and 42 not in ids
        assert all(lp == -0.5 for lp, m in zip(lps, mask) if m == 1)
        assert all(lp == 0.0 for lp, m in zip(lps, mask) if m == 0) and 0 in mask


def test_policy_for_generation_gives_the_live_lora_policy_in_eval_mode_and_restores_it():
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from mtr.rollout import policy_for_generation

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter: not the zero init
    x = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    with torch.no_grad():
        expected = model(x).logits
    model.train()
    trainer = SimpleNamespace(model_wrapped=model, accelerator=Accelerator(cpu=True),
                              args=SimpleNamespace(ds3_gather_for_generation=True))
    with policy_for_generation(trainer) as m, torch.no_grad():
        assert not m.training  # no dropout while sampling: the adapter's output, deterministic
        assert torch.allclose(m(x).logits, expected) and torch.allclose(m(x).logits, expected)
    assert model.training


def test_use_vllm_without_vllm_is_one_clear_line(tmp_path):
    cfg = Config()
    cfg.grpo.trl["use_vllm"] = True
    with pytest.raises(ValueError, match="grpo.trl.use_vllm: vLLM is not installed"):
        train_grpo(cfg, qa_file(tmp_path / "qa.jsonl"), tmp_path, tmp_path / "out")


def trace_with(steps, answers=("1755",)):
    return Trace(id="t", question="In what year was Moscow State University founded?", answers=list(answers),
                 steps=steps)


def call_step(query, obs, ok=True):
    return Step(call=ToolCall(name="search", arguments={"query": query}), observation=obs,
                checks=[Check(code="tool_exists", ok=True), Check(code="args_valid", ok=ok)])


def test_reward_components():
    good = trace_with([call_step("MSU", '{"text": "Founded in 1755."}'), Step(answer="1755")])
    assert answer_reward(good) == 1.0 and format_reward(good) == 1.0
    assert consistency_reward(good) == 1.0 and efficiency_reward(good) == 0.0
    unsupported = trace_with([call_step("MSU", '{"text": "A university."}'), Step(answer="1755")])
    assert consistency_reward(unsupported) == 0.0 and answer_reward(unsupported) == 1.0
    bad_args = trace_with([call_step("MSU", "{}", ok=False), Step(answer="1755")])
    assert format_reward(bad_args) == 0.5
    no_answer = trace_with([call_step("MSU", "{}")])
    assert format_reward(no_answer) == 0.5  # the missing answer is a missing turn
    over_budget = call_step("MSU", "{}")
    over_budget.checks.append(Check(code="step_budget", ok=False))
    assert format_reward(trace_with([call_step("MSU", "{}"), over_budget])) == pytest.approx(1 / 3)
    rambling = trace_with([Step(raw="blah", parse_error="no_action: neither <tool_call> nor <answer> found")])
    assert format_reward(rambling) == 0.0
    assert answer_reward(trace_with([Step(answer="Moscow 1755")]), "f1") == pytest.approx(2 / 3)


def test_consistency_reads_text_values_not_keys_and_handles_yes_no_and_quotes():
    # a JSON key is not evidence: the old definition found "results" and "text" in every observation
    keys = trace_with([call_step("x", '{"results": [{"title": "T", "text": "nothing"}]}'), Step(answer="results text")],
                      answers=["results text"])
    assert consistency_reward(keys) == 0.0
    # the answer's tokens must stand together, in order: scattered words are not a span
    scattered = trace_with([call_step("x", '{"text": "1755 was a year; Moscow is a city"}'), Step(answer="Moscow 1755")])
    assert consistency_reward(scattered) == 0.0
    # yes/no: supported when both compared entities were looked up
    q = "Were Scott Derrickson and Ed Wood of the same nationality?"
    both = Trace(id="t", question=q, answers=["yes"], steps=[
        call_step("Scott Derrickson", '{"text": "Scott Derrickson is an American director."}'),
        call_step("Ed Wood", '{"text": "Ed Wood was an American filmmaker."}'), Step(answer="yes")])
    one = Trace(id="t", question=q, answers=["yes"], steps=[both.steps[0], both.steps[2]])
    assert consistency_reward(both) == 1.0 and consistency_reward(one) == 0.0
    # evidence claimed, not observed: a fabricated quote in the answering thought
    quoting = trace_with([call_step("MSU", '{"text": "It was founded in 1755."}'),
                          Step(thought='The page says "the university opened its doors in 1755".', answer="1755")])
    honest = trace_with([call_step("MSU", '{"text": "It was founded in 1755."}'),
                         Step(thought='The page says "It was founded in 1755."', answer="1755")])
    assert consistency_reward(quoting) == 0.0 and consistency_reward(honest) == 1.0


def test_consistency_when_right_pays_only_beside_an_answer_that_scores():
    from mtr.config import parse_config

    obs = '{"text": "Founded in 1755 by Lomonosov."}'
    right = trace_with([call_step("MSU", obs), Step(answer="1755")])
    grounded_wrong = trace_with([call_step("MSU", obs), Step(answer="Lomonosov")])
    partly = trace_with([call_step("MSU", obs), Step(answer="1755 by Lomonosov")])
    plain = Rubric({"consistency": 1.0}, "f1")
    gated = Rubric.from_config(parse_config({"grpo": {"answer_metric": "f1", "consistency_when_right": True}}).grpo)
    assert plain.score(grounded_wrong)["consistency"] == 1.0 and gated.score(grounded_wrong)["consistency"] == 0.0
    assert gated.score(right)["consistency"] == 1.0 and gated.score(partly)["consistency"] == 1.0  # F1 > 0
    assert Rubric({"consistency": 1.0}, "em", consistency_when_right=True).score(partly)["consistency"] == 0.0
    assert gated.score(grounded_wrong)["total"] == pytest.approx(gated.score(grounded_wrong)["format"] * 0.5)


def test_efficiency_can_fire_below_the_call_limit_and_on_length():
    two_calls = trace_with([call_step("a", "{}"), call_step("b", "{}"), Step(answer="x")])
    assert efficiency_reward(two_calls, call_budget=1, call_penalty=0.1) == pytest.approx(-0.1)
    long = trace_with([call_step("a", "{}"), Step(answer="x")])
    long.meta["agent_tokens"] = 512
    assert efficiency_reward(long, call_budget=1, token_budget=256, token_penalty=0.2) == pytest.approx(-0.2)
    from mtr.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"call_budget \(2\) must be below max_tool_calls \(2\)"):
        parse_config({"grpo": {"max_tool_calls": 2, "call_budget": 2}})


def test_a_group_shares_one_world(tok):
    """The same call returns the same observation in every rollout of a group, whatever the simulator samples;
    two groups (or two steps) have their own worlds."""
    import itertools

    counter = itertools.count()
    backend = ScriptedBackend(actor=lambda m: json.dumps({"results": [{"title": "T", "text": f"obs {next(counter)}"}]}))
    env = scripted_env([EX], backend, max_tool_calls=2)
    turns = [TURNS[0], TURNS[2]]

    def group(world):
        agent = RolloutAgent(ScriptedSampler(tok, turns * 4), tok, max_turn_tokens=200, max_completion_tokens=2000)
        return asyncio.run(env.rollout_group([EX] * 4, agent, [1, 2, 3, 4], worlds=[world] * 4))

    first = group(7)
    assert len({t.steps[0].observation for t in first}) == 1 and backend.calls["actor"] == 1
    second = group(8)
    assert second[0].steps[0].observation != first[0].steps[0].observation and backend.calls["actor"] == 2


def test_nan_reward_fails_with_step_and_sample():
    funcs = Rubric({"answer": 1.0}, "em", call_budget=0, call_penalty=float("nan")).trl_reward_funcs()
    ep = trace_with([call_step("MSU", "{}"), Step(answer="1755")]).model_dump()

    class State:
        global_step = 7

    with pytest.raises(RewardError, match=r"reward efficiency is nan at step 7 for sample 0 \(question 't'"):
        funcs[3](prompts=[None], completions=[None], episode=[ep], trainer_state=State())


def draw(cfg, backend, path, data, needed=None):
    from mtr.data import load_qa

    env = Environment.from_config(cfg, "grpo", Pool(backend), path)
    try:
        chosen, failed = draw_questions(env, load_qa(data), needed, cfg.seed)
    finally:
        env.close()
    return [ex.id for ex in chosen], failed


def test_toolmaker_failures_are_skipped_and_counted(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=3)
    answers = iter([json.dumps(GOOD_TOOLS), "prose, not JSON", json.dumps(GOOD_TOOLS)])
    cfg = Config()
    cfg.tools.toolmaker_retries = 0
    b = ScriptedBackend(toolmaker=lambda m: next(answers))
    chosen, failed = draw(cfg, b, tmp_path / "tools.jsonl", data)
    assert len(chosen) == 2 and len(failed) == 1 and "not JSON" in next(iter(failed.values()))
    # made once: a second call (a resume) asks the ToolMaker nothing
    chosen2, failed2 = draw(cfg, ScriptedBackend(toolmaker=lambda m: 1 / 0), tmp_path / "tools.jsonl", data)
    assert chosen2 == chosen and failed2 == failed


def test_tools_are_made_only_for_the_questions_training_draws(tmp_path):
    from mtr.stages.grpo import questions_needed

    data = qa_file(tmp_path / "qa.jsonl", n=6)
    cfg = Config()
    cfg.tools.toolmaker_retries = 0
    t = {"max_steps": 2, "num_generations": 4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
    assert questions_needed(t) == 2 and questions_needed(t, world_size=2) == 4
    assert questions_needed({**t, "gradient_accumulation_steps": 3}) == 6
    answers = iter(["prose, not JSON"] + [json.dumps(GOOD_TOOLS)] * 5)
    b = ScriptedBackend(toolmaker=lambda m: next(answers))
    chosen, failed = draw(cfg, b, tmp_path / "tools.jsonl", data, needed=2)
    # the first drawn question failed, so one more was drawn in its place: 3 ToolMaker calls, not 6
    assert b.calls["toolmaker"] == 3 and len(chosen) == 2 and len(failed) == 1
    assert len((tmp_path / "tools.jsonl").read_text().splitlines()) == 3
    # a resume draws the same questions and asks the ToolMaker nothing
    again = ScriptedBackend(toolmaker=lambda m: 1 / 0)
    chosen2, failed2 = draw(cfg, again, tmp_path / "tools.jsonl", data, needed=2)
    assert chosen2 == chosen and failed2 == failed and again.calls["toolmaker"] == 0
    # with failures replaced by the utility tools, the failed question stays and no replacement is drawn
    cfg.tools.on_failure = "utilities"
    chosen3, failed3 = draw(cfg, again, tmp_path / "tools.jsonl", data, needed=2)
    assert len(chosen3) == 2 and not failed3 and set(failed) <= set(chosen3)


def test_a_toolmaker_server_failure_stops_without_drawing_replacements_and_a_rerun_retries(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=6)
    cfg = Config()
    cfg.tools.toolmaker_retries = 0

    def down(messages):
        raise BackendError("openai backend: connection refused")

    b = ScriptedBackend(toolmaker=down)
    with pytest.raises(ValueError, match=r"backend failed on 2 question\(s\), e\.g\. toolmaker: openai backend: "
                                         r"connection refused; .* a re-run retries"):
        draw(cfg, b, tmp_path / "tools.jsonl", data, needed=2)
    assert b.calls["toolmaker"] == 2  # no replacements drawn for a failure of the server
    back = ScriptedBackend()
    chosen, failed = draw(cfg, back, tmp_path / "tools.jsonl", data, needed=2)
    assert len(chosen) == 2 and not failed and back.calls["toolmaker"] == 2


@pytest.mark.model
def test_grpo_trains_two_steps_with_the_embedded_policy(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=3)  # 2 steps of one group draw 2 of the 3 questions
    cfg = Config()
    g = cfg.grpo
    g.trl = {"num_generations": 2, "per_device_train_batch_size": 2, "max_steps": 2, "max_completion_length": 96,
             "save_steps": 1, "save_total_limit": 1, "report_to": [], "learning_rate": 1e-5}
    g.max_turn_tokens, g.max_tool_calls, g.sample_every = 24, 2, 1
    init = policy_checkpoint(cfg)
    stats = train_grpo(cfg, data, init, tmp_path / "out", pool=Pool(ScriptedBackend()))
    assert stats["steps"] == 2 and stats["questions"] == 2
    assert stats["share_prompt"]  # a micro-batch holds the group: its prompt scored once
    assert "mtr_shared_prompt" not in (tmp_path / "out" / "config.json").read_text()  # a plain checkpoint
    assert len((tmp_path / "out" / "tools.jsonl").read_text().splitlines()) == 2
    log = [json.loads(x) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    step_logs = [e for e in log if "reward" in e]
    assert len(step_logs) == 2
    for name in ("answer", "format", "consistency", "efficiency"):
        assert f"rewards/{name}_reward/mean" in step_logs[0] and f"rewards/{name}_reward/std" in step_logs[0]
    assert "kl" in step_logs[0] and "episode/tool_calls" in step_logs[0] and "completions/clipped_ratio" in step_logs[0]
    assert all(math.isfinite(e["reward"]) for e in step_logs)
    samples = (tmp_path / "out" / "samples.jsonl").read_text().splitlines()
    assert samples and "trace" in json.loads(samples[0])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_training_without_tools_draws_questions_without_the_toolmaker(tmp_path):
    cfg = Config()
    cfg.grpo.tool_mode = "off"
    b = ScriptedBackend()
    chosen, failed = draw(cfg, b, tmp_path / "tools.jsonl", qa_file(tmp_path / "qa.jsonl", n=4), needed=2)
    assert len(chosen) == 2 and not failed and b.calls["toolmaker"] == 0


def test_solvable_first_puts_partly_right_questions_first_and_resumes(tmp_path, monkeypatch):
    import mtr.stages.grpo as grpo_stage
    from mtr.data import load_qa
    from mtr.stages.grpo import solvable_first

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answers": [a]}) + "\n"
                            for i, a in enumerate(["1800", "1755", "x", "1755 AD"])))
    cfg = Config()
    cfg.grpo.tool_mode = "off"
    backend = ScriptedBackend(agent=lambda m: "<think>I recall it.</think>\n<answer>1755</answer>")
    env = Environment.from_config(cfg, "grpo", Pool(backend), tmp_path / "tools.jsonl")

    def order():
        ranked, n = solvable_first(cfg, env, load_qa(data), tmp_path / "init", tmp_path / "solvable.jsonl", backend)
        return [ex.id for ex in ranked], n

    assert order() == (["q1", "q3", "q0", "q2"], 2) and backend.calls["agent"] == 4
    assert order() == (["q1", "q3", "q0", "q2"], 2) and backend.calls["agent"] == 4  # a re-run reads the answers
    # ... and loads no policy
    monkeypatch.setattr(grpo_stage, "BackendPool", lambda *a, **k: pytest.fail("a policy was loaded"))
    ranked, _ = solvable_first(cfg, env, load_qa(data), tmp_path / "init", tmp_path / "solvable.jsonl")
    assert [ex.id for ex in ranked] == ["q1", "q3", "q0", "q2"]
    env.close()


def test_another_draw_takes_the_initial_policys_answers_and_answers_only_what_they_lack(tmp_path):
    from mtr.data import load_qa
    from mtr.stages.grpo import solvable_first, take_answers

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answers": [a]}) + "\n"
                            for i, a in enumerate(["1800", "1755", "1755"])))
    first = tmp_path / "d1" / "solvable.jsonl"
    first.parent.mkdir()
    first.write_text("".join(json.dumps({"id": q, "prediction": p, "f1": f}) + "\n"
                             for q, p, f in (("q0", "1800", 1.0), ("q1", "no", 0.0))))
    mine = tmp_path / "d2" / "solvable.jsonl"
    mine.parent.mkdir()
    assert not take_answers(mine, tmp_path / "missing.jsonl") and not mine.exists()
    assert take_answers(mine, first)
    other = tmp_path / "d1" / "other.jsonl"
    other.write_text(json.dumps({"id": "q2", "prediction": "1755", "f1": 1.0}) + "\n")
    assert not take_answers(mine, other) and mine.read_text() == first.read_text()  # answers of its own are kept
    cfg = Config()
    cfg.grpo.tool_mode = "off"
    backend = ScriptedBackend(agent=lambda m: "<think>I recall it.</think>\n<answer>1755</answer>")
    env = Environment.from_config(cfg, "grpo", Pool(backend), tmp_path / "tools.jsonl")
    ranked, n = solvable_first(cfg, env, load_qa(data), tmp_path / "init", mine, backend)
    env.close()
    # q0 and q1 as the first draw answered them (q1 wrong, though the scripted policy would now be right)
    assert [ex.id for ex in ranked] == ["q0", "q2", "q1"] and n == 2 and backend.calls["agent"] == 1


def test_an_arm_with_the_other_precheck_takes_only_the_answers_the_precheck_did_not_change(tmp_path):
    """The pre-check changes an episode only where it calls a tool with invalid arguments: an arm with the
    pre-check off takes the other setting's answers to the other questions, and answers those itself."""
    from mtr.data import load_qa
    from mtr.jsonl import read_jsonl
    from mtr.stages.grpo import solvable_first, take_answers

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answers": ["1755"]}) + "\n"
                            for i in range(3)))

    def agent(msgs):  # question 1 calls the tool with a number where a string is due, the others correctly
        if any(m["role"] == "tool" or m["content"].startswith("Result of") for m in msgs if m["role"] != "system"):
            return "<think>Found it.</think>\n<answer>1755</answer>"
        institution = 5 if "Question 1?" in json.dumps(msgs) else "MSU"
        return ("<think>Look it up.</think>\n<tool_call>\n" + json.dumps(
            {"name": "get_founding_year", "arguments": {"institution": institution}}) + "\n</tool_call>")

    def answers(precheck: bool, path, source=None):
        cfg = Config()
        cfg.grpo.tool_mode, cfg.grpo.precheck = "simulated", precheck
        backend = ScriptedBackend(agent=agent)
        env = Environment.from_config(cfg, "grpo", Pool(backend), tmp_path / "tools.jsonl")
        try:
            solvable_first(cfg, env, load_qa(data), tmp_path / "init", path, backend, answers_from=source)
        finally:
            env.close()
        return {r["id"]: r for r in read_jsonl(path)}, backend

    first, _ = answers(True, tmp_path / "on" / "solvable.jsonl")
    assert {q: (r["precheck"], r["invalid_args"]) for q, r in first.items()} == {
        "q0": (True, 0), "q1": (True, 1), "q2": (True, 0)}
    # with the pre-check off: q0 and q2 taken, q1 answered afresh (its invalid call now played)
    mine, backend = answers(False, tmp_path / "off" / "solvable.jsonl", tmp_path / "on" / "solvable.jsonl")
    assert {q: r["precheck"] for q, r in mine.items()} == {"q0": True, "q1": False, "q2": True}
    assert mine["q1"]["invalid_args"] == 1 and backend.calls["agent"] == 2 and backend.calls["actor"] >= 1
    # the same setting takes every answer; a row from before the fields were recorded only with the pre-check on
    same = tmp_path / "same.jsonl"
    assert take_answers(same, tmp_path / "on" / "solvable.jsonl", True) == 3
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"id": "q0", "prediction": "1755", "f1": 1.0}) + "\n")
    assert take_answers(tmp_path / "old-on.jsonl", old, True) == 1
    assert take_answers(tmp_path / "old-off.jsonl", old, False) == 0 and read_jsonl(tmp_path / "old-off.jsonl") == []


def _call(name, institution):
    return ("<think>Look it up.</think>\n<tool_call>\n"
            + json.dumps({"name": name, "arguments": {"institution": institution}}) + "\n</tool_call>")


def _answered_after_a_result(first_turn):
    def agent(msgs):
        seen = any(m["role"] == "tool" or m["content"].startswith("Result of") for m in msgs if m["role"] != "system")
        return "<think>Found it.</think>\n<answer>1755</answer>" if seen else first_turn
    return agent


@pytest.mark.parametrize("agent, invalid", [
    (_answered_after_a_result(_call("get_founding_year", "MSU")), 0),  # a valid call
    (_answered_after_a_result(_call("no_such_tool", "MSU")), 0),  # an unknown tool: refused either way
    (_answered_after_a_result("<tool_call>\n{not json\n</tool_call>"), 0),  # a turn that does not parse
    (lambda msgs: _call("get_founding_year", "MSU"), 0),  # calls past the budget
    (_answered_after_a_result(_call("get_founding_year", 5)), 1),  # invalid arguments: played only without it
])
def test_the_precheck_changes_an_episode_only_where_it_counts_an_invalid_call(tmp_path, agent, invalid):
    """What take_answers relies on: an episode with no call to a tool with invalid arguments is the same with
    the pre-check on or off."""
    from mtr.agents import PolicyAgent
    from mtr.data import load_qa

    ex = load_qa(qa_file(tmp_path / "qa.jsonl", n=1))[0]

    def episode(precheck: bool):
        cfg = Config()
        cfg.grpo.tool_mode, cfg.grpo.precheck = "simulated", precheck
        backend = ScriptedBackend(agent=agent)
        env = Environment.from_config(cfg, "grpo", Pool(backend), tmp_path / "tools.jsonl")
        try:
            trace = asyncio.run(env.rollout(ex, PolicyAgent(backend), ex.id, seed=0))
        finally:
            env.close()
        return trace.meta["invalid_args"], [(s.call and (s.call.name, s.call.arguments), s.observation, s.player, s.parse_error)
                                            for s in trace.steps], trace.final_answer

    on, off = episode(True), episode(False)
    assert on[0] == off[0] == invalid
    assert (on[1:] == off[1:]) == (invalid == 0)


def test_another_runs_answers_cut_short_in_their_last_line_are_taken_but_that_one(tmp_path):
    from mtr.jsonl import read_jsonl
    from mtr.stages.grpo import take_answers

    source = tmp_path / "theirs.jsonl"
    source.write_text(json.dumps({"id": "q0", "prediction": "1755", "f1": 1.0}) + "\n" + '{"id": "q1", "pred')
    assert take_answers(tmp_path / "mine.jsonl", source) == 1 and [r["id"] for r in read_jsonl(tmp_path / "mine.jsonl")] == ["q0"]
    source.write_text('{"id": "q1", "pred\n' + json.dumps({"id": "q0", "prediction": "1755", "f1": 1.0}) + "\n")
    with pytest.raises(ValueError, match=r"theirs.jsonl:1: corrupt record"):
        take_answers(tmp_path / "mine2.jsonl", source)
    assert not (tmp_path / "mine2.jsonl").exists()


def test_draw_questions_keeps_the_order_given_without_shuffle(tmp_path):
    from mtr.data import load_qa

    cfg = Config()
    cfg.grpo.tool_mode = "off"
    env = Environment.from_config(cfg, "grpo", Pool(ScriptedBackend()), tmp_path / "tools.jsonl")
    examples = load_qa(qa_file(tmp_path / "qa.jsonl", n=6))[::-1]
    assert [ex.id for ex in draw_questions(env, examples, 3, 0, shuffle=False)[0]] == ["q5", "q4", "q3"]
    assert [ex.id for ex in draw_questions(env, examples, 3, 0)[0]] != ["q5", "q4", "q3"]  # seeded shuffle
    env.close()


def test_solvable_first_runs_the_policys_turns_in_lockstep(tmp_path):
    """As in evaluation: a batch of the initial policy's turns waits for one of every episode in flight."""
    from mtr.data import load_qa
    from mtr.stages.grpo import solvable_first

    cfg = Config()
    cfg.grpo.tool_mode, cfg.grpo.concurrency = "off", 3
    backend = ScriptedLocal(agent=lambda m: "<think>I recall it.</think>\n<answer>1755</answer>")
    env = Environment.from_config(cfg, "grpo", Pool(backend), tmp_path / "tools.jsonl")
    ranked, n = solvable_first(cfg, env, load_qa(qa_file(tmp_path / "qa.jsonl", n=4)), tmp_path / "init",
                               tmp_path / "solvable.jsonl", backend)
    env.close()
    assert n == 4 and backend.lockstep_seen == [3, 1]  # three at once, then the last alone
    assert backend._batcher.expected is None


def test_a_batch_in_lockstep_runs_after_stall_s_with_what_is_pending():
    """An episode that waits on something the batch would bring never sends its request: after `stall_s` what
    is pending runs, a batch per key (the second without a second wait), with a warning, instead of hanging."""
    batches = []
    batcher = MicroBatcher(lambda items: batches.append(items) or items, 8, key=lambda item: item[0],
                           expected=lambda: 3, describe="hf:x")
    batcher.stall_s = 0.2

    async def main():
        return await asyncio.wait_for(asyncio.gather(batcher.submit("a1"), batcher.submit("b1")), timeout=10)

    with pytest.warns(RuntimeWarning, match=r"hf:x: a batch in lockstep waited 0.2 s for 3 requests and ran with "
                                            r"the 2 pending"):
        assert asyncio.run(main()) == ["a1", "b1"]
    assert batches == [["a1"], ["b1"]] and batcher.stalls == 1 and not batcher._overdue
