"""TextVQA: the m4c soft accuracy (VQA accuracy over the 10 human answers, EvalAI normalisation).

LLaVA's answer files keep the image id as ``question_id`` and the full prompt; the question is
recovered from the prompt (it is the first line, or follows the OCR tokens) and matched with the
annotation by (image id, lower-cased question).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llava.eval.scorers.vqa import vqa_accuracy

_OCR_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_from_prompt(prompt: str) -> str:
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        m = _OCR_PROMPT.search(prompt)
        if m is None:
            raise ValueError(
                f"TextVQA prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:': {prompt!r}"
            )
        question = m.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"cannot find the question in this TextVQA prompt: {prompt!r}")
    return question.lower()


def score_textvqa(annotations: Sequence[dict], answers: Sequence[dict]) -> tuple[float, int]:
    """Mean soft accuracy over ``answers``; returns (accuracy in [0, 1], number scored)."""
    by_key = {(a["image_id"], a["question"].lower()): a for a in annotations}
    scores = []
    for ans in answers:
        key = (ans["question_id"], question_from_prompt(ans["prompt"]))
        if key not in by_key:
            raise KeyError(
                f"TextVQA answer {key} has no annotation: is --annotation-file the matching split?"
            )
        scores.append(vqa_accuracy(ans["text"], by_key[key]["answers"]))
    if not scores:
        raise ValueError("no TextVQA answers to score")
    return sum(scores) / len(scores), len(scores)
