"""MM-Vet: summary of GPT grade files and the answer file MM-Vet's grader reads.

A grade file (``<model>_gpt-4-grade-<n>runs.json``) maps ``v1_<id>`` to ``{"score": [per run]}``
with scores in [0, 1]. The total of a run is ``100 * mean score``; several runs give a mean and a
(population) standard deviation. With MM-Vet's ``mm-vet.json`` (``capability`` lists per question)
the per-capability scores (mean over the questions that need that capability) and the
per-capability-integration scores (questions with exactly that set) are added.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence


def answers_for_grader(answers: Sequence[dict], metadata: dict | None = None) -> dict[str, str]:
    """``{"v1_<question_id>": text}`` - what MM-Vet's grader takes, in answer-file order.

    With ``metadata`` (mm-vet.json's layout, from MM-Vet's file or lmms-lab's parquet) the entries follow its
    order, and a question without an answer or an answer to a question it lacks is an error: the grader
    would score the file as it is."""
    out = {f"v1_{a['question_id']}": a["text"] for a in answers}
    if metadata is None:
        return out
    missing = [k for k in metadata if k not in out]
    if missing:
        raise KeyError(f"{len(missing)} MM-Vet questions have no answer (first: {missing[:5]}); "
                       "finish answer generation (it resumes) before converting")  # fmt: skip
    extra = [k for k in out if k not in metadata]
    if extra:
        raise KeyError(f"{len(extra)} answers are to questions the MM-Vet metadata lacks (first: {extra[:5]}): "
                       "were they made from another question file?")  # fmt: skip
    return {k: out[k] for k in metadata}


def run_totals(grades: dict) -> list[float]:
    runs = {len(g["score"]) for g in grades.values()}
    if len(runs) != 1:
        raise ValueError(f"grade entries have different numbers of runs: {sorted(runs)}")
    n = runs.pop()
    return [100.0 * sum(float(g["score"][r]) for g in grades.values()) / len(grades) for r in range(n)]


def summarize_grades(grades: dict, metadata: dict | None = None) -> dict:
    if not grades:
        raise ValueError("the MM-Vet grade file is empty")
    totals = run_totals(grades)
    out = {"total": statistics.fmean(totals), "std": statistics.pstdev(totals), "runs": totals}
    if metadata:
        caps: dict[str, list[float]] = defaultdict(list)
        integ: dict[str, list[float]] = defaultdict(list)
        for qid, g in grades.items():
            if qid not in metadata:
                raise KeyError(f"{qid} is graded but not in the MM-Vet metadata file")
            mean = statistics.fmean(float(s) for s in g["score"])
            capabilities = metadata[qid]["capability"]
            for cap in capabilities:
                caps[cap].append(mean)
            integ["_".join(sorted(capabilities))].append(mean)
        out["capabilities"] = {k: 100.0 * statistics.fmean(v) for k, v in sorted(caps.items())}
        out["integrations"] = {k: 100.0 * statistics.fmean(v) for k, v in sorted(integ.items())}
    return out
