import asyncio
import json
import time

import pytest
from typer.testing import CliRunner

from mtr.backends import Completion
from mtr.backends.batching import LocalBackend
from mtr.cli import app
from mtr.config import Config, RoleConfig
from mtr.data import DataError, data_dirs, load_qa, resolve_benchmark
from mtr.rubric import slot_disagreements
from mtr.rundir import RunDirError
from mtr.stages.evaluate import compare, evaluate
from mtr.jsonl import JsonlAppender, read_jsonl, run_pool
from mtr.trace import Step, ToolCall, Trace

from scripted import Pool, ScriptedBackend, ScriptedLocal, qa_file


def hermes_policy(msgs):
    system = msgs[0]["content"]
    if "from your own knowledge" in system:  # tools-off
        return "<think>I recall it.</think>\n<answer>1700</answer>"
    tool_msgs = [m for m in msgs if m["role"] == "tool"]
    if not tool_msgs:
        return '<think>Search first.</think>\n<tool_call>\n{"name": "search", "arguments": {"query": "university 0"}}'
    return "<think>Found.</think>\n<answer>1755</answer>"


def cfg_for(tmp_path, n=2, modes=("tools-on", "tools-off")):
    cfg = Config()
    cfg.eval.benchmarks = [str(qa_file(tmp_path / "qa.jsonl", n=n))]
    cfg.eval.modes = list(modes)
    return cfg


def test_tools_on_and_off_with_scripted_policy(tmp_path):
    cfg = cfg_for(tmp_path)
    b = ScriptedBackend(agent=hermes_policy)
    res = asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(b)))
    rows = {r["mode"]: r for r in res["rows"]}
    assert rows["tools-on"]["em"] == 100.0 and rows["tools-off"]["em"] == 0.0
    assert rows["tools-on"]["mean_calls"] == 1.0 and rows["tools-off"]["mean_calls"] == 0.0
    assert rows["tools-on"]["malformed_pct"] == 0.0
    preds = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert len(preds) == 4 and {p["mode"] for p in preds} == {"tools-on", "tools-off"}
    on = next(p for p in preds if p["mode"] == "tools-on")
    assert on["trace"]["steps"][0]["call"]["name"] == "search" and on["gold"] == ["1755"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert md.splitlines()[0].startswith("| mode |") and "avg EM" in md
    # the tools-off policy never sees tools
    off_prompts = [p for p in b.prompts if "from your own knowledge" in p[0]["content"]]
    assert off_prompts and all("# Tools" not in json.dumps(p) for p in off_prompts)


def test_resume_does_not_redo_or_duplicate(tmp_path):
    cfg = cfg_for(tmp_path, n=3, modes=("tools-off",))
    asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(ScriptedBackend(agent=hermes_policy))))
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    (tmp_path / "run" / "predictions.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])
    b = ScriptedBackend(agent=hermes_policy)
    res = asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(b)))
    assert b.calls["agent"] == 1 and res["rows"][0]["n"] == 3
    keys = [r["key"] for r in read_jsonl(tmp_path / "run" / "predictions.jsonl")]
    assert len(keys) == len(set(keys)) == 3


def test_a_larger_limit_adds_questions_and_a_smaller_one_is_refused(tmp_path):
    cfg = cfg_for(tmp_path, n=3, modes=("tools-off",))
    cfg.eval.limit = 1
    asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(ScriptedBackend(agent=hermes_policy))))
    cfg.eval.limit = 3
    b = ScriptedBackend(agent=hermes_policy)
    res = asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(b)))
    assert b.calls["agent"] == 2 and res["rows"][0]["n"] == 3  # only the two new questions ran
    cfg.eval.limit = 2
    with pytest.raises(RunDirError, match="eval.limit=3: a smaller eval.limit"):
        asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(ScriptedBackend(agent=hermes_policy))))
    cfg.eval.limit, cfg.eval.max_tool_calls = 3, cfg.eval.max_tool_calls + 1
    with pytest.raises(RunDirError, match="config differs"):  # any other change is still another run
        asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(ScriptedBackend(agent=hermes_policy))))


def test_a_mode_added_runs_only_its_episodes_and_a_mode_dropped_is_refused(tmp_path):
    cfg = cfg_for(tmp_path, n=2, modes=("tools-off",))
    asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(ScriptedBackend(agent=hermes_policy))))
    cfg.eval.modes = ["tools-off", "tools-on"]
    b = ScriptedBackend(agent=hermes_policy)
    res = asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(b)))
    # tools-on's two episodes ran (a search, then the answer: two turns each); tools-off's were kept
    assert b.calls["agent"] == 4 and {r["mode"]: r["n"] for r in res["rows"]} == {"tools-off": 2, "tools-on": 2}
    assert all("from your own knowledge" not in p[0]["content"] for p in b.prompts)
    cfg.eval.modes = ["tools-on"]
    with pytest.raises(RunDirError, match="a smaller eval.modes"):  # tools-off's records would stay
        asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(ScriptedBackend(agent=hermes_policy))))


def test_malformed_policy_output_is_counted(tmp_path):
    cfg = cfg_for(tmp_path, n=2, modes=("tools-on",))
    res = asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(ScriptedBackend(agent=lambda m: "I dunno!!"))))
    r = res["rows"][0]
    assert r["malformed_pct"] == 100.0 and r["no_answer_pct"] == 100.0 and r["em"] == 0.0


def test_slot_disagreement_definition():
    t = Trace(id="x", question="Who was president when Citibank was founded?", steps=[
        Step(call=ToolCall(name="search", arguments={"query": "Citibank founded"}),
             observation='{"text": "Citibank was founded in 1812."}'),
        Step(call=ToolCall(name="search", arguments={"query": "president 1812"}), observation="{}"),
        Step(call=ToolCall(name="search", arguments={"query": "Barack Obama"}), observation="{}"),
        Step(answer="James Madison")])
    assert slot_disagreements(t) == (1, 3)  # only "Barack Obama" is unsupported


def test_compare_prints_differences(tmp_path):
    cfg = cfg_for(tmp_path, n=2, modes=("tools-on",))
    asyncio.run(evaluate(cfg, tmp_path / "a", pool=Pool(ScriptedBackend(agent=hermes_policy))))
    asyncio.run(evaluate(cfg, tmp_path / "b", pool=Pool(ScriptedBackend(agent=lambda m: "<answer>1755</answer>"))))
    [row] = compare(tmp_path / "a", tmp_path / "b")
    assert row["em"] == (100.0, 100.0, 0.0) and row["mean_calls"] == (1.0, 0.0, -1.0)
    r = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0 and "-1.00" in r.output


@pytest.mark.skipif(not any((d / "2wiki_dev_500.jsonl").is_file() for d in data_dirs()),
                    reason="the shared benchmark files (../shared/data/benchmarks or $MTR_DATA_DIR) are not here")
def test_named_benchmarks_load_and_training_splits_are_disjoint_from_evaluation(tmp_home):
    from mtr.data import split_of

    assert len(load_qa(resolve_benchmark("bamboogle"))) == 125
    for name in ("hotpotqa", "2wiki", "musique"):
        test, train = load_qa(resolve_benchmark(name)), load_qa(resolve_benchmark(f"{name}-train"))
        assert len(test) + len(train) == 500 and 0.3 < len(train) / 500 < 0.5
        assert not {e.id for e in test} & {e.id for e in train}
        assert all(split_of(e.id) == "eval" for e in test) and all(split_of(e.id) == "train" for e in train)
    hp = load_qa(resolve_benchmark("hotpotqa"), limit=3)
    assert hp[0].context and hp[0].supporting_facts
    # the same split on every machine: a property of the ids alone
    assert split_of("5ae143ed55429920d5234360") == split_of("5ae143ed55429920d5234360")


@pytest.mark.parametrize("arg,msg", [
    ("triviaqa", "unknown benchmark 'triviaqa'"),
    ("/nonexistent/x.jsonl", "no such file"),
])
def test_bad_benchmark_names(arg, msg):
    with pytest.raises(DataError, match=msg):
        resolve_benchmark(arg)


def test_path_that_is_not_a_qa_file(tmp_path):
    p = tmp_path / "notes.jsonl"
    p.write_text('{"title": "x", "text": "y"}\n')
    with pytest.raises(DataError, match="notes.jsonl:1: field id: Field required"):
        load_qa(p)
    r = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "run"), "--benchmarks", str(p)])
    assert r.exit_code == 2 and "notes.jsonl:1" in r.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    r = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "run2"), "--benchmarks", str(empty)])
    assert r.exit_code == 2 and "empty file" in r.output


def test_shipped_copy_is_used_without_shared_data(monkeypatch, tmp_path):
    import mtr.data as data

    monkeypatch.setattr(data, "data_dirs", lambda: [tmp_path / "nothing", data.REPO_ROOT / "data" / "benchmarks"])
    assert len(load_qa(resolve_benchmark("bamboogle"))) == 125
    assert resolve_benchmark("hotpotqa").name.startswith("hotpotqa_dev_first40.eval.")
    with pytest.raises(DataError, match="musique_dev_500.jsonl not found"):
        resolve_benchmark("musique")


