"""Chat templates: render conversations (OpenAI/TRL `messages` + `tools`) to model text.

Many small instruct models (SmolLM2 among them) ship a ChatML template that silently drops `tool_calls`
and `tool` messages, and has no `{% generation %}` markers, so it can neither render a trace nor mask
observations out of the loss. For those we install `templates/chatml_tools.jinja` (documented in
docs/trace-format.md). A tokenizer whose own template already knows tools keeps it.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

FALLBACK_TEMPLATE_NAME = "chatml_tools.jinja"


@lru_cache(maxsize=None)
def fallback_template() -> str:
    return resources.files("mtr").joinpath("templates", FALLBACK_TEMPLATE_NAME).read_text()


def template_supports_tools(template: str | None) -> bool:
    # A template that mentions neither the tool role nor tool_calls would drop them while rendering.
    return bool(template) and "tool_calls" in template and ("'tool'" in template or '"tool"' in template)


def template_has_generation_markers(template: str | None) -> bool:
    return bool(template) and "{% generation %}" in template.replace("{%- generation -%}", "{% generation %}")


def install_chat_template(tokenizer: Any, force: bool = False) -> bool:
    """Give `tokenizer` a template that renders tools and marks assistant tokens; True if it was replaced."""
    current = getattr(tokenizer, "chat_template", None)
    if not force and template_supports_tools(current) and template_has_generation_markers(current):
        return False
    tokenizer.chat_template = fallback_template()
    return True


def render(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None,
           add_generation_prompt: bool = False) -> str:
    """Render `messages` (and the `tools` shown in the system prompt) to the text the model sees."""
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )
