"""Metric cases pinned to the official SQuAD v1.1 / HotpotQA evaluation scripts' behaviour."""

import pytest

from mtr.metrics import answer_correct, cover_em, exact_match, f1_score, normalize_answer


@pytest.mark.parametrize("raw,norm", [
    ("The Cat!", "cat"),
    ("  an   apple, a pear  ", "apple pear"),
    ("Saint-Pierre", "saintpierre"),  # punctuation is deleted, not replaced by a space
    ("THE the Thematic", "thematic"),
    ("U.S.A.", "usa"),
    ("ＵＳＡ", "usa"),  # NFKC (our addition): full-width letters
    ("", ""),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_em_is_max_over_aliases_and_normalised():
    assert exact_match("the Eiffel Tower", ["Eiffel Tower"]) == 1.0
    assert exact_match("USA", ["United States", "USA"]) == 1.0
    assert exact_match("Saint Pierre", ["Saint-Pierre"]) == 0.0


def test_f1_token_overlap():
    assert f1_score("Barack Obama", ["Obama"]) == pytest.approx(2 / 3)
    assert f1_score("the president Barack Obama", ["Barack Obama", "Obama"]) == pytest.approx(0.8)
    assert f1_score("Paris", ["London"]) == 0.0
    # repeated tokens count with multiplicity (Counter intersection)
    assert f1_score("a b b", ["b b c"]) == pytest.approx(2 * (1.0 * (2 / 3)) / (1.0 + 2 / 3))


def test_yes_no_only_match_exactly_in_f1():
    assert f1_score("yes it is", ["yes"]) == 0.0
    assert f1_score("no", ["no"]) == 1.0
    assert f1_score("yes", ["no"]) == 0.0


def test_cover_em_is_separate_from_em():
    pred = "He was born in 1755 in Moscow"
    assert cover_em(pred, ["1755"]) == 1.0 and exact_match(pred, ["1755"]) == 0.0
    assert cover_em("Moscow", ["1755"]) == 0.0


def test_unicode_forms_compare_equal():
    composed, decomposed = "Cahiers du cinéma", "Cahiers du cine\u0301ma"
    assert exact_match(decomposed, [composed]) == 1.0
    assert f1_score("Zürich", ["zürich"]) == 1.0


@pytest.mark.parametrize("pred", ["", "   \n\t", None])
def test_blank_prediction_scores_zero(pred):
    assert exact_match(pred, ["x"]) == 0.0 and f1_score(pred, ["x"]) == 0.0 and cover_em(pred, ["x"]) == 0.0


def test_answer_correct():
    assert answer_correct("Obama", ["Barack Obama"], "f1", 0.6)
    assert not answer_correct("Obama", ["Barack Obama"], "em")
    with pytest.raises(ValueError):
        answer_correct("a", ["a"], "bleu")
