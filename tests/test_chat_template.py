import pytest
from transformers import AutoTokenizer

from mtr.chat_template import fallback_template, install_chat_template, render, template_supports_tools
from mtr.embedded import ensure_checkpoint

from test_trace import two_call_trace


@pytest.fixture(scope="module")
def tok():
    t = AutoTokenizer.from_pretrained(ensure_checkpoint())
    return t


def test_embedded_tokenizer_gets_the_tool_template(tok):
    assert template_supports_tools(tok.chat_template)
    assert "{%- generation -%}" in tok.chat_template


def test_smollm2_original_template_is_replaced():
    class Tok:
        chat_template = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                         "{{ message['content'] }}<|im_end|>\n{% endfor %}")
    t = Tok()
    assert install_chat_template(t) is True
    assert t.chat_template == fallback_template()


def test_render_two_call_trace(tok):
    conv = two_call_trace().to_conversation()
    text = render(tok, conv["messages"], conv["tools"])
    assert text.startswith("<|im_start|>system\nYou solve questions with tools.\n\n# Tools")
    assert '"name": "search_wiki"' in text
    assert text.count("<tool_call>") == 2 + 2  # two calls, plus two mentions in the system prompt
    assert text.count("<tool_response>") == 2
    assert '{"name": "search_wiki", "arguments": {"query": "Sergei Tokarev"}}' in text
    assert text.rstrip().endswith("<answer>1755</answer><|im_end|>")
    # every assistant turn is exactly the step's model text
    for step in two_call_trace().steps:
        assert "<|im_start|>assistant\n" + step.text() + "<|im_end|>" in text


def test_assistant_mask_covers_assistant_text_only(tok):
    conv = two_call_trace().to_conversation()
    out = tok.apply_chat_template(conv["messages"], tools=conv["tools"], tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked_in = tok.decode([i for i, m in zip(ids, mask) if m])
    masked_out = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "Moscow State University founded" in masked_in  # the agent's call
    assert '"passage"' not in masked_in and "<tool_response>" not in masked_in  # the observations
    assert '{"passage": "It was founded in 1755."}' in masked_out
    assert "<answer>1755</answer>" in masked_in


def test_stored_and_in_memory_conversations_render_the_same(tok):
    mem = two_call_trace().to_conversation()
    stored = two_call_trace().to_conversation(for_storage=True)
    import json

    assert render(tok, mem["messages"], mem["tools"]) == render(tok, stored["messages"], json.loads(stored["tools"]))