def test_results_table_is_readable_in_80_columns(tmp_path, monkeypatch):
    from rich.console import Console

    import mtr.stages.evaluate as ev

    narrow = Console(width=80, record=True, file=open(tmp_path / "screen.txt", "w"))
    monkeypatch.setattr(ev, "console", narrow)
    row = {"n": 125, "em": 12.5, "f1": 20.25, "cover_em": 15.0, "malformed_pct": 33.3, "invalid_call_pct": 1.0,
           "slot_disagreement_pct": 5.0, "no_answer_pct": 58.3, "error_pct": 0.0, "mean_calls": 1.5,
           "mean_tokens": 240.0, "answered_pct": 41.7, "well_formed_pct": 25.0, "parse_valid_pct": 90.0}
    rows = [{"benchmark": b, "mode": m, **row} for b in ("hotpotqa", "2wiki", "musique", "bamboogle")
            for m in ("tools-on", "tools-off")]
    ev.print_results({"rows": rows}, tmp_path)
    screen = narrow.export_text()
    assert "…" not in screen and max(len(line) for line in screen.splitlines()) <= 80
    header = next(line for line in screen.splitlines() if "benchmark" in line)
    assert all(w in header for w in ("EM", "answered", "well-formed", "parsed", "calls"))  # one line, none wrapped
    for word in ("benchmark", "mode", "EM", "F1", "answered", "well-formed", "parsed", "calls", "bamboogle",
                 "tools-off", "41.7", "25.0", "90.0", "results.md"):
        assert word in screen, word


def test_one_policy_with_simulated_live_and_hybrid_tools(tmp_path):
    from test_retrieval import corpus_file

    cfg = cfg_for(tmp_path, modes=("simulated", "live", "hybrid", "tools-off"))
    cfg.retriever.corpus = str(corpus_file(tmp_path))
    b = ScriptedBackend(agent=hermes_policy)
    res = asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(b)))
    assert {r["mode"] for r in res["rows"]} == {"simulated", "live", "hybrid", "tools-off"}
    preds = {(p["mode"], p["id"]): p for p in read_jsonl(tmp_path / "run" / "predictions.jsonl")}
    players = {m: {s.get("player") for s in preds[(m, "q0")]["trace"]["steps"] if s.get("call")}
               for m in ("simulated", "live", "hybrid")}
    assert players == {"simulated": {"toolactor"}, "live": {"live:bm25"}, "hybrid": {"live:bm25"}}
    assert [t["function"]["name"] for t in preds[("live", "q0")]["trace"]["tools"]] == ["search", "lookup", "calculate"]
    assert preds[("hybrid", "q0")]["trace"]["meta"]["tool_mode"] == "hybrid"
    tools = json.loads((tmp_path / "run" / "results.json").read_text())["tools"]
    assert tools["live"].startswith("live: the utility tools only") and tools["tools-off"] == "none"
    assert "ToolActor" in tools["simulated"] and "BM25" in tools["hybrid"]
    # the simulated and hybrid episodes of a question play the same tools, made once
    n = len({p["id"] for p in preds.values()})
    assert b.calls["toolmaker"] == n and len(read_jsonl(tmp_path / "run" / "tools" / "qa.jsonl")) == n
    assert preds[("simulated", "q0")]["trace"]["tools"] == preds[("hybrid", "q0")]["trace"]["tools"]


class TurnRecorder(LocalBackend):
    """A local backend whose batches are recorded: each request's prompt is its conversation's last message."""

    kind = "recorder"

    def __init__(self):
        super().__init__(RoleConfig(backend="hf", batch_size=8))
        self.batches: list[list[str]] = []

    def render(self, messages, tools=None):
        return messages[-1]["content"]

    def _run_batch(self, requests):
        self.batches.append(sorted(r.prompt for r in requests))
        return [Completion(text="ok") for _ in requests]


