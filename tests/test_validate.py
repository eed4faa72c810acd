import pytest

from mtr.toolmaker import compile_tool, utility_tools
from mtr.trace import ToolCall
from mtr.validate import check_answer, validate_call, validate_observation, validate_tools

SEARCH = utility_tools(["search"])[0].as_dict()


def tool(name="get_year", props=None, required=None, desc="Looks up a year.", returns=None):
    props = {"name": {"type": "string", "description": "entity"}} if props is None else props
    t = {"type": "function", "function": {"name": name, "description": desc,
                                          "parameters": {"type": "object", "properties": props,
                                                         "required": list(props) if required is None else required}}}
    if returns is not None:
        t["returns"] = returns
    return t


def test_good_tools_pass():
    tools, err = validate_tools([SEARCH, tool()], ["1755"])
    assert err is None and [t.name for t in tools] == ["search", "get_year"]


@pytest.mark.parametrize("raw,reason", [
    ([], "no tools"),
    ([tool(name="get year!")], "does not match"),
    ([tool(name="x" * 65)], "does not match"),
    ([tool(), tool()], "duplicate name 'get_year'"),
    ([tool(props={})], "takes no arguments"),
    ([tool(required=["missing"])], "is not a subset of properties"),
    ([tool(props={"a": {"type": "strin"}})], "not a valid JSON Schema"),
    ([tool(returns={"type": 5})], "returns is not a valid JSON Schema"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "type object"),
    ([tool(desc="Returns 1755 for any query.")], "leaks the gold answer '1755'"),
    ([tool(name="get_1755_info")], "leaks the gold answer"),
    ([tool(props={"y": {"type": "string", "enum": ["1755", "1800"]}})], "leaks the gold answer"),
    # every string the ToolActor or the policy sees: parameter names, the result's names and descriptions
    ([tool(props={"year_1755": {"type": "string"}})], "leaks the gold answer"),
    ([tool(returns={"type": "object", "properties": {"y": {"type": "string", "description": "it is 1755"}}})],
     "leaks the gold answer"),
])
def test_bad_tools_rejected_with_reason(raw, reason):
    tools, err = validate_tools(raw, ["1755"])
    assert tools == [] and reason in err


def test_leak_check_is_whole_word():
    _, err = validate_tools([tool(desc="Find the northern border.")], ["no"])
    assert err is None


def test_the_fixed_utility_tools_are_not_leak_checked():
    calc = utility_tools(["calculate"])[0].as_dict()  # its description's example is "2021 - 1755"
    assert "1755" in calc["function"]["description"]
    _, err = validate_tools([calc, tool()], ["1755"], fixed=frozenset({"calculate"}))
    assert err is None
    _, err = validate_tools([calc, tool()], ["1755"])
    assert "leaks" in err


def test_compile_tool_makes_valid_openai_schema():
    t = compile_tool({"name": "get_director", "description": "d",
                      "arguments": [{"name": "film", "type": "string", "description": "title"}],
                      "returns": [{"name": "director", "type": "string", "description": "name"}]})
    tools, err = validate_tools([t])
    assert err is None
    assert tools[0].function.parameters["required"] == ["film"]


def test_pre_check():
    [t] = validate_tools([tool(props={"name": {"type": "string"}, "year": {"type": "integer"}})])[0]
    ok = validate_call(ToolCall(name="get_year", arguments={"name": "x", "year": 3}), [t])
    assert [c.ok for c in ok] == [True, True]
    unknown = validate_call(ToolCall(name="nope", arguments={}), [t])
    assert unknown[0].code == "tool_exists" and not unknown[0].ok and "get_year" in unknown[0].detail
    bad = validate_call(ToolCall(name="get_year", arguments={"name": "x", "year": "three"}), [t])
    assert bad[1].code == "args_valid" and not bad[1].ok and "year" in bad[1].detail
    missing = validate_call(ToolCall(name="get_year", arguments={"name": "x"}), [t])
    assert not missing[1].ok and "'year' is a required property" in missing[1].detail


def test_observation_and_answer_checks():
    [s] = utility_tools(["search"])
    assert validate_observation('{"results": [{"title": "a", "text": "b"}]}', s).ok
    assert not validate_observation('{"results": []}', s).ok
    assert not validate_observation("Paris is nice", s).ok
    assert check_answer("Paris").ok and not check_answer("  ").ok and not check_answer(None).ok
