import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtr.backends import BackendError
from mtr.config import Config
from mtr.data import DataError, load_qa
from mtr.jsonl import JsonlAppender, read_jsonl
from mtr.rundir import RunDirError
from mtr.stages.filter import run_filter
from mtr.stages.synth import synthesize

from scripted import Pool, ScriptedBackend, ScriptedLocal, qa_file

HERE = Path(__file__).resolve().parent


def run(cfg, data, out, backend, **kw):
    """`mtr synth`: synthesis, then the filter beside the traces; the two stages' figures together."""
    stats = asyncio.run(synthesize(cfg, data, out, pool=Pool(backend), **kw))
    return {**stats, **run_filter(cfg, out / "traces.jsonl")}


def test_end_to_end_with_scripted_models(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=3)
    b = ScriptedBackend()
    stats = run(Config(), data, tmp_path / "run", b)
    assert stats["questions"] == 3 and stats["episodes"] == 3 and stats["kept"] == 3
    assert b.calls["toolmaker"] == 3 and b.calls["actor"] == 3
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    t = traces[0]
    assert [c["code"] for c in t["steps"][0]["checks"]] == ["parse_ok", "tool_exists", "args_valid",
                                                            "observation_valid"]
    assert t["meta"]["domain"] == "history" and t["meta"]["roles"]["toolactor"] == "scripted"
    assert {x["function"]["name"] for x in t["tools"]} == {"search", "get_founding_year"}
    # sft.jsonl: the conversational format, as datasets reads it
    import datasets

    ds = datasets.load_dataset("json", data_files=str(tmp_path / "run" / "sft.jsonl"), split="train")
    assert ds.column_names == ["messages", "tools", "id", "teacher"] and len(ds) == 3
    assert ds[0]["teacher"] == "model"  # which teacher made each row travels with it
    assert isinstance(ds[0]["tools"], str)
    roles = [m["role"] for m in ds[0]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert ds[0]["messages"][-1]["content"].endswith("<answer>1755</answer>")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["inputs"]["data"]["sha256"] and manifest["config"]["seed"] == 0 and "torch" in manifest["versions"]
    # the manifest holds what synthesis reads, not the other stages' settings
    assert set(manifest["config"]) == {"seed", "synth", "tools", "roles"}
    assert set(manifest["config"]["roles"]) == {"toolmaker", "toolactor", "autoagent"}
    assert json.loads((tmp_path / "run" / "filter.json").read_text())["kept"] == 3
    # the tools were made once per question and kept for every later stage
    assert [r["id"] for r in read_jsonl(tmp_path / "run" / "tools.jsonl")] == ["q0", "q1", "q2"]
    assert [v["rejected"] for v in read_jsonl(tmp_path / "run" / "verdicts.jsonl")] == [None, None, None]


def test_toolmaker_prose_is_retried_then_recorded_failed(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=2)
    b = ScriptedBackend(toolmaker=lambda m: "Sure! Here are some tools you could use.")
    cfg = Config()
    cfg.tools.toolmaker_retries = 2
    stats = run(cfg, data, tmp_path / "run", b)
    assert b.calls["toolmaker"] == 2 * 3 and b.calls["agent"] == 0
    assert stats["rejected"] == {"toolmaker_failed": 2} and stats["toolmaker_failed_questions"] == 2
    # each episode's verdict, for the report's filter by rejection reason
    assert {v["rejected"] for v in read_jsonl(tmp_path / "run" / "verdicts.jsonl")} == {"toolmaker_failed"}
    t = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]
    assert t["error"].startswith("toolmaker failed after 3 attempts: output: not JSON")


def test_toolmaker_leaking_the_answer_is_rejected(tmp_path):
    leaky = {"domain": "d", "tools": [{"name": "get_year", "description": "Always returns 1755.",
                                       "arguments": [{"name": "x", "type": "string", "description": "x"}],
                                       "returns": [{"name": "y", "type": "string", "description": "y"}]}]}
    b = ScriptedBackend(toolmaker=lambda m: json.dumps(leaky))
    stats = run(Config(), qa_file(tmp_path / "qa.jsonl", n=1), tmp_path / "run", b)
    assert stats["rejected"] == {"toolmaker_failed": 1}
    assert "leaks the gold answer" in read_jsonl(tmp_path / "run" / "traces.jsonl")[0]["error"]


