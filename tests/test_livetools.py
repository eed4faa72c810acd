"""Real tools beside simulated ones: live and hybrid episodes, retrieval grounding, tool failures, modes."""

import asyncio
import json

import pytest

from mtr.config import ConfigError, parse_config
from mtr.env import Environment
from mtr.livetools import LiveSearch, call_query
from mtr.retrieval import BM25Retriever, RemoteRetriever, build_corpus, read_corpus
from mtr.toolactor import ToolActor
from mtr.toolmaker import QuestionTools, ToolStore, compile_tool, utility_tools
from mtr.trace import QAExample, ToolCall, ToolSchema

from scripted import GOOD_TOOLS, ScriptedBackend
from servers import FakeRetrievalServer, free_port
from test_retrieval import PASSAGES, corpus_file

EX = QAExample(id="q1", question="In what year was the university where Sergei Tokarev was a professor founded?",
               answers=["1755"], supporting_facts=[["Moscow State University", 0]])


@pytest.fixture
def retriever(tmp_path):
    build_corpus([], tmp_path / "c", passages=read_corpus(corpus_file(tmp_path)))
    return BM25Retriever(tmp_path / "c")


class Caller:
    """An agent that makes the given calls, then answers."""

    def __init__(self, calls):
        self.calls = calls

    async def next_step(self, trace, final):
        from mtr.trace import Step

        i = len(trace.steps)
        if i < len(self.calls) and not final:
            name, args = self.calls[i]
            return Step(thought="t", call=ToolCall(name=name, arguments=args))
        return Step(thought="t", answer="1755")


def store_with_generated():
    store = ToolStore(None)
    generated = ToolSchema.model_validate(compile_tool(GOOD_TOOLS["tools"][0]))
    store.made[EX.id] = QuestionTools(id=EX.id, tools=utility_tools(["search"]) + [generated])
    return store


def test_hybrid_plays_search_live_and_grounds_the_generated_tool_in_retrieval(retriever):
    backend = ScriptedBackend(actor=lambda m: json.dumps({"year": 1755}))
    env = Environment(store_with_generated(), ToolActor(backend, grounding="retrieval", retriever=retriever), 3,
                      mode="hybrid", live={"search": LiveSearch(retriever, top_k=2)})
    agent = Caller([("search", {"query": "Sergei Tokarev professor"}),
                    ("get_founding_year", {"institution": "Moscow State University"})])
    trace = asyncio.run(env.rollout(EX, agent))
    search, generated = trace.steps[0], trace.steps[1]
    assert search.player == "live:bm25" and json.loads(search.observation)["results"][0]["title"] == "Sergei Tokarev"
    assert generated.player == "toolactor" and backend.calls["actor"] == 1  # only the generated tool is simulated
    actor_prompt = backend.prompts[-1][0]["content"]
    assert "Reference passages" in actor_prompt and "founded in 1755" in actor_prompt  # grounded in retrieval
    assert trace.meta["tool_mode"] == "hybrid"


def test_live_mode_offers_only_the_tools_a_real_backend_plays(retriever):
    env = Environment(store_with_generated(), ToolActor(ScriptedBackend()), 3, mode="live",
                      live={"search": LiveSearch(retriever)})
    trace = asyncio.run(env.rollout(EX, Caller([("search", {"query": "Moscow State University founded"})])))
    assert [t.name for t in trace.tools] == ["search"] and trace.steps[0].player == "live:bm25"
    assert "1755" in trace.steps[0].observation and trace.meta["tool_mode"] == "live"


def test_a_retriever_that_fails_is_a_counted_tool_failure_and_the_episode_goes_on():
    down = RemoteRetriever(f"http://127.0.0.1:{free_port()}/retrieve", max_retries=1, backoff_s=0.01)
    env = Environment(store_with_generated(), ToolActor(ScriptedBackend()), 3, mode="live",
                      live={"search": LiveSearch(down)})
    trace = asyncio.run(env.rollout(EX, Caller([("search", {"query": "x"})])))
    check = [c for c in trace.steps[0].checks if c.code == "observation_valid"][0]
    assert not check.ok and "cannot reach the server" in check.detail
    assert trace.final_answer == "1755" and trace.error is None


def test_a_share_of_training_episodes_plays_live(retriever):
    env = Environment(store_with_generated(), ToolActor(ScriptedBackend()), 3, live_share=0.5,
                      live={"search": LiveSearch(retriever)})
    modes = [asyncio.run(env.rollout(EX, Caller([]), f"e{i}", seed=i)).meta["tool_mode"] for i in range(40)]
    assert 8 < modes.count("hybrid") < 32 and set(modes) == {"hybrid", "simulated"}
    again = [asyncio.run(env.rollout(EX, Caller([]), f"e{i}", seed=i)).meta["tool_mode"] for i in range(40)]
    assert again == modes  # the draw is seeded


