"""Ground truth for the existing scorers from lmms-lab's parquet benchmarks (the file the questions came from).

Each reader gives a scorer in ``llava.eval.scorers`` (or a submission script) the input it takes from the
original's files, in the original's layout; the eval_* entry points and the convert_* scripts call them
when their annotation argument names parquet data.
"""

from __future__ import annotations

import os

from llava.eval.lmms_parquet import (  # noqa: F401 (mmbench_rows: the MMBench scorer's rows)
    SEED_QUESTION_TYPES,
    _columns,
    _has_image,
    _mmvet_id,
    load_table,
    mmbench_rows,
    scienceqa_id,
)


def pope_truth(path) -> tuple[list[dict], dict[str, list[dict]]]:
    """``(questions, labels)`` for ``scorers.pope.evaluate_pope``: labels per ``category`` in file order."""
    rows = _columns(load_table(str(path)), ["question_id", "category", "image_source", "answer"])
    questions = [
        {"question_id": r["question_id"], "category": r["category"], "image": r["image_source"]} for r in rows
    ]
    labels: dict[str, list[dict]] = {}
    for r in rows:
        labels.setdefault(r["category"], []).append({"label": r["answer"], "image": r["image_source"]})
    return questions, labels


def mme_truth(path) -> list:
    """``scorers.mme.GroundTruth`` per row (subtask = ``category``, image = the file name in ``question_id``)."""
    from llava.eval.scorers.mme import GroundTruth

    rows = _columns(load_table(str(path)), ["question_id", "category", "question", "answer"])
    return [
        GroundTruth(r["category"], os.path.basename(str(r["question_id"])), r["question"], r["answer"])
        for r in rows
    ]


def scienceqa_truth(path) -> tuple[dict, list[str]]:
    """``(problems, ids)`` for ``scorers.scienceqa.score_scienceqa`` (every row of the file is scored)."""
    from llava.eval.scorers.scienceqa import Problem

    ds = load_table(str(path))
    rows, has_image = _columns(ds, ["id", "choices", "answer"]), _has_image(ds)
    problems = {
        scienceqa_id(i, r): Problem(len(r["choices"]), int(r["answer"]), has_image[i])
        for i, r in enumerate(rows)
    }
    return problems, list(problems)


def gqa_truth(path) -> dict:
    """``{question id: {"answer", "types", "isBalanced"}}`` for ``scorers.gqa.score_gqa``."""
    rows = _columns(load_table(str(path)), ["id", "answer", "types", "isBalanced"])
    return {str(r["id"]): {"answer": r["answer"], "types": r.get("types") or {}, "isBalanced": r.get("isBalanced", True)}
            for r in rows}  # fmt: skip


def textvqa_truth(path) -> list[dict]:
    """``[{"image_id", "question", "answers"}]`` for ``scorers.textvqa.score_textvqa``."""
    return _columns(load_table(str(path)), ["image_id", "question", "answers"])


def seed_truth(path) -> dict:
    """SEED-Bench.json's layout (``question_type``, ``questions``) for ``scorers.seed.score_seed`` / ``seed_upload``."""
    cols = ["question_id", "question_type_id", "data_type", "data_id", "question", "answer",
            "choice_a", "choice_b", "choice_c", "choice_d"]  # fmt: skip
    return {"question_type": dict(SEED_QUESTION_TYPES), "questions": _columns(load_table(str(path)), cols)}


def vizwiz_questions(path) -> list[dict]:
    """``[{"question_id", "image"}]`` for ``scorers.vqa.vizwiz_upload`` (image: ``<question_id>.jpg``, as
    lmms-eval names VizWiz's images)."""
    rows = _columns(load_table(str(path)), ["question_id"])
    return [{"question_id": r["question_id"], "image": _jpg(r["question_id"])} for r in rows]


def _jpg(name) -> str:
    name = str(name)
    return name if name.lower().endswith((".jpg", ".jpeg", ".png")) else f"{name}.jpg"


def llava_bench_inputs(path) -> dict[str, list[dict]]:
    """LLaVA-Bench (in the wild)'s three review inputs, laid out as the original's files: ``questions``
    (questions.jsonl: question_id, image, text, category), ``contexts`` (context.jsonl: image, caption; one per
    image) and ``references`` (answers_gpt4.jsonl: question_id, text = ``gpt_answer``).

    A row's image is ``<image_id>.jpg`` (LLaVA's questions name ``001.jpg``), or ``question_<id>.jpg`` for a row without one."""
    cols = ["question_id", "question", "caption", "gpt_answer", "category", "image_id"]
    questions, contexts, references = [], {}, []
    for r in _columns(load_table(str(path)), cols):
        qid = r["question_id"]
        image = _jpg(r["image_id"] if r.get("image_id") not in (None, "") else f"question_{qid}")
        if contexts.setdefault(image, {"image": image, "caption": r["caption"]})["caption"] != r["caption"]:
            raise ValueError(f"{path}: question {qid}: image_id {r.get('image_id')!r} has another caption in an "
                             "earlier row; the judge is given one caption per image")  # fmt: skip
        questions.append(
            {"question_id": qid, "image": image, "text": r["question"], "category": r["category"]}
        )
        references.append({"question_id": qid, "text": r["gpt_answer"]})
    return {"questions": questions, "contexts": list(contexts.values()), "references": references}


def mmvet_metadata(path) -> dict[str, dict]:
    """MM-Vet's ``mm-vet.json``: ``{"v1_<n>": {"imagename", "capability": [...], "question", "answer"}}``.

    Keys are the ids the answers get (``llava.eval.lmms_parquet`` reads ``v1_<n>`` as ``<n>``) with ``v1_``
    put back, as ``scorers.mmvet.answers_for_grader`` does. ``capability`` may be stored as a comma-separated
    string (lmms-eval splits it on ",") or a list; ``imagename`` is ``image_source`` when the file has it."""
    cols = ["question_id", "image_source", "capability", "question", "answer"]
    out: dict[str, dict] = {}
    for r in _columns(load_table(str(path)), cols):
        key = f"v1_{_mmvet_id(r['question_id'])}"
        if key in out:
            raise ValueError(f"{path}: question id {r['question_id']!r} is in the file twice")
        entry = {"imagename": r["image_source"]} if r.get("image_source") else {}
        out[key] = {**entry, "capability": _capabilities(r["capability"]), "question": r["question"],
                    "answer": r["answer"]}  # fmt: skip
    return out


def _capabilities(value) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value or [])
    return [n.strip() for n in names if n and n.strip()]