def test_agent_never_sees_the_gold_answer(tmp_path):
    b = ScriptedBackend()
    run(Config(), qa_file(tmp_path / "qa.jsonl", n=1, answers=["Zanzibar-Gold"]), tmp_path / "run", b)
    for msgs in b.prompts:
        assert "Zanzibar-Gold" not in json.dumps(msgs)


def test_invalid_call_never_reaches_the_toolactor(tmp_path):
    def agent(msgs):
        results = [m for m in msgs if m["role"] == "user" and m["content"].startswith("Result of")]
        if not results:
            return json.dumps({"thought": "t", "tool_call": {"name": "get_founding_year", "arguments": {"institution": 5}}})
        assert "invalid tool call" in results[-1]["content"] and "args_valid" in results[-1]["content"]
        return json.dumps({"thought": "t", "answer": "1755"})

    b = ScriptedBackend(agent=agent)
    stats = run(Config(), qa_file(tmp_path / "qa.jsonl", n=1), tmp_path / "run", b)
    assert b.calls["actor"] == 0
    step = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]["steps"][0]
    assert {c["code"]: c["ok"] for c in step["checks"]}["args_valid"] is False
    assert stats["rejected"] == {"unsupported_answer": 1}  # no valid observation, so nothing supports 1755
    # the pre-check ablation: the same invalid call reaches the ToolActor (its failed check still recorded)
    cfg = Config()
    cfg.synth.precheck = False
    b = ScriptedBackend(agent=lambda m: json.dumps({"thought": "t", "answer": "1755"}) if any(
        x["role"] == "user" and x["content"].startswith("Result of") for x in m) else json.dumps(
        {"thought": "t", "tool_call": {"name": "get_founding_year", "arguments": {"institution": 5}}}))
    run(cfg, qa_file(tmp_path / "qa2.jsonl", n=1), tmp_path / "run2", b)
    step = read_jsonl(tmp_path / "run2" / "traces.jsonl")[0]["steps"][0]
    assert b.calls["actor"] >= 1 and step["player"] == "toolactor"
    assert {c["code"]: c["ok"] for c in step["checks"]}["args_valid"] is False


def test_toolactor_memoises_and_sees_earlier_observations(tmp_path):
    def agent(msgs):
        n = sum(1 for m in msgs if m["role"] == "user" and m["content"].startswith("Result of"))
        queries = ["MSU", "Tokarev", "MSU"]
        if n < 3:
            return json.dumps({"thought": "t", "tool_call": {"name": "search", "arguments": {"query": queries[n]}}})
        return json.dumps({"thought": "t", "answer": "1755"})

    counter = iter(range(100))
    b = ScriptedBackend(agent=agent, actor=lambda m: json.dumps(
        {"results": [{"title": "T", "text": f"observation {next(counter)}"}]}))
    run(Config(), qa_file(tmp_path / "qa.jsonl", n=1), tmp_path / "run", b)
    steps = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]["steps"]
    assert b.calls["actor"] == 2  # the third call repeats the first
    assert steps[2]["observation"] == steps[0]["observation"]
    actor_prompts = [p for p in b.prompts if "You are simulating the tool" in p[0]["content"]]
    assert "observation 0" in actor_prompts[1][0]["content"]  # the second call saw the first result


def test_step_budget(tmp_path):
    b = ScriptedBackend(agent=lambda m: json.dumps({"thought": "t", "tool_call": {"name": "search",
                                                                                  "arguments": {"query": "x"}}}))
    cfg = Config()
    cfg.synth.max_tool_calls = 2
    stats = run(cfg, qa_file(tmp_path / "qa.jsonl", n=1), tmp_path / "run", b)
    steps = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]["steps"]
    assert len(steps) == 3
    assert any(c["code"] == "step_budget" and not c["ok"] for c in steps[-1]["checks"])
    assert stats["rejected"] == {"no_answer": 1}