def test_run_pool_in_lockstep_batches_a_turn_of_every_item_in_flight(tmp_path):
    """Two at a time: A (two turns, a slow tool between), B (one turn), C (two turns, a slower tool). In
    lockstep C's first turn, which starts when B ends, waits for A's second; the last batch holds C alone.
    Cut as requests come, the same items take four batches. Either way no batch waits for an item that
    ended, and the backend is left as it was."""
    turns = {"A": [0.05, 0.0], "B": [0.0], "C": [0.15, 0.0]}

    async def run(backend, lockstep):
        async def worker(name):
            for t, delay in enumerate(turns[name]):
                await backend.chat([{"role": "user", "content": f"{name}{t}"}], backend.params())
                await asyncio.to_thread(time.sleep, delay)  # the tool call after the turn
            return {"id": name}

        out = JsonlAppender(tmp_path / f"{lockstep}.jsonl", id_key="id")
        try:
            return await asyncio.wait_for(run_pool(list(turns), worker, out, 2, "t",
                                                   lockstep=backend if lockstep else None), timeout=10)
        finally:
            out.close()

    stepped = TurnRecorder()
    assert asyncio.run(run(stepped, True)) == 3
    assert stepped.batches == [["A0", "B0"], ["A1", "C0"], ["C1"]]
    assert stepped._batcher.expected is None  # a later stage's batches are cut as before

    cut = TurnRecorder()
    asyncio.run(run(cut, False))
    assert cut.batches == [["A0", "B0"], ["C0"], ["A1"], ["C1"]]


def test_run_pool_in_lockstep_leaves_the_backend_as_it_was_when_an_item_fails(tmp_path):
    backend = TurnRecorder()

    async def worker(name):
        if name == "bad":
            raise ValueError("no such question")
        await asyncio.sleep(0.05)
        await backend.chat([{"role": "user", "content": name}], backend.params())
        return {"id": name}

    async def run():
        out = JsonlAppender(tmp_path / "p.jsonl", id_key="id")
        try:
            await asyncio.wait_for(run_pool(["bad", "ok"], worker, out, 2, "t", lockstep=backend), timeout=10)
        finally:
            out.close()

    with pytest.raises(ValueError, match="no such question"):
        asyncio.run(run())
    assert backend._batcher.expected is None


def test_two_modes_tools_are_made_before_the_episodes_so_no_batch_waits_for_them(tmp_path):
    """The ToolMaker on the policy's own weights (one batcher), two modes playing its tools: were they made
    inside the episodes, both modes' episodes of a question would wait on one ToolMaker request, and a batch of
    the policy's turns in lockstep would wait `stall_s` for the second."""
    cfg = cfg_for(tmp_path, modes=("tools-on", "simulated"))  # tools-on: the eval section's mode, simulated
    b = ScriptedLocal(agent=hermes_policy)
    b._batcher.stall_s = 5.0
    t0 = time.perf_counter()
    res = asyncio.run(asyncio.wait_for(evaluate(cfg, tmp_path / "run", pool=Pool(b)), timeout=60))
    assert {r["mode"]: r["em"] for r in res["rows"]} == {"tools-on": 100.0, "simulated": 100.0}
    assert b._batcher.stalls == 0 and time.perf_counter() - t0 < 5.0
    assert b.scripted.calls["toolmaker"] == 2 and set(b.lockstep_seen[1:]) != {None}  # then lockstep


def test_no_tools_are_made_for_a_mode_that_makes_no_calls(tmp_path):
    cfg = cfg_for(tmp_path, modes=("simulated",))
    cfg.eval.max_tool_calls = 0
    b = ScriptedBackend(agent=hermes_policy)
    asyncio.run(evaluate(cfg, tmp_path / "run", pool=Pool(b)))
    assert b.calls["toolmaker"] == 0 and b.calls["agent"] == 2


def test_run_pool_status_shows_the_mean_so_far_not_the_last_record(tmp_path):
    """The bar's status after each record: two wrong answers of three read as a mean EM of 33.3 %, where the
    last record's own EM (0) read as the pass's."""
    from mtr.jsonl import running_mean

    shown = []
    status = running_mean("em", "mean EM", percent=True)

    async def worker(item):
        return {"id": item[0], "em": item[1]}

    def spy(record):
        shown.append(status(record))
        return shown[-1]

    async def run():
        out = JsonlAppender(tmp_path / "s.jsonl", id_key="id")
        try:
            return await run_pool([("a", 1.0), ("b", 0.0), ("c", 0.0)], worker, out, 1, "t", status=spy)
        finally:
            out.close()

    assert asyncio.run(run()) == 3
    assert shown == ["mean EM 100.0 %", "mean EM 50.0 %", "mean EM 33.3 %"]
    # an episode that failed (no score) counts as wrong; without `percent`, the mean itself (F1 in [0, 1])
    f1 = running_mean("f1", "mean F1")
    assert [f1({"f1": 0.5}), f1({"f1": None}), f1({"f1": 1.0})] == ["mean F1 0.50", "mean F1 0.25", "mean F1 0.50"]
