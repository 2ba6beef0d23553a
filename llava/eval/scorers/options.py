"""Reading the chosen option letter out of a free-form answer to a multiple-choice question.

Used by MMBench and SEED-Bench, whose prompts end with "Answer with the option's letter from the
given choices directly." Rules, in order:
1. the answer is a letter, or starts with a letter followed by ``. ) : , 、`` or is ``(X)``;
2. it says "the answer is X" / "answer: X" (also 答案是X / 答案：X / 选项X);
3. it repeats exactly one option's text (case and a final period ignored).
Anything else is ``None`` (counted as wrong). A letter outside the question's options is ``None``.
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
