import asyncio

import pytest

from mtr.backends import BackendError, LlamaCppBackend, SamplingParams
from mtr.config import RoleConfig

pytestmark = pytest.mark.model
Q = [{"role": "user", "content": "What is the capital of France?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"],
          "additionalProperties": False}


@pytest.fixture(scope="module")
def llamacpp():
    b = LlamaCppBackend(RoleConfig(backend="llamacpp", n_threads=2, n_ctx=2048))
    b.load()
    return b


def test_generates_and_counts(llamacpp):
    [c] = asyncio.run(llamacpp.chat(Q, SamplingParams(temperature=0, max_tokens=16)))
    assert "Paris" in c.text and c.completion_tokens > 0 and c.prompt_tokens > 10


def test_same_prompt_text_as_hf(llamacpp, embedded_backend):
    assert llamacpp.render(Q) == embedded_backend.render(Q)


def test_grammar_constrained_json(llamacpp):
    outs = asyncio.run(llamacpp.chat(Q, SamplingParams(n=3, temperature=1.0, max_tokens=64, json_schema=SCHEMA,
                                                       seed=5)))
    assert len(outs) == 3
    for c in outs:
        assert c.json_error is None, c.text
        assert set(c.json) == {"city"}


def test_stop_strings(llamacpp):
    [c] = asyncio.run(llamacpp.chat(Q, SamplingParams(temperature=0, max_tokens=30, stop=("Paris",))))
    assert "Paris" not in c.text


def test_missing_gguf_is_one_line(tmp_path):
    with pytest.raises(BackendError, match="GGUF file not found"):
        LlamaCppBackend(RoleConfig(backend="llamacpp", model=str(tmp_path / "x.gguf"))).load()


def _long(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Notes on {topic}: " + f"The {topic} is described here in detail. " * 30}]


def test_slots_keep_each_prompt_cached_and_evict_least_recent():
    b = LlamaCppBackend(RoleConfig(backend="llamacpp", n_threads=2, n_ctx=1024, n_slots=2))
    river, mountain, forest = _long("river"), _long("mountain"), _long("forest")
    greedy = SamplingParams(temperature=0, max_tokens=1)

    chosen = []
    pick = b.slot_for
    b.slot_for = lambda prompt: chosen.append(pick(prompt)) or chosen[-1]

    def run(messages):
        [c] = asyncio.run(b.chat(messages, greedy))
        return chosen[-1], c

    a, first = run(river)
    m, _ = run(mountain)
    assert a is not m and len(b.slots) == 2
    # Alternating prompts each find their own slot, so neither evicts the other's cached prefix.
    again, second = run(river)
    assert again is a and second.text == first.text
    assert run(mountain)[0] is m
    # A third prompt takes the least recently used slot (river's: mountain ran last).
    f, _ = run(forest)
    assert f is a and len(b.slots) == 2
    assert run(mountain)[0] is m and run(forest)[0] is a
