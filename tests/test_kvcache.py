"""The prefix cache: generation that reuses earlier rows' keys and values gives what plain `generate` gives,
reads only the tokens it does not hold, and stays within its memory budget.

A tiny random Llama in float64, so that the cached and the plain computation agree to ~1e-15 and greedy
decoding cannot flip on rounding."""

from types import SimpleNamespace

import pytest
import torch

from mtr.backends.kvcache import PrefixCache, common_prefix, generate_with_prefix_cache

PAD, EOS = 0, 2
GREEDY = dict(max_new_tokens=6, do_sample=False, eos_token_id=EOS)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(cfg).double().eval()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def plain(model, rows: list[list[int]], **kwargs) -> list[list[int]]:
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return model.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD, **kwargs)[:, width:].tolist()


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([5], [1]) == 0


def test_later_turns_read_only_their_new_tokens_and_generate_what_plain_generate_does(model):
    cache = PrefixCache(min_reuse=4)
    system = tokens(40, 1)
    rows = [system + tokens(5, 2), system + tokens(12, 3)]
    first = generate_with_prefix_cache(model, rows, cache, PAD, {EOS}, **GREEDY).tolist()
    assert first == plain(model, rows, **GREEDY)
    # the shared 40-token prefix was read once, then each row's own tokens
    assert (cache.reused_tokens, cache.read_tokens) == (2 * 40, 40 + 5 + 12)

    # next turn: each row goes on from its own history (prompt + its turn) with new, differently long tokens
    observations = [tokens(7, 4), tokens(20, 5)]
    rows2 = [r + t + o for r, t, o in zip(rows, first, observations)]
    reused, read = cache.reused_tokens, cache.read_tokens
    second = generate_with_prefix_cache(model, rows2, cache, PAD, {EOS}, **GREEDY).tolist()
    assert second == plain(model, rows2, **GREEDY)
    # all but the last generated token of each row was kept (that one was never read back)
    assert cache.reused_tokens - reused == sum(len(r) + len(t) - 1 for r, t in zip(rows, first))
    assert cache.read_tokens - read == sum(1 + len(o) for o in observations)
    # an entry the new rows extend is dropped: one entry per row remains
    assert sorted(len(e.ids) for e in cache.entries) == sorted(len(r) + 6 - 1 for r in rows2)


def test_a_group_of_identical_prompts_is_read_once(model):
    cache = PrefixCache(min_reuse=4)
    prompt = tokens(30, 6)
    out = generate_with_prefix_cache(model, [prompt] * 4, cache, PAD, {EOS}, **GREEDY).tolist()
    assert out == plain(model, [prompt] * 4, **GREEDY)
    assert cache.read_tokens == 29 + 4  # the prefix once, then each row's last token
    assert cache.reused_tokens == 4 * 29


def test_rows_that_end_early_keep_their_tokens_up_to_the_end(model):
    cache = PrefixCache(min_reuse=4)
    rows = [tokens(20, 7), tokens(25, 8)]
    # make the model stop row 0 at once: whatever it would generate first counts as the end of its turn
    first_token = plain(model, rows, max_new_tokens=1, do_sample=False)[0][0]
    out = generate_with_prefix_cache(model, rows, cache, PAD, {first_token}, max_new_tokens=6, do_sample=False,
                                     eos_token_id=first_token).tolist()
    assert out[0][0] == first_token and all(t == PAD for t in out[0][1:])
    end = out[1].index(first_token) + 1 if first_token in out[1] else len(out[1])
    # row 0 keeps its prompt and the token that ended it; row 1 all it read (its last token was not read)
    assert sorted(len(e.ids) for e in cache.entries) == sorted([20 + 1, 25 + min(end, len(out[1]) - 1)])


def test_the_cache_keeps_within_its_budget_least_recently_used_first(model):
    probe = PrefixCache(min_reuse=4)
    generate_with_prefix_cache(model, [tokens(30, 9)], probe, PAD, {EOS}, max_new_tokens=1, do_sample=False)
    per_token = probe.entries[0].nbytes // len(probe.entries[0].ids)
    cache = PrefixCache(max_bytes=per_token * 70, min_reuse=4)
    a, b, c = tokens(30, 10), tokens(30, 11), tokens(30, 12)
    for ids in (a, b):
        generate_with_prefix_cache(model, [ids], cache, PAD, {EOS}, max_new_tokens=1, do_sample=False)
    generate_with_prefix_cache(model, [a + [5, 6]], cache, PAD, {EOS}, max_new_tokens=1, do_sample=False)
    generate_with_prefix_cache(model, [c], cache, PAD, {EOS}, max_new_tokens=1, do_sample=False)
    kept = [e.ids[:30] for e in cache.entries]
    assert sum(e.nbytes for e in cache.entries) <= per_token * 70
    assert kept == [a, c]  # b was least recently used; a's longer row replaced its own shorter one


def test_model_sampler_with_and_without_the_cache_samples_the_same_turns(model):
    from mtr.rollout import ModelSampler

    tok = SimpleNamespace(pad_token_id=PAD, eos_token_id=EOS)
    prompt = tokens(40, 13)
    turns = {}
    for cached in (False, True):
        torch.manual_seed(0)
        sampler = ModelSampler(model, tok, 1e-4, batch_size=4, prefix_cache=cached)
        first = sampler.generate([(prompt, 5)] * 3)
        second = sampler.generate([(prompt + t.ids + tokens(9, 14 + i), 5) for i, t in enumerate(first)])
        turns[cached] = [t.ids for t in first + second]
    assert turns[True] == turns[False]
    assert sampler.cache.reused_tokens > 0


