import asyncio

import pytest

from mtr.backends import BackendError, Completion, SamplingParams, attach_json, cut_at_stop

pytestmark = pytest.mark.model

Q = [{"role": "user", "content": "What is the capital of France?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
          "required": ["city", "country"], "additionalProperties": False}


def run(coro):
    return asyncio.run(coro)


def test_greedy_is_deterministic_and_counts_tokens(embedded_backend):
    p = SamplingParams(temperature=0, max_tokens=16)
    [[a]] = run(embedded_backend.generate([Q], p))
    [[b]] = run(embedded_backend.generate([Q], p))
    assert a.text == b.text and a.text.strip()
    assert a.prompt_tokens > 10 and 0 < a.completion_tokens <= 16 and a.finish_reason in ("stop", "length")


def test_batched_left_padding_matches_single(embedded_backend):
    p = SamplingParams(temperature=0, max_tokens=12)
    long_q = [{"role": "system", "content": "You are terse. " * 20}] + Q
    [[single]] = run(embedded_backend.generate([long_q], p))
    [[short], [batched]] = run(embedded_backend.generate([Q, long_q], p))
    assert batched.text == single.text


def test_n_samples_and_seed(embedded_backend):
    p = SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=7)
    [outs] = run(embedded_backend.generate([Q], p))
    assert len(outs) == 4
    [again] = run(embedded_backend.generate([Q], p))
    assert [c.text for c in outs] == [c.text for c in again]


def batch_sizes(backend, monkeypatch) -> list[int]:
    """The rows of each batch the backend runs from now on."""
    calls = []
    orig = backend._run_batch

    def spy(requests):
        calls.append(len(requests))
        return orig(requests)

    monkeypatch.setattr(backend, "_run_batch", spy)
    return calls


def test_concurrent_callers_share_batches(embedded_backend, monkeypatch):
    calls = batch_sizes(embedded_backend, monkeypatch)
    p = SamplingParams(temperature=0, max_tokens=4)

    async def many():
        return await asyncio.gather(*[embedded_backend.chat([{"role": "user", "content": f"Count to {i}"}], p)
                                      for i in range(6)])

    outs = run(many())
    assert len(outs) == 6 and all(len(o) == 1 for o in outs)
    assert calls == [6]


def test_sampled_rows_of_other_temperatures_and_budgets_share_one_batch(embedded_backend, monkeypatch):
    """A ToolMaker call and an agent turn (other temperature, other max_tokens) run in one batch, each
    with its own temperature and token budget."""
    calls = batch_sizes(embedded_backend, monkeypatch)
    story = [{"role": "user", "content": "Write a long story about a dragon who loves books."}]
    cold = SamplingParams(temperature=0.02, max_tokens=4, seed=3)  # as good as greedy
    hot = SamplingParams(temperature=1.0, max_tokens=24, seed=3)

    async def both():
        return await asyncio.gather(embedded_backend.chat(Q, cold), embedded_backend.chat(story, hot))

    [a], [b] = run(both())
    assert calls == [2]
    assert a.completion_tokens <= 4 and a.finish_reason == "length"  # its own budget, not the batch's 24
    assert 4 < b.completion_tokens <= 24  # not cut at the other row's budget
    [greedy] = run(embedded_backend.chat(Q, SamplingParams(temperature=0, max_tokens=4)))
    assert a.text == greedy.text  # its own (low) temperature, not the other row's 1.0


def stop_word(text: str) -> str:
    """A word from the middle of a greedy completion: whatever the model says on this machine, a stop string
    it is sure to reach."""
    words = [w for w in text.split() if len(w) >= 3]
    assert words, f"no word to stop at in {text!r}"
    return words[len(words) // 2]


def test_stop_strings_cut_output(embedded_backend):
    p = SamplingParams(temperature=0, max_tokens=40)
    [[free]] = run(embedded_backend.generate([Q], p))
    word = stop_word(free.text)
    [[c]] = run(embedded_backend.generate([Q], SamplingParams(temperature=0, max_tokens=40, stop=(word,))))
    assert c.finish_reason == "stop" and word not in c.text
    assert c.text == free.text[: free.text.index(word)]  # cut exactly before the stop string


def test_json_schema_constrained_output_is_valid(embedded_backend):
    p = SamplingParams(n=3, temperature=0.8, max_tokens=48, json_schema=SCHEMA, seed=1)
    [outs] = run(embedded_backend.generate([Q], p))
    for c in outs:
        assert c.json_error is None, c.text
        assert set(c.json) == {"city", "country"}


def test_mixed_schema_rows_in_one_batch(embedded_backend):
    other = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"],
             "additionalProperties": False}

    async def both():
        return await asyncio.gather(
            embedded_backend.chat(Q, SamplingParams(temperature=0, max_tokens=40, json_schema=SCHEMA)),
            embedded_backend.chat(Q, SamplingParams(temperature=0, max_tokens=40, json_schema=other)))

    [a], [b] = run(both())
    assert set(a.json) == {"city", "country"} and isinstance(b.json["answer"], bool)


