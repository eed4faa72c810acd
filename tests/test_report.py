"""report.html from a run directory: content, escaping, and what a half-written run gets."""

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from mtr.cli import app
from mtr.report import build_report, safe_json, write_report
from reportdata import HOSTILE, make_run


def episodes_in(html: str) -> list[dict]:
    m = re.search(r'<script type="application/json" id="episodes-data">(.*?)</script>', html, re.S)
    assert m, "episode data block missing"
    return json.loads(m.group(1))


def test_report_has_table_plots_funnel_traces_and_manifest(tmp_path):
    run = make_run(tmp_path / "run")
    html = write_report(run).read_text()
    assert 'id="results-table"' in html and "this run: trained policy, tools-on" in html
    assert "Search-R1-base" in html and "43.2" in html  # the papers' numbers beside ours
    # SFT loss + 5 GRPO plots (reward, KL, length, calls, malformed) + the funnel, all inline SVG
    assert html.count("<svg") == 7
    assert "SFT training loss" in html and "GRPO reward: total and components" in html
    assert "rejected: wrong_answer" in html
    eps = episodes_in(html)
    assert {e["source"] for e in eps} == {"synthesis", "eval", "grpo samples"}
    synth = {e["id"]: e for e in eps if e["source"] == "synthesis"}
    assert synth["q2"]["status"] == "rejected" and synth["q2"]["reason"] == "wrong_answer"
    assert synth["q0"]["status"] == "kept" and synth["q0"]["correct"] is True
    assert synth["q2"]["correct"] is False
    assert "manifest.json" in html and "Not in this report" not in html
    # nothing to fetch: it opens offline (XML namespace URIs in the SVG are names, never loaded)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\((?!#)|@import""", html)


def test_hostile_model_text_is_escaped_not_markup(tmp_path):
    html = build_report(make_run(tmp_path / "run"))
    assert HOSTILE not in html
    assert "<script>window.__xss" not in html and "<img src=x" not in html
    # the only </script> tags are the two blocks of the page itself
    assert html.count("</script>") == 2
    obs = [s["observation"] for e in episodes_in(html) for s in e["steps"] if s["observation"]]
    assert HOSTILE in obs  # shown verbatim, as text


def test_safe_json_round_trips_and_has_no_angle_brackets():
    value = {"a": "</script><!-- & \u2028 x", "b": [1, None]}
    text = safe_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value


def test_half_written_run_says_what_is_missing(tmp_path):
    run = make_run(tmp_path / "run")
    shutil.rmtree(run / "grpo")
    (run / "eval" / "results.json").unlink()
    (run / "eval" / "stage_done.json").unlink()
    (run / "synth" / "verdicts.jsonl").unlink()
    with (run / "synth" / "traces.jsonl").open("a") as f:
        f.write('{"id": "torn", "quest')  # a crash mid-write
    html = build_report(run)
    assert "Not in this report" in html
    assert "grpo/ not found" in html
    assert "eval/results.json not found" in html
    assert "verdicts.jsonl not found" in html
    assert "1 unreadable line(s) skipped" in html
    assert "started, not finished" in html  # eval has a directory but no done marker
    assert "SFT training loss" in html  # what is there is still shown


def test_report_of_an_empty_directory_and_of_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    html = build_report(tmp_path / "empty")
    for missing in ("manifest.json not found", "synth/ not found", "sft/ not found", "eval/ not found"):
        assert missing in html
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        build_report(tmp_path / "nope")


def test_cli_report(tmp_path):
    run = make_run(tmp_path / "run")
    r = CliRunner().invoke(app, ["report", str(run)])
    assert r.exit_code == 0, r.output
    assert (run / "report.html").is_file()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such run directory" in r.output


def test_report_shows_the_audit_and_which_tools_played(tmp_path):
    run = make_run(tmp_path / "run")
    results = json.loads((run / "eval" / "results.json").read_text())
    results["tools"] = {"tools-on": "hybrid: `search` answered by a BM25 index", "tools-off": "none"}
    (run / "eval" / "results.json").write_text(json.dumps(results))
    fig = {"calls": 3, "answer_contained_pct": {"simulated": 0.0, "live": 66.7},
           "supporting_title_pct": {"simulated": 33.3, "live": 100.0}, "schema_valid_pct": {"simulated": 100.0,
           "live": 100.0}, "claims": 5, "supported_claims_pct": 20.0, "median_seconds": {"simulated": 1.2, "live": 0.01}}
    (run / "audit").mkdir()
    (run / "audit" / "audit.json").write_text(json.dumps({
        "questions": 3, "overall": fig, "by_tool": {"search": fig}, "toolactor": "llamacpp:embedded",
        "retriever": "bm25 over default", "transfer_gap": [{"benchmark": "hotpotqa", "n": 3, "em": {"simulated": 0.0,
        "live": 33.3}, "f1": {"simulated": 5.0, "live": 40.0}, "em_gap": 33.3, "f1_gap": 35.0}],
        "examples": [{"tool": "search", "arguments": {"query": "x"}, "simulated": HOSTILE, "live": "{}"}]}))
    html = write_report(run).read_text()
    assert 'id="audit-table"' in html and "0.0 / 66.7" in html and "Transfer gap on hotpotqa" in html
    assert "hybrid: `search` answered by a BM25 index" in html  # which tools played in our row
    assert "live: E5 retriever over a 2018 Wikipedia dump" in html  # and in the references' rows
    assert HOSTILE not in html  # model text is escaped


def test_report_says_which_ablation_switches_are_in_effect(tmp_path):
    run = make_run(tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"] = {"tools": {"toolmaker": False}, "run": {"grpo_init": "base"},
                          "synth": {"tool_mode": "hybrid", "precheck": True},
                          "grpo": {"tool_mode": "simulated", "live_share": 0.5, "precheck": False, "trl": {"beta": 0.04}},
                          "eval": {"tool_mode": "live"}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    html = write_report(run).read_text()
    assert "ToolMaker OFF (utility tools only)" in html and "validation pre-check: OFF in grpo" in html
    assert "the initial policy (no SFT)" in html and "grpo simulated (live share 0.5)" in html and "beta 0.04" in html


def test_episode_view_shows_the_request_for_the_final_answer():
    from mtr.prompts import FINAL_NUDGE
    from mtr.report import episode_view

    trace = {"id": "q", "question": "Q?", "answers": ["A"], "steps": [
        {"thought": "look", "call": {"name": "search", "arguments": {"query": "x"}}, "observation": "{}"},
        {"thought": "so", "answer": "A", "nudged": True}]}
    steps = episode_view(trace, "synth")["steps"]
    assert [s["nudge"] for s in steps] == [None, FINAL_NUDGE]