def test_server_timeout_mid_run_is_counted_and_nothing_is_lost(tmp_path):
    state = {"n": 0}

    def actor(msgs):
        state["n"] += 1
        if state["n"] == 2:
            return BackendError("openai:m@x: request timed out after 5s (3 retries)")
        return json.dumps({"results": [{"title": "T", "text": "It was founded in 1755."}]})

    stats = run(Config(), qa_file(tmp_path / "qa.jsonl", n=3), tmp_path / "run", ScriptedBackend(actor=actor))
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    assert len(traces) == 3
    assert sum(1 for t in traces if t.get("error", "").startswith("toolactor: openai:m@x: request timed out")) == 1
    assert stats["rejected"] == {"episode_error": 1} and stats["kept"] == 2


def test_resume_skips_finished_and_repairs_a_torn_record(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=4)
    out = tmp_path / "run"
    run(Config(), data, out, ScriptedBackend(), limit=2)
    # a kill -9 in the middle of writing the third record
    with (out / "traces.jsonl").open("a") as f:
        f.write('{"id": "q2#0", "question": "In what ye')
    with pytest.raises(RunDirError):  # limit is part of the run's identity
        run(Config(), data, out, ScriptedBackend(), limit=4)
    b = ScriptedBackend()
    run(Config(), data, out, b, limit=2)
    assert b.calls["toolmaker"] == 0  # nothing to redo
    ids = [r["id"] for r in read_jsonl(out / "traces.jsonl")]
    assert ids.count("q0#0") == 1 and ids.count("q1#0") == 1 and len(ids) == 2


def test_kill_9_mid_run_then_resume(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=12)
    out = tmp_path / "run"
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(HERE)!r})
from scripted import Pool, ScriptedBackend
from mtr.config import Config
from mtr.stages.synth import synthesize
cfg = Config(); cfg.synth.concurrency = 2
asyncio.run(synthesize(cfg, {str(data)!r}, __import__('pathlib').Path({str(out)!r}), pool=Pool(ScriptedBackend(delay=0.15))))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    traces = out / "traces.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if traces.exists() and traces.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = traces.read_text().count("\n")
    assert 3 <= before < 12
    b = ScriptedBackend()
    cfg = Config()
    cfg.synth.concurrency = 2
    stats = asyncio.run(synthesize(cfg, data, out, pool=Pool(b)))
    ids = [r["id"] for r in read_jsonl(traces)]
    assert sorted(ids) == sorted(f"q{i}#0" for i in range(12)) and len(set(ids)) == 12
    assert stats["episodes"] == 12 and b.calls["toolmaker"] <= 12 - before


def test_different_config_in_same_dir_is_refused(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=1)
    run(Config(), data, tmp_path / "run", ScriptedBackend())
    cfg = Config()
    cfg.synth.max_tool_calls = 7
    with pytest.raises(RunDirError, match="config differs"):
        run(cfg, data, tmp_path / "run", ScriptedBackend())
    run(cfg, data, tmp_path / "run", ScriptedBackend(), overwrite=True)
    assert len(read_jsonl(tmp_path / "run" / "traces.jsonl")) == 1


def hotpot_record(tmp_path, answers=("1755",)):
    rec = {"id": "h1", "question": "In what year was the university where Sergei Tokarev taught founded?",
           "answers": list(answers), "supporting_facts": [["Sergei Tokarev", 0], ["Moscow State University", 1]],
           "context": [{"title": "Moscow State University", "text": "It was founded in 1755.", "is_supporting": True}]}
    data = tmp_path / "h.jsonl"
    data.write_text(json.dumps(rec) + "\n")
    return data


def passages(by_query):
    """A ToolActor that answers each search from `by_query` (its first matching key), like a search engine."""
    def actor(msgs):
        content = msgs[0]["content"]
        # the call's own arguments come last in the prompt (earlier results are listed before them)
        at = {key: content.rfind(f'"query": "{key}"') for key in by_query}
        key = max(at, key=at.get, default=None)
        if key is not None and at[key] >= 0:
            return json.dumps({"results": [{"title": key, "text": by_query[key]}]})
        return json.dumps({"results": [{"title": "?", "text": "Nothing relevant."}]})
    return actor


def test_scripted_teacher_reads_its_evidence(tmp_path):
    cfg = Config()
    cfg.synth.teacher = "scripted"
    b = ScriptedBackend(actor=passages({
        "Sergei Tokarev": "Sergei Tokarev was a professor at Moscow State University.",
        "Moscow State University": "Lomonosov Moscow State University was founded in 1755. It is in Moscow."}))
    stats = run(cfg, hotpot_record(tmp_path), tmp_path / "run", b)
    t = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]
    assert [s["call"]["arguments"]["query"] for s in t["steps"][:2]] == ["Sergei Tokarev", "Moscow State University"]
    last = t["steps"][2]
    # the answer as the observation writes it, the thought quoting the sentence it came from
    assert last["answer"] == "1755" and '"Lomonosov Moscow State University was founded in 1755."' in last["thought"]
    assert t["meta"]["teacher"] == "scripted" and b.calls["agent"] == 0 and stats["kept"] == 1


def test_the_final_turn_shows_the_nudge_the_agent_saw_in_traces_and_sft_data(tmp_path):
    """With the call budget spent, the agent is asked for its answer (FINAL_NUDGE): the trace records it, and
    the SFT conversation holds it before the answer, as the policy will see it in GRPO and evaluation."""
    from mtr.prompts import FINAL_NUDGE
    from mtr.trace import Trace

    cfg = Config()
    cfg.synth.teacher, cfg.synth.max_tool_calls = "scripted", 2
    b = ScriptedBackend(actor=passages({
        "Sergei Tokarev": "Sergei Tokarev was a professor at Moscow State University.",
        "Moscow State University": "Lomonosov Moscow State University was founded in 1755. It is in Moscow."}))
    run(cfg, hotpot_record(tmp_path), tmp_path / "run", b)
    t = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]
    assert [s["nudged"] for s in t["steps"]] == [False, False, True] and t["steps"][2]["answer"] == "1755"
    row = read_jsonl(tmp_path / "run" / "sft.jsonl")[0]
    roles = [(m["role"], m["content"] if m["role"] == "user" else "") for m in row["messages"]]
    assert roles[-2:] == [("user", FINAL_NUDGE), ("assistant", "")]
    assert sum(1 for r, _ in roles if r == "user") == 2  # the question and the nudge
    back = Trace.from_conversation({"messages": row["messages"], "tools": json.loads(row["tools"])})
    assert [s.nudged for s in back.steps] == [False, False, True]
    cfg.synth.max_tool_calls = 3  # a budget not spent: no nudge
    run(cfg, hotpot_record(tmp_path), tmp_path / "run3", b)
    assert not any(s["nudged"] for s in read_jsonl(tmp_path / "run3" / "traces.jsonl")[0]["steps"])