def test_a_lora_policy_generates_the_same_through_the_cache():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False)).double().eval()
    cache = PrefixCache(min_reuse=4)
    rows = [tokens(30, 15), tokens(35, 16)]
    first = generate_with_prefix_cache(lora, rows, cache, PAD, {EOS}, **GREEDY).tolist()
    rows2 = [r + t + tokens(5, 17) for r, t in zip(rows, first)]
    second = generate_with_prefix_cache(lora, rows2, cache, PAD, {EOS}, **GREEDY).tolist()
    assert first == plain(lora, rows, **GREEDY) and second == plain(lora, rows2, **GREEDY)
    assert cache.reused_tokens > 0


def test_a_buffered_layer_that_outgrows_its_reserve_holds_what_concatenation_does():
    from mtr.backends.kvcache import _buffered_layer_class

    layer = _buffered_layer_class()(capacity=2)
    parts = [torch.randn(3, 2, n, 4, dtype=torch.float64) for n in (3, 1, 1)]
    for part in parts:
        keys, values = layer.update(part, -part)
    whole = torch.cat(parts, dim=-2)
    assert torch.equal(keys, whole) and torch.equal(values, -whole)
    assert layer.get_seq_length() == 5
    reserved = _buffered_layer_class()(capacity=8)
    reserved.update(parts[0], parts[0])
    assert reserved.key_buffer.shape[-2] == 8  # what fits its reserve takes no more


@pytest.mark.parametrize("weight_major", [False, True])
@pytest.mark.parametrize("buffered,alone", [(False, False), (True, False), (False, True)])
def test_each_layout_of_the_batch_generates_the_same(model, monkeypatch, buffered, alone, weight_major):
    import mtr.backends.kvcache as kv

    monkeypatch.setattr(kv, "BUFFERED", buffered)
    monkeypatch.setattr(kv, "READ_ROWS_ALONE", alone)
    monkeypatch.setattr(kv, "WEIGHT_MAJOR", weight_major)
    cache = PrefixCache(min_reuse=4)
    system = tokens(40, 11)
    rows = [system + tokens(3, 12), system + tokens(17, 13), tokens(9, 14)]
    first = generate_with_prefix_cache(model, rows, cache, PAD, {EOS}, **GREEDY).tolist()
    rows2 = [r + t + tokens(4 + 6 * i, 15 + i) for i, (r, t) in enumerate(zip(rows, first))]
    second = generate_with_prefix_cache(model, rows2, cache, PAD, {EOS}, **GREEDY).tolist()
    assert (first, second) == (plain(model, rows, **GREEDY), plain(model, rows2, **GREEDY))


def test_a_few_rows_weight_major_give_what_nn_linear_gives_with_and_without_a_bias():
    from mtr.backends.kvcache import _weight_major_forward

    torch.manual_seed(0)
    for bias in (False, True):
        layer = torch.nn.Linear(7, 5, bias=bias).double()
        x = torch.randn(2, 3, 7, dtype=torch.float64)
        with torch.no_grad():
            y = _weight_major_forward(layer, x)
            assert y.shape == (2, 3, 5) and y.is_contiguous()
            assert torch.allclose(y, layer(x), atol=1e-12)


def test_weight_major_holds_only_within_its_block_and_only_for_few_rows_without_gradients(monkeypatch):
    import mtr.backends.kvcache as kv

    monkeypatch.setattr(kv, "WEIGHT_MAJOR", True)
    monkeypatch.setattr(kv, "WEIGHT_MAJOR_ROWS", 4)
    model = tiny_llama()
    hooked = model.model.layers[0].mlp.up_proj
    hooked.forward = own = lambda x: torch.nn.functional.linear(x, hooked.weight)  # e.g. accelerate's hook
    through_torch = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: through_torch.append(1) or linear(*a, **k))
    few, many = torch.tensor([tokens(3, 1)]), torch.tensor([tokens(9, 2)])
    with torch.no_grad():
        expected = model(few).logits
        with kv.weight_major(model):
            assert hooked.forward is own and "forward" in vars(model.lm_head)
            through_torch.clear()
            assert torch.allclose(model(few).logits, expected, atol=1e-12)
            assert len(through_torch) == 1  # the hooked layer alone went through torch's product
            through_torch.clear()
            model(many)  # 9 rows: torch's own product in every layer
            assert len(through_torch) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with pytest.raises(RuntimeError), kv.weight_major(model):
        through_torch.clear()
        model(few).logits.sum().backward()  # with gradients: torch's own product
        assert len(through_torch) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        raise RuntimeError("leaves the block")
    assert "forward" not in vars(model.lm_head) and hooked.forward is own
    # nested (two roles on one model, generating at once): weight-major until the last block is left
    with kv.weight_major(model):
        with kv.weight_major(model):
            pass
        assert "forward" in vars(model.lm_head)
    assert "forward" not in vars(model.lm_head) and hooked.forward is own
