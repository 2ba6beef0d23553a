"""SEED-Bench: option-letter accuracy per question type, on image and video questions, and overall.

Ground truth is SEED-Bench's ``SEED-Bench.json`` (``question_type: {name: id}``, ``questions``
with ``question_id``, ``question_type_id``, ``data_type`` image/video, ``answer`` letter and the
``choice_a`` ... ``choice_d`` texts). Answers are matched by ``question_id`` (compared as text).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from llava.eval.scorers.options import extract_option

LETTERS = ("A", "B", "C", "D")


def _choices(q: dict) -> list[str]:
    return [q.get(f"choice_{c.lower()}", "") for c in LETTERS]


def score_seed(data: dict, answers: Sequence[dict]) -> dict:
    type_names = {int(i): name for name, i in data["question_type"].items()}
    by_id = {str(a["question_id"]): a["text"] for a in answers}
    buckets: dict[str, list[bool]] = defaultdict(list)
    missing = 0
    for q in data["questions"]:
        qid = str(q["question_id"])
        if qid not in by_id:
            missing += 1
        ok = qid in by_id and extract_option(by_id[qid], LETTERS, _choices(q)) == q["answer"]
        buckets[type_names.get(int(q["question_type_id"]), str(q["question_type_id"]))].append(ok)
        buckets[f"data_type/{q.get('data_type', 'image')}"].append(ok)
        buckets["overall"].append(ok)
    if not buckets["overall"]:
        raise ValueError("SEED-Bench annotation has no questions")
    out = {k: 100.0 * sum(v) / len(v) for k, v in buckets.items()}
    out["missing"] = missing
    return out


def seed_upload(data: dict, answers: Sequence[dict]) -> list[dict]:
    """The upload rows ``{"question_id", "prediction"}`` in annotation order (raw answer text)."""
    by_id = {str(a["question_id"]): a["text"] for a in answers}
    missing = [q["question_id"] for q in data["questions"] if str(q["question_id"]) not in by_id]
    if missing:
        raise KeyError(f"{len(missing)} SEED-Bench questions have no answer (first: {missing[:5]}); "
                       "finish answer generation (it resumes) before converting")  # fmt: skip
    return [
        {"question_id": q["question_id"], "prediction": by_id[str(q["question_id"])]}
        for q in data["questions"]
    ]