def test_the_same_traces_in_another_order_make_the_same_sft_file(tmp_path):
    """Synthesis appends episodes as they finish and draws each call's id at random, so two runs of the same
    questions write their traces in different orders with different ids; SFT shuffles its rows with a seed,
    and would train on other batches. The filter writes them sorted, their calls numbered: the same bytes."""
    data = qa_file(tmp_path / "qa.jsonl", n=4)
    run(Config(), data, tmp_path / "a", ScriptedBackend())
    run(Config(), data, tmp_path / "b", ScriptedBackend())
    lines = (tmp_path / "b" / "traces.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "b" / "traces.jsonl").write_text("".join(reversed(lines)))
    assert (tmp_path / "a" / "traces.jsonl").read_bytes() != (tmp_path / "b" / "traces.jsonl").read_bytes()
    run_filter(Config(), tmp_path / "b" / "traces.jsonl")
    sft = (tmp_path / "a" / "sft.jsonl").read_bytes()
    assert sft == (tmp_path / "b" / "sft.jsonl").read_bytes()
    rows = read_jsonl(tmp_path / "a" / "sft.jsonl")
    assert [r["id"] for r in rows] == ["q0#0", "q1#0", "q2#0", "q3#0"]
    # each call still paired with its observation
    msgs = rows[0]["messages"]
    calls = [c["id"] for m in msgs for c in m.get("tool_calls") or ()]
    assert calls == ["call_0"] and [m["tool_call_id"] for m in msgs if m["role"] == "tool"] == calls
    assert [r["id"] for r in read_jsonl(tmp_path / "b" / "verdicts.jsonl")] == ["q0#0", "q1#0", "q2#0", "q3#0"]


def test_scripted_teacher_searches_on_then_gives_up_and_the_filter_rejects(tmp_path):
    cfg = Config()
    cfg.synth.teacher, cfg.synth.max_tool_calls = "scripted", 4
    b = ScriptedBackend(actor=passages({}))  # no search finds anything
    stats = run(cfg, hotpot_record(tmp_path), tmp_path / "run", b)
    t = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]
    queries = [s["call"]["arguments"]["query"] for s in t["steps"] if "call" in s]
    # the supporting titles, then the entities the question names, within the budget
    assert queries == ["Sergei Tokarev", "Moscow State University"]
    assert t["steps"][-1]["answer"] == "unknown"  # never the gold answer it did not read
    assert stats["rejected"] == {"unsupported_answer": 1} and stats["kept"] == 0


def test_scripted_teacher_answers_yes_no_once_both_entities_are_observed(tmp_path):
    rec = {"id": "y1", "question": "Were Scott Derrickson and Ed Wood of the same nationality?", "answers": ["yes"],
           "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]]}
    data = tmp_path / "y.jsonl"
    data.write_text(json.dumps(rec) + "\n")
    cfg = Config()
    cfg.synth.teacher = "scripted"
    b = ScriptedBackend(actor=passages({"Scott Derrickson": "Scott Derrickson is an American director.",
                                        "Ed Wood": "Ed Wood was an American filmmaker."}))
    stats = run(cfg, data, tmp_path / "run", b)
    t = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]
    assert len([s for s in t["steps"] if "call" in s]) == 2 and t["steps"][-1]["answer"] == "yes"
    assert '"Scott Derrickson is an American director."' in t["steps"][-1]["thought"] and stats["kept"] == 1


def test_a_model_teachers_unsupported_answer_is_rejected(tmp_path):
    # the default scripted agent answers 1755 after a search whose result does not say it
    b = ScriptedBackend(actor=lambda m: json.dumps({"results": [{"title": "T", "text": "A university in Moscow."}]}))
    stats = run(Config(), qa_file(tmp_path / "qa.jsonl", n=2), tmp_path / "run", b)
    assert stats["rejected"] == {"unsupported_answer": 2}


