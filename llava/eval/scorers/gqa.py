"""GQA: exact-match accuracy of the normalised prediction, overall, binary vs open, per question type.

Predictions are normalised as LLaVA's converter does (trailing periods dropped, lower case). The
ground truth is GQA's question file (e.g. ``testdev_balanced_questions.json``: ``{qid: {"answer",
"types": {"structural", "semantic"}, "isBalanced"}}``). A question is "open" when its structural
type is ``query`` and "binary" otherwise, as in GQA's official ``eval.py``; only balanced questions
count. Consistency, validity, plausibility and grounding need GQA's choices and scene-graph files:
run GQA's own ``eval.py`` on the same predictions file for those.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


def normalize_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def predictions_from_answers(answers: Sequence[dict]) -> list[dict]:
    """The ``[{"questionId", "prediction"}]`` file GQA's evaluation reads."""
    return [{"questionId": a["question_id"], "prediction": normalize_prediction(a["text"])} for a in answers]


def score_gqa(questions: dict, predictions: Sequence[dict]) -> dict:
    preds = {str(p["questionId"]): p["prediction"] for p in predictions}
    buckets: dict[str, list[bool]] = defaultdict(list)
    missing = 0
    for qid, q in questions.items():
        if not q.get("isBalanced", True):
            continue
        if str(qid) not in preds:
            missing += 1
        ok = preds.get(str(qid)) == str(q["answer"]).lower()
        structural = q.get("types", {}).get("structural")
        buckets["accuracy"].append(ok)
        buckets["open" if structural == "query" else "binary"].append(ok)
        if structural:
            buckets[f"structural/{structural}"].append(ok)
        semantic = q.get("types", {}).get("semantic")
        if semantic:
            buckets[f"semantic/{semantic}"].append(ok)
    if not buckets["accuracy"]:
        raise ValueError("no balanced GQA questions to score")
    out = {k: 100.0 * sum(v) / len(v) for k, v in buckets.items()}
    out["count"] = len(buckets["accuracy"])
    out["missing"] = missing
    return out
