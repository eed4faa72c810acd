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
    assert c.text.strip() and 0 < c.completion_tokens <= 16 and c.prompt_tokens > 10
    assert c.finish_reason in ("stop", "length")
    [again] = asyncio.run(llamacpp.chat(Q, SamplingParams(temperature=0, max_tokens=16)))
    assert again.text == c.text  # greedy: the same text twice on the same machine


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
    [free] = asyncio.run(llamacpp.chat(Q, SamplingParams(temperature=0, max_tokens=30)))
    words = [w for w in free.text.split() if len(w) >= 3]
    word = words[len(words) // 2]  # a stop string this machine's greedy text is sure to reach
    [c] = asyncio.run(llamacpp.chat(Q, SamplingParams(temperature=0, max_tokens=30, stop=(word,))))
    assert word not in c.text and c.finish_reason == "stop"
    assert c.text == free.text[: free.text.index(word)]


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


# A closed set of cities: whatever city the model would name, most of its samples leave the grammar and are
# resampled under it.
CITIES = {"type": "object", "properties": {"city": {"enum": ["Lyon", "Nice", "Brest"]}}, "required": ["city"],
          "additionalProperties": False}


@pytest.fixture(scope="module")
def two_samplers(llamacpp):
    from llama_cpp import Llama, LlamaGrammar

    from mtr.backends.llamacpp_grammar import GrammarAfterLlama

    path, prompt = str(llamacpp.gguf()), llamacpp.render(Q)
    first = Llama(model_path=path, n_ctx=1024, n_threads=2, seed=0, verbose=False)
    after = GrammarAfterLlama(model_path=path, n_ctx=1024, n_threads=2, seed=0, verbose=False)

    def complete(llm, schema, temperature, seed=0):
        import json

        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        llm.reset()
        out = llm.create_completion(prompt=prompt, max_tokens=40, temperature=temperature, grammar=grammar,
                                    seed=seed)
        return out["choices"][0]["text"]

    return first, after, complete


def first_token_leaves_json(llm, prompt: str) -> bool:
    """Whether the model's greedy first token cannot start a JSON object: then the grammar must reject it."""
    llm.reset()
    llm.eval(llm.tokenize(prompt.encode(), add_bos=True, special=True))
    first = llm.detokenize([int(llm.scores[llm.n_tokens - 1].argmax())]).decode("utf-8", "replace")
    return not first.lstrip().startswith("{")


@pytest.mark.parametrize("schema", [SCHEMA, CITIES])
def test_grammar_after_sampling_gives_grammar_first_text_at_temperature_0(two_samplers, schema, llamacpp):
    first, after, complete = two_samplers
    assert complete(after, schema, 0) == complete(first, schema, 0)
    s = after.last_sampler
    assert s is not None and s.sampled > 3
    if first_token_leaves_json(first, llamacpp.render(Q)):
        assert s.rejected >= 1  # the resample path ran


def test_grammar_after_sampling_keeps_to_the_grammar_when_the_model_disagrees(two_samplers):
    import json

    _, after, complete = two_samplers
    rejected = 0
    for seed in range(6):
        out = json.loads(complete(after, CITIES, 1.2, seed))
        assert set(out) == {"city"} and out["city"] in CITIES["properties"]["city"]["enum"]
        rejected += after.last_sampler.rejected
    assert rejected >= 1  # at temperature 1.2 over six runs, some sampled token left the grammar
