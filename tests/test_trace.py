import json

import pytest

from mtr.trace import QAExample, Step, ToolCall, ToolSchema, Trace, parse_turn

SEARCH = ToolSchema.model_validate({
    "type": "function",
    "function": {"name": "search_wiki", "description": "Search an encyclopedia.",
                 "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                "required": ["query"]}},
    "returns": {"type": "object", "properties": {"passage": {"type": "string"}}, "required": ["passage"]},
})


def two_call_trace() -> Trace:
    return Trace(
        id="q1", question="In what year was the university where Tokarev taught founded?", answers=["1755"],
        system="You solve questions with tools.", tools=[SEARCH],
        steps=[
            Step(thought="Find where Tokarev taught.", call=ToolCall(id="c1", name="search_wiki",
                 arguments={"query": "Sergei Tokarev"}), observation='{"passage": "He taught at Moscow State University."}'),
            Step(thought="Now the founding year.", call=ToolCall(id="c2", name="search_wiki",
                 arguments={"query": "Moscow State University founded"}),
                 observation='{"passage": "It was founded in 1755."}'),
            Step(thought="It was founded in 1755.", answer="1755"),
        ])


def test_conversation_roundtrip_is_lossless():
    trace = two_call_trace()
    conv = trace.to_conversation()
    assert [m["role"] for m in conv["messages"]] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                      "assistant"]
    assert conv["messages"][2]["tool_calls"][0]["function"] == {"name": "search_wiki",
                                                                 "arguments": {"query": "Sergei Tokarev"}}
    back = Trace.from_conversation(json.loads(json.dumps(conv)), id="q1", answers=["1755"])
    assert back.to_conversation() == conv
    assert back.steps[0].call.arguments == {"query": "Sergei Tokarev"}
    # the policy sees the OpenAI function schema; `returns` is for the ToolActor and stays in traces.jsonl
    assert "returns" not in conv["tools"][0] and back.tools[0].function == SEARCH.function
    assert back.final_answer == "1755"


def test_roundtrip_through_datasets_arrow(tmp_path):
    """`datasets` unifies struct fields across rows (missing keys become None); stored traces avoid it."""
    datasets = pytest.importorskip("datasets")
    other = Trace(id="q2", question="Who?", tools=[ToolSchema.model_validate({"function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {"name": {"type": "string", "enum": ["a", "b"]}},
                                         "required": ["name"]}}})],
        steps=[Step(thought="t", call=ToolCall(id="x", name="lookup", arguments={"name": "a"}), observation="{}"),
               Step(answer="a")])
    path = tmp_path / "sft.jsonl"
    with path.open("w") as f:
        for t in (two_call_trace(), other):
            f.write(json.dumps(t.to_conversation(for_storage=True)) + "\n")
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    # no null-filled keys: arguments and tools are JSON strings, as stored
    assert ds[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"name": "a"}'
    back = [Trace.from_conversation(row) for row in ds]
    assert back[0].to_conversation() == two_call_trace().to_conversation()
    assert back[0].to_conversation()["tools"] == two_call_trace().to_conversation()["tools"]
    assert back[1].steps[0].call.arguments == {"name": "a"}
    assert back[1].tools[0].function.parameters["properties"]["name"]["enum"] == ["a", "b"]


def test_step_text_parses_back():
    for step in two_call_trace().steps:
        parsed = parse_turn(step.text())
        assert parsed.error is None
        assert parsed.thought == step.thought
        assert parsed.answer == step.answer
        if step.call:
            assert parsed.call.name == step.call.name and parsed.call.arguments == step.call.arguments


@pytest.mark.parametrize("text,code", [
    ("", "empty"),
    ("   \n", "empty"),
    ("I think the answer is Paris.", "no_action"),
    ("<think>hm</think><tool_call>{not json}</tool_call>", "bad_json"),
    ('<tool_call>["search", {}]</tool_call>', "bad_call"),
    ('<tool_call>{"name": "s", "arguments": [1]}</tool_call>', "bad_call"),
    ('<tool_call>{"name": "s", "arguments": {}}</tool_call><answer>x</answer>', "multiple_actions"),
    ("<answer>   </answer>", "empty_answer"),
    ("\x00\xff<<<<tool_call>>>", "bad_json"),
])
def test_parse_garbage_returns_error_code(text, code):
    parsed = parse_turn(text)
    assert parsed.error is not None and parsed.error.startswith(code + ":")
    assert parsed.call is None and parsed.answer is None


def test_parse_accepts_cut_off_closing_tag_and_string_arguments():
    p = parse_turn('<think>x</think>\n<tool_call>\n{"name": "s", "arguments": "{\\"q\\": 1}"}')
    assert p.error is None and p.call.arguments == {"q": 1}
    assert parse_turn("<answer>Paris").answer == "Paris"


def test_parse_never_raises_on_non_text():
    assert parse_turn(None).error.startswith("empty")  # type: ignore[arg-type]


def test_canonical_key_ignores_argument_order():
    a = ToolCall(name="f", arguments={"x": 1, "y": [1, 2]})
    b = ToolCall(name="f", arguments={"y": [1, 2], "x": 1})
    assert a.canonical_key() == b.canonical_key()
    assert a.canonical_key() != ToolCall(name="f", arguments={"x": 2, "y": [1, 2]}).canonical_key()


def test_qa_example_validation():
    QAExample(id=3, question="q?", answers=["a"])
    with pytest.raises(ValueError):
        QAExample(id="1", question="  ", answers=["a"])
    with pytest.raises(ValueError):
        QAExample(id="1", question="q", answers=[])
    with pytest.raises(ValueError):
        QAExample(id="1", question="q", answers=[" "])