def test_attach_json_reports_prose_and_schema_mismatch():
    c = attach_json(Completion(text="Sure! The city is Paris."), SCHEMA)
    assert c.json is None and c.json_error.startswith("not JSON")
    with pytest.raises(BackendError, match="returned non-JSON where JSON was required"):
        c.require_json("toolactor")
    c = attach_json(Completion(text='{"city": "Paris"}'), SCHEMA)
    assert "does not match the schema" in c.json_error
    c = attach_json(Completion(text='```json\n{"city": "Paris", "country": "France"}\n```'), SCHEMA)
    assert c.json == {"city": "Paris", "country": "France"}


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("a</x>b</y>", ("</y>", "</x>")) == ("a", True)
    assert cut_at_stop("abc", ()) == ("abc", False)


def test_bad_checkpoint_path_is_one_line(tmp_path):
    from mtr.backends import HFBackend
    from mtr.config import RoleConfig

    with pytest.raises(BackendError, match="not a Hugging Face checkpoint directory"):
        HFBackend(RoleConfig(model=str(tmp_path))).load()


def test_next_turn_reads_only_its_new_tokens_and_says_what_it_would_without_the_cache(embedded_backend):
    from mtr.backends import HFBackend
    from mtr.config import RoleConfig

    p = SamplingParams(temperature=0, max_tokens=24)
    system = [{"role": "system", "content": "You are a geography assistant. Answer in one short sentence."}]
    cache = embedded_backend.prefix_cache
    assert cache is not None  # on by default
    turns = {}
    for backend in (embedded_backend, HFBackend(RoleConfig(prefix_cache_mb=0))):
        convs = [system + Q, system + [{"role": "user", "content": "What is the capital of Italy?"}]]
        [[a], [b]] = run(backend.generate(convs, p))
        read = cache.read_tokens
        convs = [c + [{"role": "assistant", "content": x.text}, {"role": "user", "content": "And of Spain?"}]
                 for c, x in zip(convs, (a, b))]
        [[a2], [b2]] = run(backend.generate(convs, p))
        turns[backend.prefix_cache is not None] = [a.text, b.text, a2.text, b2.text]
        if backend is embedded_backend:
            # each second turn read its new user message and header (tens of tokens), not its whole history
            assert 0 < cache.read_tokens - read < (a2.prompt_tokens + b2.prompt_tokens) / 2
    assert turns[True] == turns[False] and all(turns[True])


def test_int8_backend_is_quantized_and_close_to_float32(embedded_backend):
    import torch

    from mtr.backends import HFBackend
    from mtr.config import RoleConfig

    b = HFBackend(RoleConfig(dtype="int8", device="cpu"))
    b.load()
    linears = [m for m in b.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(linears) == 30 * 7 + 1  # every projection of the 30 layers, and the output head
    [[c]] = run(b.generate([Q], SamplingParams(temperature=0, max_tokens=16)))
    assert c.completion_tokens > 0
    # what quantization keeps, whatever the model says: next-token scores at every position of the prompt
    # correlate with float32's (unrelated scores: ~0), and int8's first choice is mostly among float32's top 5
    ids = b.tokenizer(b.render(Q), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        q = b.model(ids).logits[0]
        f = embedded_backend.model(ids).logits[0]
    qc, fc = q - q.mean(-1, keepdim=True), f - f.mean(-1, keepdim=True)
    corr = (qc * fc).sum(-1) / (qc.norm(dim=-1) * fc.norm(dim=-1))
    top5 = [q[i].argmax().item() in f[i].topk(5).indices.tolist() for i in range(len(q))]
    assert corr.mean() > 0.6 and sum(top5) / len(top5) > 0.7


def test_int8_on_a_gpu_is_one_line():
    from mtr.backends import HFBackend
    from mtr.config import RoleConfig

    with pytest.raises(BackendError, match="int8 runs on the CPU only"):
        HFBackend(RoleConfig(dtype="int8", device="cuda")).load()
