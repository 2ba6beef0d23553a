"""MME: yes/no accuracy and acc+ (both questions of an image right) per subtask; perception and cognition.

A subtask's score is ``100 * acc + 100 * acc+``; perception sums the 10 perception subtasks
(max 2000), cognition the 4 cognition subtasks (max 800).

Ground truth can be read from either layout:
* the MME release folder (``MME_Benchmark_release_version/<subtask>/`` with ``<image>.txt`` files
  of ``question<TAB>answer`` lines, either beside the images or under ``questions_answers_YN/``);
* a folder of ``<subtask>.txt`` files with ``image<TAB>question<TAB>answer`` lines (the layout of
  MME's ``eval_tool``).
Answers are matched to ground truth by (subtask, image, question); the question is compared after
removing the answer-format instructions, so LLaVA's prompt suffix does not matter.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_INSTRUCTIONS = ("Answer the question using a single word or phrase.", "Please answer yes or no.")


def question_key(question: str) -> str:
    for instruction in _INSTRUCTIONS:
        question = question.replace(instruction, " ")
    return " ".join(question.split())


def parse_yes_no(answer: str) -> str:
    """MME's rule: "yes"/"no" exactly, else look for "yes" then "no" in the first four characters."""
    answer = answer.strip().lower()
    if answer in ("yes", "no"):
        return answer
    head = answer[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


@dataclass
class GroundTruth:
    subtask: str
    image: str  # file name as in the benchmark
    question: str  # the benchmark's question text
    answer: str  # "Yes" / "No"


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def _read_tsv(path: Path, fields: int) -> list[list[str]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != fields:
            raise ValueError(f"{path}:{lineno}: expected {fields} tab-separated fields, got {len(parts)}")
        rows.append([p.strip() for p in parts])
    return rows


def load_ground_truth(gt_dir: str | os.PathLike) -> list[GroundTruth]:
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"MME ground-truth folder not found: {gt_dir}")
    items = []
    for subtask in PERCEPTION + COGNITION:
        flat, folder = gt_dir / f"{subtask}.txt", gt_dir / subtask
        if flat.is_file():
            items += [GroundTruth(subtask, img, q, a) for img, q, a in _read_tsv(flat, 3)]
        elif folder.is_dir():
            qa_dir = folder / "questions_answers_YN" if (folder / "questions_answers_YN").is_dir() else folder
            img_dir = folder / "images" if (folder / "images").is_dir() else folder
            images = {_stem(p.name): p.name for p in img_dir.iterdir() if p.suffix.lower() != ".txt"}
            for txt in sorted(qa_dir.glob("*.txt")):
                image = images.get(txt.stem, txt.stem)
                items += [GroundTruth(subtask, image, q, a) for q, a in _read_tsv(txt, 2)]
    if not items:
        raise FileNotFoundError(
            f"no MME ground truth in {gt_dir}: expected <subtask>.txt files or the MME_Benchmark_release_version folders"
        )
    return items


@dataclass
class SubtaskScore:
    subtask: str
    acc: float
    acc_plus: float
    questions: int
    images: int
    other: int  # answers that were neither yes nor no

    @property
    def score(self) -> float:
        return 100 * self.acc + 100 * self.acc_plus


def match_answers(
    ground_truth: Sequence[GroundTruth], answers: Sequence[dict]
) -> list[tuple[GroundTruth, str]]:
    """Pair every ground-truth question with its answer text (answers' ``question_id`` is ``<subtask>/.../<image>``)."""
    by_key = {}
    for a in answers:
        subtask = str(a["question_id"]).split("/")[0]
        by_key[(subtask, _stem(str(a["question_id"])), question_key(a["prompt"]))] = a["text"]
    pairs, missing = [], []
    for gt in ground_truth:
        key = (gt.subtask, _stem(gt.image), question_key(gt.question))
        if key in by_key:
            pairs.append((gt, by_key[key]))
        else:
            missing.append(f"{gt.subtask}/{gt.image}: {gt.question!r}")
    if missing:
        raise KeyError(
            f"{len(missing)} MME questions have no answer, e.g. {missing[:3]}; finish answer generation "
            "with llava_mme.jsonl (it resumes) or check that --gt-dir is the matching benchmark version"
        )
    return pairs


def score_subtasks(pairs: Sequence[tuple[GroundTruth, str]]) -> dict[str, SubtaskScore]:
    per_image: dict[tuple[str, str], list[bool]] = defaultdict(list)
    others: dict[str, int] = defaultdict(int)
    for gt, text in pairs:
        pred = parse_yes_no(text)
        others[gt.subtask] += pred == "other"
        per_image[(gt.subtask, gt.image)].append(pred == gt.answer.strip().lower())
    scores = {}
    for subtask in dict.fromkeys(gt.subtask for gt, _ in pairs):
        images = [v for (s, _), v in per_image.items() if s == subtask]
        flat = [ok for v in images for ok in v]
        scores[subtask] = SubtaskScore(
            subtask=subtask,
            acc=sum(flat) / len(flat),
            acc_plus=sum(all(v) for v in images) / len(images),
            questions=len(flat),
            images=len(images),
            other=others[subtask],
        )
    return scores


def totals(scores: dict[str, SubtaskScore]) -> dict[str, float]:
    """``{"perception": ..., "cognition": ...}`` over the subtasks present."""
    return {
        "perception": sum(s.score for name, s in scores.items() if name in PERCEPTION),
        "cognition": sum(s.score for name, s in scores.items() if name in COGNITION),
    }
