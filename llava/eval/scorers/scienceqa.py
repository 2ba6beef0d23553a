"""ScienceQA: option-letter extraction and accuracy, overall and on the questions with an image (IMG).

Extraction rule (LLaVA-1.5's, for answers produced with "Answer with the option's letter from the
given choices directly."): the whole answer is a letter; or it starts with "<letter>. "; or it
contains exactly one "The answer is <letter>"; otherwise the answer is "FAILED". A letter beyond
the question's number of choices, or FAILED, counts as wrong (prediction index -1).

Ground truth comes from ScienceQA's ``problems.json`` (``choices``, ``answer`` index, ``image``) or,
when that is absent, from LLaVA's converted question file (``llava_test_CQM-A.json``: the answer
letter is the assistant turn, the choices are the trailing ``A. ...`` lines of the question).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
_CHOICE_LINE = re.compile(r"^([A-Z])\. ")


def extract_letter(text: str, options: Sequence[str] = OPTIONS) -> str:
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def prediction_index(letter: str, num_choices: int, options: Sequence[str] = OPTIONS) -> int:
    return list(options).index(letter) if letter in options[:num_choices] else -1


@dataclass
class Problem:
    num_choices: int
    answer: int  # index of the right choice
    has_image: bool


def problems_from_scienceqa(problems: dict) -> dict[str, Problem]:
    return {
        pid: Problem(num_choices=len(p["choices"]), answer=int(p["answer"]), has_image=bool(p.get("image")))
        for pid, p in problems.items()
    }


def problems_from_llava(questions: Sequence[dict], options: Sequence[str] = OPTIONS) -> dict[str, Problem]:
    out = {}
    for q in questions:
        human, gpt = q["conversations"][0]["value"], q["conversations"][1]["value"].strip()
        letters: list[str] = []  # the last run of lines "A. ...", "B. ...", ... (a choice may span lines)
        for line in human.split("\n"):
            m = _CHOICE_LINE.match(line)
            if m and m.group(1) == options[0]:
                letters = [options[0]]
            elif m and letters and len(letters) < len(options) and m.group(1) == options[len(letters)]:
                letters.append(m.group(1))
        if gpt not in options or not letters:
            raise ValueError(f"ScienceQA question {q['id']}: cannot read its choices / answer letter {gpt!r}")
        out[str(q["id"])] = Problem(
            num_choices=len(letters), answer=list(options).index(gpt), has_image="image" in q
        )
    return out


def score_scienceqa(
    problems: dict[str, Problem],
    split_ids: Sequence[str],
    answers: Sequence[dict],
    options: Sequence[str] = OPTIONS,
) -> dict:
    """Score the problems of ``split_ids``; a problem without an answer counts as FAILED.

    Returns ``{"correct": [...], "incorrect": [...], "results": {pid: pred_idx}, "outputs": {pid: text},
    "acc", "img_acc", "count", "img_count", "missing"}`` (the first four as in the original's output files).
    """
    by_id = {str(a["question_id"]): a for a in answers}
    unknown = [pid for pid in split_ids if pid not in problems]
    if unknown:
        raise KeyError(f"{len(unknown)} split ids are not in the ground truth, e.g. {unknown[:5]}")
    correct, incorrect, results, outputs, missing = [], [], {}, {}, 0
    for pid in split_ids:
        prob = problems[pid]
        ans = by_id.get(pid)
        if ans is None:
            missing += 1
            ans = {"text": "FAILED", "prompt": "Unknown"}
        text = ans["text"]
        letter = extract_letter(text, options)
        idx = prediction_index(letter, prob.num_choices, options)
        analysis = {
            "question_id": pid,
            "parsed_ans": letter,
            "ground_truth": options[prob.answer],
            "question": ans["prompt"],
            "pred": text,
            "is_multimodal": prob.has_image,
        }
        results[pid], outputs[pid] = idx, text
        (correct if idx == prob.answer else incorrect).append(analysis)
    count = len(correct) + len(incorrect)
    img_correct = sum(a["is_multimodal"] for a in correct)
    img_count = img_correct + sum(a["is_multimodal"] for a in incorrect)
    return {
        "correct": correct,
        "incorrect": incorrect,
        "results": results,
        "outputs": outputs,
        "acc": 100 * len(correct) / count if count else 0.0,
        "img_acc": 100 * img_correct / img_count if img_count else 0.0,
        "count": count,
        "img_count": img_count,
        "missing": missing,
    }
