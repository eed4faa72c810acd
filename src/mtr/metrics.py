"""Answer metrics as the field computes them (the official SQuAD v1.1 / HotpotQA evaluation scripts).

`normalize_answer` lower-cases, removes punctuation, the articles a/an/the and extra white space, exactly
as those scripts do; before that we apply Unicode NFKC normalisation (our addition, so that full-width or
composed characters compare equal; ASCII text is unaffected). EM and F1 are the maximum over the gold
answer and its aliases. `cover_em` (the normalised gold answer occurs in the normalised prediction) is a
looser metric some papers report; it is always reported separately from EM.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    s = unicodedata.normalize("NFKC", s or "")
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _f1_one(prediction: str, gold: str) -> float:
    pred_norm, gold_norm = normalize_answer(prediction), normalize_answer(gold)
    # The HotpotQA script: yes/no/noanswer only match exactly.
    special = ("yes", "no", "noanswer")
    if (pred_norm in special or gold_norm in special) and pred_norm != gold_norm:
        return 0.0
    pred_tokens, gold_tokens = pred_norm.split(), gold_norm.split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str | None, golds: list[str]) -> float:
    if prediction is None or not prediction.strip():
        return 0.0
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def f1_score(prediction: str | None, golds: list[str]) -> float:
    if prediction is None or not prediction.strip():
        return 0.0
    return max((_f1_one(prediction, g) for g in golds), default=0.0)


def cover_em(prediction: str | None, golds: list[str]) -> float:
    if prediction is None or not prediction.strip():
        return 0.0
    p = normalize_answer(prediction)
    return float(any((ng := normalize_answer(g)) and ng in p for g in golds))


def answer_correct(prediction: str | None, golds: list[str], metric: str = "em", threshold: float = 1.0) -> bool:
    """The filter's and the reward's notion of correct: EM, or F1 at or above `threshold`."""
    if metric == "em":
        return exact_match(prediction, golds) == 1.0
    if metric == "f1":
        return f1_score(prediction, golds) >= threshold
    raise ValueError(f"unknown answer metric {metric!r}; use em or f1")


# Bootstrap intervals over questions. Written here (a few lines of numpy) rather than with scipy.stats.bootstrap:
# scipy is not otherwise a dependency, and the paired difference of two arms on the same questions needs the
# same resampled indices for both, which is plain to write and to read this way.
def bootstrap_ci(values: list[float], n_resamples: int = 2000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """The mean of `values` and its percentile bootstrap interval: (mean, low, high)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no values")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_bootstrap_diff(a: dict[str, float], b: dict[str, float], n_resamples: int = 2000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float, float, int]:
    """B minus A on the questions both scored (keys), resampled together: (mean diff, low, high, n)."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError("paired_bootstrap_diff: the two sets share no question")
    mean, low, high = bootstrap_ci([b[k] - a[k] for k in keys], n_resamples, level, seed)
    return mean, low, high, len(keys)
