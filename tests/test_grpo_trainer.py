"""The GRPO trainer's unpadded scoring: the same log-probabilities as TRL's padded pass, without the padding."""

import pytest
import torch
import torch.nn.functional as F

from mtr.grpo_trainer import score_unpadded, used_columns


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    return model.eval()


def reference_scorer(model, widths):
    """TRL's contract: log-probs (and entropies) of the last `keep` positions' tokens, 0 on padding."""

    def score(ids, mask, keep, compute_entropy=False):
        widths.append(ids.size(1))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -keep - 1:-1].float()
        logp = logits.log_softmax(-1)
        ent = -(logp.exp() * logp).sum(-1) if compute_entropy else None
        real = mask[:, -keep:].bool()  # TRL's fused head gives 0 where a label is masked
        lp = logp.gather(-1, ids[:, -keep:].unsqueeze(-1)).squeeze(-1).masked_fill(~real, 0)
        return lp, ent.masked_fill(~real, 0) if ent is not None else None, None

    return score


def group(prompts, completions, pad=0):
    """A TRL generation batch: prompts padded on the left, completions on the right."""
    pw, cw = max(map(len, prompts)), max(map(len, completions))
    ids = [[pad] * (pw - len(p)) + p + c + [pad] * (cw - len(c)) for p, c in zip(prompts, completions)]
    mask = [[0] * (pw - len(p)) + [1] * (len(p) + len(c)) + [0] * (cw - len(c)) for p, c in zip(prompts, completions)]
    return torch.tensor(ids), torch.tensor(mask), cw


def test_used_columns_trims_shared_padding_and_keeps_one_completion_column():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0]])
    assert used_columns(mask, logits_to_keep=4) == (1, 5)
    assert used_columns(torch.tensor([[0, 1, 1, 0, 0]]), logits_to_keep=2) == (1, 4)  # empty completion
    assert used_columns(torch.tensor([[1, 1, 1, 1]]), logits_to_keep=2) == (0, 4)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_unpadded_scores_match_the_padded_pass_on_every_real_token(batch_size):
    model = tiny_llama()
    prompts = [[5, 6, 7, 8, 9], [3, 4], [11, 12, 13]]
    completions = [[20, 21], [22, 23, 24, 25, 26, 27], [30]]
    ids, mask, keep = group(prompts, completions)
    padded_widths, widths = [], []
    with torch.no_grad():
        want, want_ent, _ = reference_scorer(model, padded_widths)(ids, mask, keep, compute_entropy=True)
        got, got_ent = score_unpadded(reference_scorer(model, widths), ids, mask, keep, batch_size, True)
    assert got.shape == want.shape == (3, keep) and got_ent.shape == want_ent.shape
    real = torch.tensor([[1] * len(c) + [0] * (keep - len(c)) for c in completions]).bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)
    assert torch.allclose(got_ent[real], want_ent[real], atol=1e-5)
    assert (got[~real] == 0).all()
    if batch_size == 1:  # each row alone: no padding column reaches the model
        assert widths == [len(p) + len(c) for p, c in zip(prompts, completions)]


def test_unpadded_loss_gradients_match_the_padded_pass():
    model = tiny_llama()
    ids, mask, keep = group([[5, 6, 7], [3]], [[20, 21, 22, 23], [24]])
    real = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]).float()

    def grads(fn):
        model.zero_grad()
        (fn() * real).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    want = grads(lambda: reference_scorer(model, [])(ids, mask, keep)[0])
    got = grads(lambda: score_unpadded(reference_scorer(model, []), ids, mask, keep, batch_size=1)[0])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))


def test_padding_pct_is_the_share_of_padding_in_batches_padded_to_their_longest_episode():
    from mtr.stages.grpo import padding_pct

    assert padding_pct([[10, 10], [4, 8]]) == 11.1  # 4 padding tokens of 36
    assert padding_pct([[6, 2]]) == 33.3 and padding_pct([]) is None


