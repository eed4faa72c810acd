"""Prompts are text files in `mtr/prompts/` with `$name` placeholders (string.Template, so that JSON braces
in a prompt need no escaping). `mtr prompts ROLE` shows them."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from string import Template

# What the policy is told when its call budget is spent (both the evaluation agent and the GRPO rollout).
FINAL_NUDGE = "No more tool calls: give your final answer now."

PROMPT_FILES = {
    "toolmaker": "toolmaker.txt",
    "autoagent": "autoagent.txt",
    "toolactor": "toolactor.txt",
    "policy": "policy.txt",
    "policy-no-tools": "policy_no_tools.txt",
}


@lru_cache(maxsize=None)
def prompt_text(name: str) -> str:
    if name not in PROMPT_FILES:
        raise ValueError(f"unknown prompt {name!r}; prompts are: {', '.join(PROMPT_FILES)}")
    return resources.files("mtr").joinpath("prompts", PROMPT_FILES[name]).read_text()


def fill(prompt: str, /, **values: object) -> str:
    """The prompt with its placeholders filled; a missing value is an error, not a silent `$name`."""
    return Template(prompt_text(prompt)).substitute({k: str(v) for k, v in values.items()}).strip()
