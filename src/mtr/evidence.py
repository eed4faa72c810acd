"""What an episode's observations say, and whether an answer rests on them.

Used by the teacher (it answers only with what it read), the filter (a kept trace's answer is supported),
the consistency reward, and the audit. Observations are read by their text values, never their JSON keys
(`results`, `title`, `text` support nothing).

- An answer is **supported** when its normalised tokens occur, in order and together, in the normalised
  text of the episode's valid observations (a call that passed every check, an observation that is
  well-formed). A yes/no answer cannot be found in a text: it is supported when every entity the question
  names (its capitalised spans, e.g. the two things a comparison compares) occurs in the observations, so
  the episode looked both up. An answer naming one of the compared entities ("Which is older, A or B?" ->
  "A") is found in the text like any other.
- A **fabricated quote**: the answering turn's thought quotes (in double quotes, four words or more) a text
  that no observation contains. Evidence claimed, not observed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mtr.metrics import normalize_answer
from mtr.trace import QAExample, Step, Trace

_ENTITY = re.compile(r"\b(?:[A-Z][\w'-]*(?: +(?:(?:of|the|de|du|von|van) +)*[A-Z][\w'-]*)*|\d[\d,.]*\d|\d)\b")
_QUOTE = re.compile(r"[\"“]([^\"”]{8,})[\"”]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
# capitalised words that name nothing (a sentence's first word, mostly)
FUNCTION_WORDS = frozenset("""a an the of in on at to for from by with and or is was were are be been who what when
where which whose how many much did does do it he she they this that these those his her its their there here as
yes no both either neither if""".split())


def text_values(value: Any) -> list[str]:
    """The strings (and numbers) of a JSON value, without its keys."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in text_values(v)]
    if isinstance(value, list):
        return [s for v in value for s in text_values(v)]
    return [str(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def observation_values(observation: str) -> list[str]:
    try:
        return text_values(json.loads(observation))
    except (json.JSONDecodeError, TypeError):
        return [observation]


def valid_observation_steps(trace: Trace) -> list[Step]:
    """Steps whose call passed every check and whose observation is well-formed: a validation-error
    observation echoes the agent's own call, and a failed tool says nothing, so neither may support."""
    return [s for s in trace.steps if s.call is not None and s.observation is not None and s.checks
            and all(c.ok for c in s.checks)]


def observed_text(trace: Trace) -> str:
    """The normalised text values of the episode's valid observations, padded for whole-word search."""
    values = [v for s in valid_observation_steps(trace) for v in observation_values(s.observation)]
    return " " + " ".join(normalize_answer(v) for v in values) + " "


def entities(text: str) -> list[str]:
    """The capitalised spans and numbers of a text, normalised: what it names. A single capitalised word that
    opens a sentence is left out (capitalised for the sentence, not as a name), and so are function words."""
    found: list[str] = []
    for m in _ENTITY.finditer(text):
        word = m.group(0)
        before = text[:m.start()].rstrip(" ")
        if " " not in word and not word[0].isdigit() and (not before or before[-1] in ".!?\n"):
            continue
        words = normalize_answer(word).split()
        while words and words[0] in FUNCTION_WORDS:  # "Are Tokarev": the question's verb, then the name
            words.pop(0)
        norm = " ".join(words)
        if norm and norm not in found:
            found.append(norm)
    return found


def supported(answer: str | None, question: str, observed: str) -> bool:
    """Whether `answer` rests on `observed` (see the module's docstring)."""
    norm = normalize_answer(answer or "")
    if not norm or not observed.strip():
        return False
    if norm in ("yes", "no"):
        named = entities(question)
        return bool(named) and all(f" {e} " in observed for e in named)
    return f" {norm} " in observed


def answer_supported(trace: Trace) -> bool:
    return supported(trace.final_answer, trace.question, observed_text(trace))


def fabricated_quote(trace: Trace) -> bool:
    """The answering turn quotes, as its evidence, a text no valid observation contains."""
    answering = next((s for s in reversed(trace.steps) if s.answer is not None), None)
    if answering is None:
        return False
    observed = observed_text(trace)
    for quote in _QUOTE.findall(answering.thought or ""):
        norm = normalize_answer(quote)
        if len(norm.split()) >= 4 and f" {norm} " not in observed:
            return True
    return False


def find_answer(example: QAExample, trace: Trace) -> tuple[str, str] | None:
    """(span, sentence): a gold answer or alias as one of the episode's observations writes it, and the
    sentence it stands in; the latest observation first. None when no observation contains one."""
    aliases = sorted({a for a in example.answers if normalize_answer(a)}, key=len, reverse=True)
    for step in reversed(valid_observation_steps(trace)):
        for value in observation_values(step.observation):
            for sentence in _SENTENCE.split(value):
                padded = f" {normalize_answer(sentence)} "
                for alias in aliases:
                    if f" {normalize_answer(alias)} " in padded:
                        m = re.search(re.escape(alias), sentence, re.IGNORECASE)
                        return (m.group(0) if m else alias), sentence.strip()
    return None