@pytest.mark.parametrize("line,msg", [
    ('{"id": "a", "question": "q", "answers": ["x"]}\n{"id": "b", "question": ', "qa.jsonl:2: malformed JSON"),
    ('{"id": "a", "answers": ["x"]}', "qa.jsonl:1: field question: Field required"),
    ('{"id": "a", "question": "q", "answers": []}', "qa.jsonl:1: field answers"),
    ('{"id": "a", "question": "q", "answers": ["x"]}\n{"id": "a", "question": "r", "answers": ["y"]}',
     "qa.jsonl:2: duplicate id 'a' (first on line 1)"),
    ('[1, 2]', "qa.jsonl:1: expected a JSON object"),
    ('', "no QA records"),
])
def test_bad_qa_input(tmp_path, line, msg):
    p = tmp_path / "qa.jsonl"
    p.write_text(line)
    with pytest.raises(DataError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_qa(p)


def test_appender_repairs_and_dedupes(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "x": [1, ')
    a = JsonlAppender(p)
    assert a.done == {"a", "b"} and a.repaired_bytes > 0
    a.write({"id": "c"})
    a.close()
    assert [r["id"] for r in read_jsonl(p)] == ["a", "b", "c"]


def test_backend_failures_are_retried_on_resume(tmp_path):
    """A server outage fails episodes; once it is back, a resume runs exactly those again."""
    data = qa_file(tmp_path / "qa.jsonl", n=3)
    down = {"on": True}

    def toolmaker(msgs):
        if down["on"] and "university 1" in msgs[0]["content"]:
            return BackendError("openai:m@x: cannot reach the server (3 retries); is it running?")
        from scripted import GOOD_TOOLS
        return json.dumps(GOOD_TOOLS)

    stats = run(Config(), data, tmp_path / "run", ScriptedBackend(toolmaker=toolmaker))
    assert stats["rejected"] == {"toolmaker_failed": 1}
    down["on"] = False
    b = ScriptedBackend(toolmaker=toolmaker)
    stats = run(Config(), data, tmp_path / "run", b)
    assert b.calls["toolmaker"] == 1 and stats["kept"] == 3 and stats["episodes"] == 3



def test_stats_say_how_many_rows_each_batch_of_a_local_backend_held(tmp_path):
    data = qa_file(tmp_path / "qa.jsonl", n=4)
    cfg = Config()
    cfg.synth.concurrency = 4
    b = ScriptedLocal()
    stats = asyncio.run(synthesize(cfg, data, tmp_path / "run", pool=Pool(b)))
    assert stats["episodes"] == 4 and stats["failed_episodes"] == 0
    [(name, batches)] = stats["batches"].items()
    assert name == "scripted-local:embedded"
    assert batches["rows"] == sum(b.scripted.calls.values()) == 16  # ToolMaker, 2 agent turns, ToolActor
    assert batches["mean_rows"] > 1 and batches["batches"] == len(b._batcher.batch_rows)


def test_a_model_teachers_turns_go_in_lockstep_but_not_with_several_episodes_a_question(tmp_path):
    """A batch waits for a request of every episode in flight (the ToolMaker's and the ToolActor's on the same
    weights count). Two episodes of one question wait on one ToolMaker request together: in lockstep that
    batch would wait for a second request that never comes, so synthesis cuts batches as they come."""
    data = qa_file(tmp_path / "qa.jsonl", n=4)
    cfg = Config()
    cfg.synth.concurrency = 3
    b = ScriptedLocal()
    stats = asyncio.run(asyncio.wait_for(synthesize(cfg, data, tmp_path / "one", pool=Pool(b)), timeout=60))
    assert stats["episodes"] == 4 and stats["failed_episodes"] == 0
    assert b.lockstep_seen[0] == 3 and None not in b.lockstep_seen and b.lockstep_seen[-1] == 1
    # ToolMaker, teacher, ToolActor, teacher: each a batch of the three in flight, then of the last episode
    assert b._batcher.batch_rows == [3, 3, 3, 3, 1, 1, 1, 1]
    assert b._batcher.expected is None  # left as it was

    cfg.synth.episodes_per_question = 2
    b = ScriptedLocal()
    stats = asyncio.run(asyncio.wait_for(synthesize(cfg, data, tmp_path / "two", pool=Pool(b)), timeout=60))
    assert stats["episodes"] == 8 and stats["failed_episodes"] == 0
    assert set(b.lockstep_seen) == {None}
    assert b.scripted.calls["toolmaker"] == 4  # once a question


def test_the_scripted_teacher_leaves_the_batches_as_they_come(tmp_path):
    """With the scripted teacher the only requests are the ToolMaker's and the ToolActor's, which not every
    episode makes: nothing to wait for."""
    cfg = Config()
    cfg.synth.teacher = "scripted"
    b = ScriptedLocal()
    asyncio.run(asyncio.wait_for(synthesize(cfg, hotpot_record(tmp_path), tmp_path / "run", pool=Pool(b)), timeout=60))
    assert b.scripted.calls["actor"] and b.scripted.calls["agent"] == 0 and set(b.lockstep_seen) == {None}
