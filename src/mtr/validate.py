"""Validation checks V. Each check yields a `Check(code, ok, detail)` recorded on the step it gates.

Codes:
  tools_valid        ToolMaker output: valid JSON Schema (Draft 2020-12), OpenAI's constraints, no duplicate
                     names, no tool without parameters, no gold answer leaked (names, descriptions, enums)
  parse_ok           the agent's turn parsed (a tool call or an answer)
  tool_exists        the call names one of the episode's tools
  args_valid         the arguments validate against the tool's `parameters` (the pre-check: an invalid call
                     never reaches the ToolActor; the agent gets a validation-error observation instead)
  observation_valid  the ToolActor's observation is JSON matching the tool's `returns` schema
  answer_present     the final answer is present and non-empty
  step_budget        the episode ended within `max_tool_calls` tool calls
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from mtr.metrics import normalize_answer
from mtr.trace import Check, ToolCall, ToolSchema

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _schema_error(schema: Any) -> str | None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        return f"{where}: {e.message[:160]}"
    return None


def _strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (_strings_in(k) + _strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings_in(v)]
    return []


# JSON Schema's own words: structure, not content the ToolMaker wrote
_SCHEMA_WORDS = frozenset("""type object string integer number boolean array null properties required items enum
description function parameters returns additionalProperties minItems maxItems minLength maxLength pattern
minimum maximum const anyOf oneOf allOf""".split())


def _leaks(tool: dict, answers: list[str]) -> str | None:
    """The gold answer must not appear in anything of a tool the ToolActor or the policy sees: its name, its
    description, its parameters' and its result's names, descriptions and enum values.

    Matched on normalised text, as whole words, so that answer "1755" leaks in "founded in 1755" but answer
    "no" does not leak in "north".
    """
    texts = [t for t in _strings_in(tool) if t not in _SCHEMA_WORDS]
    padded = [" " + normalize_answer(t.replace("_", " ")) + " " for t in texts]
    for a in answers:
        na = normalize_answer(a)
        if na and any(f" {na} " in t for t in padded):
            return a
    return None


def validate_tools(raw_tools: Any, answers: list[str] | None = None, fixed: frozenset[str] = frozenset()
                   ) -> tuple[list[ToolSchema], str | None]:
    """Check ToolMaker output; returns (tools, None) or ([], "reason"). The tools named in `fixed` (the
    predefined utility tools, the same for every question) are not checked for leaks."""
    if not isinstance(raw_tools, list) or not raw_tools:
        return [], "no tools: expected a non-empty list"
    tools: list[ToolSchema] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_tools):
        if not isinstance(raw, dict):
            return [], f"tool {i}: not an object"
        if "function" not in raw:  # accept the flat {name, description, parameters, returns} form too
            raw = {"type": "function", "function": {k: raw[k] for k in ("name", "description", "parameters")
                                                    if k in raw}, "returns": raw.get("returns")}
        fn = raw.get("function") or {}
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            return [], f"tool {i}: name {name!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$"
        if name in names:
            return [], f"tool {i}: duplicate name {name!r}"
        names.add(name)
        params = fn.get("parameters")
        if not isinstance(params, dict) or params.get("type") != "object":
            return [], f"tool {name}: parameters must be a JSON Schema of type object"
        if err := _schema_error(params):
            return [], f"tool {name}: parameters is not a valid JSON Schema ({err})"
        props = params.get("properties") or {}
        if not isinstance(props, dict) or not props:
            return [], f"tool {name}: takes no arguments"
        required = params.get("required", [])
        if not isinstance(required, list) or not set(required) <= set(props):
            return [], f"tool {name}: required {required!r} is not a subset of properties {sorted(props)!r}"
        returns = raw.get("returns")
        if returns is not None and (err := _schema_error(returns)):
            return [], f"tool {name}: returns is not a valid JSON Schema ({err})"
        if answers and name not in fixed and (leak := _leaks(raw, answers)):
            return [], f"tool {name}: leaks the gold answer {leak!r}"
        try:
            tools.append(ToolSchema.model_validate({k: v for k, v in raw.items() if v is not None}))
        except Exception as e:  # noqa: BLE001 - pydantic: unexpected keys and the like
            return [], f"tool {name}: {type(e).__name__}: {str(e).splitlines()[0]}"
    return tools, None


def validate_call(call: ToolCall, tools: list[ToolSchema]) -> list[Check]:
    """The pre-check. `tool_exists`, then `args_valid` (only when the tool exists)."""
    by_name = {t.name: t for t in tools}
    tool = by_name.get(call.name)
    if tool is None:
        return [Check(code="tool_exists", ok=False,
                      detail=f"no tool named {call.name!r}; tools are {', '.join(by_name)}")]
    checks = [Check(code="tool_exists", ok=True)]
    errors = sorted(Draft202012Validator(tool.function.parameters).iter_errors(call.arguments), key=str)
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "arguments"
        checks.append(Check(code="args_valid", ok=False, detail=f"{where}: {e.message[:200]}"))
    else:
        checks.append(Check(code="args_valid", ok=True))
    return checks


def validate_observation(text: str, tool: ToolSchema) -> Check:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        return Check(code="observation_valid", ok=False, detail=f"not JSON: {e}")
    if tool.returns is not None:
        try:
            Draft202012Validator(tool.returns).validate(value)
        except ValidationError as e:
            return Check(code="observation_valid", ok=False, detail=e.message[:200])
    return Check(code="observation_valid", ok=True)


def check_answer(answer: str | None) -> Check:
    ok = answer is not None and bool(answer.strip())
    return Check(code="answer_present", ok=ok, detail="" if ok else "no final answer")


def validation_error_observation(checks: list[Check]) -> str:
    """What the agent sees instead of a tool result when its call fails the pre-check."""
    failed = [c for c in checks if not c.ok]
    return json.dumps({"error": "invalid tool call", "checks": [f"{c.code}: {c.detail}" for c in failed]},
                      ensure_ascii=False)
