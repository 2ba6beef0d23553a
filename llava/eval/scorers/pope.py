"""POPE (object hallucination): yes/no parsing and accuracy / precision / recall / F1 / yes-ratio per split.

Layout of the benchmark as LLaVA ships it: one question file (``llava_pope_test.jsonl``) whose
``category`` names the split (adversarial / popular / random) and one label file per split
(``coco/coco_pope_<split>.json``, JSON lines with ``label`` yes/no). The answers of one split,
taken in question-file order, pair with that split's labels in file order; the pairing is
checked image by image so a shuffled or partial answer file is an error, not a wrong number.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from llava.utils.jsonfiles import read_jsonl

LABEL_PREFIX, LABEL_SUFFIX = "coco_pope_", ".json"


def parse_yes_no(text: str) -> str:
    """POPE's rule: look at the first sentence only, drop commas; any of No / no / not means "no"."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


@dataclass
class PopeMetrics:
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float

    def as_dict(self) -> dict:
        return asdict(self)


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> PopeMetrics:
    """Metrics with "yes" as the positive class; ``predictions`` are raw answer texts."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("no POPE answers to score")
    pred_yes = [parse_yes_no(p) == "yes" for p in predictions]
    gold_yes = [str(label).strip().lower() != "no" for label in labels]
    tp = sum(p and g for p, g in zip(pred_yes, gold_yes))
    fp = sum(p and not g for p, g in zip(pred_yes, gold_yes))
    tn = sum(not p and not g for p, g in zip(pred_yes, gold_yes))
    fn = sum(not p and g for p, g in zip(pred_yes, gold_yes))
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    return PopeMetrics(
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        accuracy=(tp + tn) / len(labels),
        precision=precision,
        recall=recall,
        f1=_div(2 * precision * recall, precision + recall),
        yes_ratio=sum(pred_yes) / len(pred_yes),
    )


def split_files(annotation_dir: str | os.PathLike) -> dict[str, Path]:
    """``{split: label file}`` for every ``coco_pope_<split>.json`` in ``annotation_dir``."""
    annotation_dir = Path(annotation_dir)
    if not annotation_dir.is_dir():
        raise FileNotFoundError(
            f"POPE annotation folder not found: {annotation_dir} (it holds coco_pope_*.json)"
        )
    files = {}
    for path in sorted(annotation_dir.iterdir()):
        if path.name.startswith(LABEL_PREFIX) and path.name.endswith(LABEL_SUFFIX):
            files[path.name[len(LABEL_PREFIX) : -len(LABEL_SUFFIX)]] = path
    if not files:
        raise FileNotFoundError(f"no coco_pope_<split>.json label files in {annotation_dir}")
    return files


def evaluate_pope(questions: Sequence[dict], answers: Sequence[dict], labels: dict[str, list[dict]]) -> dict:
    """``{split: PopeMetrics}`` for every split in ``labels`` (``{split: label rows}``)."""
    position = {q["question_id"]: i for i, q in enumerate(questions)}
    by_id = {q["question_id"]: q for q in questions}
    unknown = [a["question_id"] for a in answers if a["question_id"] not in by_id]
    if unknown:
        raise KeyError(f"answers for question ids not in the question file: {unknown[:5]}")
    ordered = sorted(answers, key=lambda a: position[a["question_id"]])
    results = {}
    for split, rows in labels.items():
        split_answers = [a for a in ordered if by_id[a["question_id"]].get("category") == split]
        if len(split_answers) != len(rows):
            raise ValueError(
                f"POPE split {split!r}: {len(split_answers)} answers but {len(rows)} labels; "
                "the answer file is incomplete (resume answer generation) or from another question file"
            )
        for i, (ans, row) in enumerate(zip(split_answers, rows)):
            image = by_id[ans["question_id"]].get("image")
            if "image" in row and image is not None and row["image"] != image:
                raise ValueError(
                    f"POPE split {split!r}, item {i}: answer for question {ans['question_id']} is about "
                    f"{image} but the label is about {row['image']}; the question and label files do not match"
                )
        results[split] = pope_metrics([a["text"] for a in split_answers], [r["label"] for r in rows])
    return results


def evaluate_pope_files(annotation_dir, question_file, result_file) -> dict:
    labels = {
        split: read_jsonl(path, f"POPE labels ({split})")
        for split, path in split_files(annotation_dir).items()
    }
    questions = read_jsonl(question_file, "POPE question file")
    answers = read_jsonl(result_file, "POPE answer file")
    return evaluate_pope(questions, answers, labels)
