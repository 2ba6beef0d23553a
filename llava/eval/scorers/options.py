"""Reading the chosen option letter out of a free-form answer to a multiple-choice question.

Two rule sets, one per benchmark's own evaluator:

``extract_option`` (SEED-Bench, whose prompt ends with "Answer with the option's letter from the
given choices directly."). Rules, in order:
1. the answer is a letter, or starts with a letter followed by ``. ) : , 、`` or is ``(X)``;
2. it says "the answer is X" / "answer: X" (also 答案是X / 答案：X / 选项X);
3. it repeats exactly one option's text (case and a final period ignored).
Anything else is ``None`` (counted as wrong). A letter outside the question's options is ``None``.

``match_option`` (MMBench): the rule-based steps of the official MMBench evaluator (OpenCompass /
VLMEvalKit ``can_infer``, as the MMBench server applied them when LLaVA-1.5 was scored):
0. an answer holding one of a few refusal sentences is ``"Z"`` (matched, and never right);
1. option letter: ``. ( ) [ ] , : ; ! * # { }`` become spaces, the answer is split on white space,
   and if exactly one of the question's letters is among the words, that letter (case-sensitive,
   so "A cat" picks A); if none is but a word is ``Z``, ``"Z"``;
2. option text: if exactly one option's text occurs in the answer (both lower-cased), its letter.
Otherwise ``None``: the server would then ask a GPT judge; scored locally it counts as wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
_LEADING = re.compile(r"^[\(（]?([A-Z])(?:$|[\.\)）:：,，、])")
_STATED = re.compile(
    r"(?:answer is|answer:|答案是|答案[:：]|选项)\s*[\(（]?([A-Z])(?![A-Za-z])", re.IGNORECASE
)


def _norm(text: str) -> str:
    return " ".join(text.strip().rstrip(".。").lower().split())


def extract_option(text: str, letters: Sequence[str], options: Sequence[str] | None = None) -> str | None:
    """The letter among ``letters`` that ``text`` picks, or ``None``; ``options`` are the choices' texts."""
    t = text.strip()
    for pattern in (_LEADING, _STATED):
        m = pattern.search(t) if pattern is _STATED else pattern.match(t)
        if m:
            return m.group(1) if m.group(1) in letters else None
    if options:
        hits = [letter for letter, option in zip(letters, options) if _norm(str(option)) == _norm(t)]
        if len(hits) == 1:
            return hits[0]
    return None


NO_OPTION = "Z"
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})


def option_from_letter(text: str, letters: Sequence[str]) -> str | None:
    """Step 1 of ``match_option``: the only one of ``letters`` that is a word of ``text`` (or ``"Z"``)."""
    words = text.translate(_SEPARATORS).split()
    found = [letter for letter in letters if letter in words]
    if len(found) == 1:
        return found[0]
    if not found and NO_OPTION in words:
        return NO_OPTION
    return None


def option_from_text(text: str, letters: Sequence[str], options: Sequence[str]) -> str | None:
    """Step 2 of ``match_option``: the letter of the only option whose text occurs in ``text``."""
    low = text.lower()
    hits = [letter for letter, option in zip(letters, options) if str(option).lower() in low]
    return hits[0] if len(hits) == 1 else None


def match_option(text, options: Sequence[str], letters: Sequence[str] | None = None) -> str | None:
    """The option letter the official MMBench rules read from ``text``, ``"Z"``, or ``None`` (unmatched).

    ``options`` are the texts shown as ``letters`` (by default A, B, ... one per option).
    """
    text = str(text)
    letters = tuple(letters) if letters is not None else LETTERS[: len(options)]
    if any(sentence in text for sentence in REFUSALS):
        return NO_OPTION
    return option_from_letter(text, letters) or option_from_text(text, letters, options)
