"""LLaVA-Bench (COCO and in-the-wild): summary of GPT-judge review files.

Each review line holds ``tuple = [reference score, model score]`` (1-10, from the judge). Per
category and overall the relative score is ``mean(model) / mean(reference) * 100``; the model's
and the reference's own means are also reported on a 0-100 scale. Reviews whose scores could not
be parsed (``[-1, -1]``) are kept in the means, as the original summary does, and counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class CategorySummary:
    category: str
    relative: float  # mean(model) / mean(reference) * 100
    reference: float  # mean reference score * 10
    model: float  # mean model score * 10
    count: int
    unparsed: int


def summarize_reviews(reviews: Sequence[dict], ignore: Iterable = ()) -> dict[str, CategorySummary]:
    ignore = set(ignore)
    scores: dict[str, list[Sequence[float]]] = defaultdict(list)
    for review in reviews:
        if review.get("question_id") in ignore:
            continue
        pair = review["tuple"] if "tuple" in review else review["score"]
        if "category" in review:
            scores[review["category"]].append(pair)
        scores["all"].append(pair)
    out = {}
    for category in sorted(scores):
        pairs = scores[category]
        ref = sum(float(p[0]) for p in pairs) / len(pairs)
        model = sum(float(p[1]) for p in pairs) / len(pairs)
        out[category] = CategorySummary(
            category=category,
            relative=100.0 * model / ref if ref else float("nan"),
            reference=10.0 * ref,
            model=10.0 * model,
            count=len(pairs),
            unparsed=sum(1 for p in pairs if list(p) == [-1, -1]),
        )
    return out


def mean_relative(summaries: Sequence[dict[str, CategorySummary]], category: str = "all") -> float:
    """Mean relative score over several review runs (the published number averages 3 judge runs)."""
    if not summaries:
        raise ValueError("no review runs to average")
    return sum(s[category].relative for s in summaries) / len(summaries)