def fused(model, temperature=1.0):
    """The tiny model with TRL's fused head, as GRPOTrainer patches its policy."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy"))
    return lambda **inputs: model(**inputs, fused_lm_head=True)


def test_prompt_groups_finds_shared_prompts_and_refuses_a_hole():
    from mtr.grpo_trainer import prompt_groups

    ids, mask, keep = group([[5, 6, 7], [3], [5, 6, 7], [5, 6]], [[20], [21, 22], [23, 24, 25], [26]])
    assert prompt_groups(ids, mask, keep) == [[0, 2], [1], [3]]
    holed = mask.clone()
    holed[2, -2] = 0  # a masked token inside a completion: packing would move the tokens after it
    assert prompt_groups(ids, holed, keep) is None


def test_packed_layout_repeats_the_prompts_last_token_for_each_episode():
    from mtr.shared_prompt import packed_layout

    lay = packed_layout(torch.tensor([1, 2, 3]), [torch.tensor([7, 8]), torch.tensor([9])])
    assert lay["input_ids"].tolist() == [1, 2, 3, 7, 8, 3, 9]
    assert lay["position_ids"].tolist() == [0, 1, 2, 3, 4, 2, 3]
    assert lay["shift_labels"].tolist() == [-100, -100, 7, 8, -100, 9, -100]
    assert lay["shared"] == 2 and lay["segments"] == [(2, 5), (5, 7)]


def test_packed_scores_and_gradients_match_each_row_scored_alone():
    """A group of 4 episodes sharing a prompt (one of them empty) and a row with another prompt: the packed
    pass gives every real token the log-prob and entropy it has alone, 0 elsewhere, and the same gradients."""
    from mtr.grpo_trainer import prompt_groups, score_packed
    from mtr.shared_prompt import use_shared_prompt_attention

    model = tiny_llama().double()
    assert use_shared_prompt_attention(model)
    forward = fused(model, temperature=0.7)
    prompts = [[5, 6, 7, 8, 9]] * 4 + [[3, 4]]
    completions = [[20, 21], [22, 23, 24, 25, 26, 27], [], [30, 31, 32], [33, 34]]
    ids, mask, keep = group(prompts, completions)
    groups = prompt_groups(ids, mask, keep)
    assert groups == [[0, 1, 2, 3], [4]]
    real = torch.tensor([[1] * len(c) + [0] * (keep - len(c)) for c in completions]).bool()
    weights = torch.rand(real.shape, dtype=torch.float64) * real

    def alone():  # each row by itself, its padding cut off, through TRL's own labels path
        lps, ents = [], []
        for r, (p, c) in enumerate(zip(prompts, completions)):
            row = torch.tensor([p + c])
            labels = row.clone()
            labels[:, :len(p)] = -100
            out = forward(input_ids=row, attention_mask=torch.ones_like(row), labels=labels)
            lps.append(F.pad(out.log_probs[0, len(p) - 1:], (0, keep - len(c))))
            ents.append(F.pad(out.entropy[0, len(p) - 1:], (0, keep - len(c))))
        return torch.stack(lps), torch.stack(ents)

    def packed():
        return score_packed(forward, ids, mask, keep, groups, True)

    def run(fn):
        model.zero_grad()
        lp, ent = fn()
        (lp * weights).sum().backward()
        return lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]

    (want, want_ent, want_g), (got, got_ent, got_g) = run(alone), run(packed)
    assert got.shape == want.shape == (5, keep)
    assert torch.allclose(got[real], want[real], atol=1e-10) and (got[~real] == 0).all()
    assert torch.allclose(got_ent[real], want_ent[real], atol=1e-10)
    # TRL's fused head takes its backward in float32: gradients agree to its rounding
    assert all((a - b).norm() <= 1e-6 * b.norm() for a, b in zip(got_g, want_g))


@pytest.mark.parametrize("batch_size", [2, 5])
def test_trainer_packs_rows_sharing_a_prompt_within_each_micro_batch(batch_size):
    """UnpaddedGRPOTrainer's pass: with share_prompt, a micro-batch's rows that share a prompt reach the model
    as one packed row, and the log-probs are those of the pass without it."""
    from accelerate import Accelerator

    from mtr.grpo_trainer import UnpaddedGRPOTrainer
    from mtr.shared_prompt import use_shared_prompt_attention

    model = tiny_llama().double()
    fused(model)
    use_shared_prompt_attention(model)
    widths = []
    model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    prompts = [[5, 6, 7, 8, 9]] * 4 + [[3, 4]]
    completions = [[20, 21], [22, 23, 24, 25, 26, 27], [28], [30, 31, 32], [33, 34]]
    ids, mask, keep = group(prompts, completions)
    trainer = UnpaddedGRPOTrainer.__new__(UnpaddedGRPOTrainer)  # the scoring pass needs no more of a trainer
    trainer.accelerator = Accelerator(cpu=True)
    results = {}
    for share in (False, True):
        trainer.share_prompt = share
        widths.clear()
        with torch.no_grad():
            lp, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep, batch_size,
                                                                    compute_entropy=True)
        results[share] = (lp, ent, list(widths))
    (plain, plain_ent, plain_w), (packed, packed_ent, packed_w) = results[False], results[True]
    assert torch.allclose(packed, plain, atol=1e-10) and torch.allclose(packed_ent, plain_ent, atol=1e-10)
    # a packed row: the prompt but its last token (4), then each episode's completion after that token
    if batch_size == 5:  # rows 0-3 packed, row 4 alone
        assert plain_w == [(5, 11)]
        assert packed_w == [(1, 4 + (1 + 2) + (1 + 6) + (1 + 1) + (1 + 3)), (1, 4)]
    else:  # micro-batches of 2: rows 0-1 packed, rows 2-3 packed, row 4 alone
        assert packed_w == [(1, 4 + (1 + 2) + (1 + 6)), (1, 4 + (1 + 1) + (1 + 3)), (1, 4)]


def test_shared_prompt_attention_is_installed_only_over_full_sdpa_attention():
    from transformers import MistralConfig, MistralForCausalLM

    from mtr.shared_prompt import SHARED_PROMPT, use_shared_prompt_attention

    model = tiny_llama()
    assert use_shared_prompt_attention(model) and model.config._attn_implementation == SHARED_PROMPT
    assert use_shared_prompt_attention(model)  # twice is once
    eager = tiny_llama()
    eager.config._attn_implementation = "eager"
    assert not use_shared_prompt_attention(eager) and eager.config._attn_implementation == "eager"
    windowed = MistralForCausalLM(MistralConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                                sliding_window=8))
    assert not use_shared_prompt_attention(windowed) and windowed.config._attn_implementation == "sdpa"
