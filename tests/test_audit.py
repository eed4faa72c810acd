"""`mtr audit`: the same calls answered by the ToolActor and by the retriever, and the transfer gap."""

import json

from typer.testing import CliRunner

from mtr.audit import claims, run_audit, summarise, transfer_gap
from mtr.cli import app
from mtr.livetools import LiveSearch
from mtr.retrieval import BM25Retriever, build_corpus, read_corpus
from mtr.toolactor import ToolActor
from mtr.toolmaker import utility_tools
from mtr.trace import Check, Step, ToolCall, Trace

from scripted import ScriptedBackend
from test_retrieval import corpus_file

QA = {"id": "q1", "question": "In what year was the university where Sergei Tokarev was a professor founded?",
      "answers": ["1755"], "supporting_facts": [["Moscow State University", 0], ["Sergei Tokarev", 0]]}


def traces_file(tmp_path):
    step = Step(thought="t", call=ToolCall(name="search", arguments={"query": "Moscow State University founded"}),
                observation="{}", checks=[Check(code="tool_exists", ok=True), Check(code="args_valid", ok=True)])
    bad = Step(call=ToolCall(name="search", arguments={"q": 1}),
               checks=[Check(code="tool_exists", ok=True), Check(code="args_valid", ok=False)])
    trace = Trace(id="q1", question=QA["question"], answers=["1755"], tools=utility_tools(["search"]),
                  steps=[step, bad, Step(answer="1755")])
    p = tmp_path / "predictions.jsonl"
    p.write_text(json.dumps({"mode": "simulated", "trace": trace.model_dump(mode="json")}) + "\n"
                 + json.dumps({"mode": "live", "trace": trace.model_dump(mode="json")}) + "\n")
    return p


def test_claims_are_names_and_numbers_of_the_text_values():
    obs = json.dumps({"results": [{"title": "Moscow State University", "text": "It was founded in 1755 by Lomonosov."}]})
    assert claims(obs) == ["1755", "lomonosov", "moscow state university"]  # not the keys, not "It"
    assert "results" not in claims(obs) and "title" not in claims(obs)


def test_audit_compares_simulated_and_live_on_the_same_calls(tmp_path):
    (tmp_path / "qa.jsonl").write_text(json.dumps(QA) + "\n")
    build_corpus([], tmp_path / "c", passages=read_corpus(corpus_file(tmp_path)))
    retriever = BM25Retriever(tmp_path / "c")
    # the simulator invents a wrong year and a name the passages do not have
    actor = ToolActor(ScriptedBackend(actor=lambda m: json.dumps(
        {"results": [{"title": "Moscow State University", "text": "Founded in 1802 by Peter Smith."}]})))
    res = run_audit(traces_file(tmp_path), tmp_path / "qa.jsonl", tmp_path / "audit", actor, LiveSearch(retriever),
                    limit=10)
    fig = res["overall"]
    assert fig["calls"] == 1  # the invalid call and the live-mode copy are not audited
    assert fig["answer_contained_pct"] == {"simulated": 0.0, "live": 100.0}
    assert fig["supporting_title_pct"] == {"simulated": 100.0, "live": 100.0}
    # of "moscow state university", "1802", "peter smith", only the university is in the passages
    assert fig["claims"] == 3 and round(fig["supported_claims_pct"]) == 33
    assert fig["schema_valid_pct"]["simulated"] == 100.0 and fig["median_seconds"]["live"] >= 0
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["examples"][0]["live"].count("1755")


def test_transfer_gap_is_live_minus_simulated():
    rows = [{"benchmark": "hotpotqa", "mode": "simulated", "n": 100, "em": 5.0, "f1": 10.0},
            {"benchmark": "hotpotqa", "mode": "live", "n": 100, "em": 8.0, "f1": 9.0}]
    [g] = transfer_gap({"rows": rows})
    assert g["em_gap"] == 3.0 and g["f1_gap"] == -1.0 and g["n"] == 100


def test_summarise_splits_search_from_generated_tools():
    row = {"tool": "x", "answer_contained": {"simulated": True, "live": False},
           "supporting_title": {"simulated": False, "live": True}, "claims": 2, "claims_supported": 1,
           "schema_valid": {"simulated": True, "live": True}, "seconds": {"simulated": 1.0, "live": 0.1}}
    s = summarise([row, {**row, "tool": "search"}])
    assert set(s["by_tool"]) == {"search", "generated tools"} and s["overall"]["supported_claims_pct"] == 50.0


def test_audit_command_with_given_calls(tmp_path):
    (tmp_path / "qa.jsonl").write_text(json.dumps(QA) + "\n")
    corpus = corpus_file(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"retriever: {{corpus: {corpus}}}\nroles:\n  toolactor: {{backend: openai, model: m, "
                   "base_url: 'http://127.0.0.1:9/v1', max_retries: 0, timeout_s: 1}\n")
    r = CliRunner().invoke(app, ["audit", "--data", str(tmp_path / "qa.jsonl"), "--out", str(tmp_path / "a"),
                                 "--calls", str(traces_file(tmp_path)), "-c", str(cfg)])
    # the ToolActor's server is down: a one-line error, not a traceback
    assert r.exit_code == 2 and "cannot reach the server" in r.output
