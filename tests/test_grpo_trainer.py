"""The GRPO trainer's unpadded scoring: the same log-probabilities as TRL's padded pass, without the padding."""

import pytest
import torch

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