def test_an_environment_asked_for_live_tools_has_them_where_its_stage_trains_on_simulated_ones(tmp_path, retriever):
    # GRPO against simulated tools, its questions judged with live ones (train_grpo's solvable_mode)
    from scripted import Pool

    cfg = parse_config({"retriever": {"corpus": str(tmp_path / "c")},
                        "grpo": {"tool_mode": "simulated", "grounding": "none"}})
    assert not cfg.grpo.uses_retriever()
    env = Environment.from_config(cfg, "grpo", Pool(ScriptedBackend()), tmp_path / "tools.jsonl", mode="live")
    trace = asyncio.run(env.rollout(EX, Caller([("search", {"query": "Moscow State University founded"})]), "e0"))
    assert trace.meta["tool_mode"] == "live" and "1755" in trace.steps[0].observation
    assert trace.steps[0].player.startswith("live")
    env.close()


def test_remote_search_player(tmp_path):
    server = FakeRetrievalServer(PASSAGES)
    try:
        live = LiveSearch(RemoteRetriever(server.url), top_k=1, max_chars=30)
        [p] = asyncio.run(live.passages("Cahiers du cinema"))
        assert p["title"] == "Cahiers du cinema" and len(p["text"]) <= 30 and p["text"].endswith("...")
    finally:
        server.close()


def test_call_query_reads_the_argument_values():
    assert call_query(ToolCall(name="f", arguments={"a": "Moscow", "b": [1755, {"c": "MSU"}], "d": True})) == \
        "Moscow 1755 MSU"


@pytest.mark.parametrize("text,expected", [
    ({"synth": {"grounding": "context"}}, "synth.grounding: Value error, context is now `oracle`"),
    ({"eval": {"grounding": "oracle"}}, "eval: Value error, grounding: oracle hands the ToolActor the record's own"),
    ({"eval": {"modes": ["tools-on", "sometimes"]}}, "eval.modes.1"),
    ({"grpo": {"live_share": 1.5}}, "grpo.live_share"),
    ({"retriever": {"kind": "remote"}}, "retriever: Value error, a remote retriever needs `url`"),
])
def test_bad_tool_settings_are_one_line(text, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        parse_config(text, "c.yaml")
    assert parse_config({"eval": {"grounding": "oracle", "allow_oracle": True}}).eval.grounding == "oracle"


def test_calculator_computes_arithmetic_and_nothing_else():
    from mtr.livetools import Calculator

    calc = Calculator()
    tool = utility_tools(["calculate"])[0]

    def run(expr):
        return asyncio.run(calc.observe(None, tool, ToolCall(name="calculate", arguments={"expression": expr}), {}))

    text, check, _ = run("2021 - 1755")
    assert json.loads(text) == {"value": 266} and check.ok
    for bad in ('__import__("os").system("true")', "open('x')", "9 ** 9 ** 9", "'a' * 3", ""):
        text, check, _ = run(bad)
        assert not check.ok and "cannot compute" in text


def test_lookup_returns_the_article_with_that_title(retriever):
    from mtr.livetools import LiveLookup

    [p] = asyncio.run(LiveLookup(retriever).passages("sergei tokarev"))
    assert p["title"] == "Sergei Tokarev" and asyncio.run(LiveLookup(retriever).passages("No Such Title")) == []


def test_the_toolmaker_chooses_utilities_for_the_domain_and_can_be_switched_off():
    from mtr.toolmaker import ToolMaker

    chooser = ScriptedBackend(toolmaker=lambda m: json.dumps({**GOOD_TOOLS, "utilities": ["calculate"]}))
    made = asyncio.run(ToolMaker(chooser, utilities=["search", "lookup", "calculate"]).make(EX))
    assert [t.name for t in made.tools] == ["search", "calculate", "get_founding_year"] and made.error is None
    prompt = chooser.prompts[0][0]["content"]
    assert "always has this tool: search" in prompt and "lookup (" in prompt and "calculate (" in prompt
    off = ScriptedBackend()
    made = asyncio.run(ToolMaker(off, utilities=["search", "lookup"], enabled=False).make(EX))
    assert [t.name for t in made.tools] == ["search", "lookup"] and off.calls["toolmaker"] == 0
