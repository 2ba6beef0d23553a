"""Question files of the benchmarks turned into ``EvalItem``s for the answer runner.

* ``vqa_items``: a question jsonl (``question_id``, ``image``, ``text``), as model_vqa(_loader) read;
* ``science_items``: LLaVA's ScienceQA json (``id``, optional ``image``, ``conversations``);
* ``mmbench_items``: an MMBench ``.tsv`` (base64 images, options A-D, optional hint), one item per
  rotation of the options with ``all_rounds``.
"""

from __future__ import annotations

import functools
import os

from llava.eval.answer_runner import EvalItem
from llava.utils.jsonfiles import read_json, read_jsonl

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."
SINGLE_PRED_PROMPT_CN = "请直接回答选项字母。"
MMBENCH_LETTERS = ("A", "B", "C", "D")


def _open_image(path: str, question_id):
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"question {question_id}: image not found: {path} (check --image-folder)")
    return Image.open(path).convert("RGB")


def _image_loader(image_folder: str, name, question_id):
    if not name:
        return None
    return functools.partial(_open_image, os.path.join(os.path.expanduser(image_folder), name), question_id)


def vqa_items(question_file: str, image_folder: str) -> list[EvalItem]:
    items = []
    for lineno, q in enumerate(read_jsonl(question_file, "question file"), 1):
        for key in ("question_id", "text"):
            if key not in q:
                raise ValueError(f"{question_file}:{lineno}: question has no {key!r} field")
        items.append(
            EvalItem(
                q["question_id"],
                q["text"],
                q["text"],
                _image_loader(image_folder, q.get("image"), q["question_id"]),
            )
        )
    return items


def science_items(question_file: str, image_folder: str, single_pred_prompt: bool) -> list[EvalItem]:
    items = []
    for q in read_json(question_file, "ScienceQA question file"):
        text = q["conversations"][0]["value"].replace("<image>", "").strip()
        prompt = f"<image>\n{text}" if "image" in q else text
        if single_pred_prompt:
            text, prompt = f"{text}\n{SINGLE_PRED_PROMPT}", f"{prompt}\n{SINGLE_PRED_PROMPT}"
        items.append(EvalItem(q["id"], text, prompt, _image_loader(image_folder, q.get("image"), q["id"])))
    return items


def _decode_base64_image(data: str, question_id):
    from llava.mm_utils import load_image_from_base64

    try:
        return load_image_from_base64(data).convert("RGB")
    except Exception as e:
        raise ValueError(
            f"MMBench question {question_id}: its image column is not a decodable base64 image ({e})"
        ) from e


def mmbench_items(
    question_file: str, all_rounds: bool, single_pred_prompt: bool, lang: str = "en"
) -> list[EvalItem]:
    from llava.eval.scorers.mmbench import is_none, read_tsv, row_options

    items = []
    for row in read_tsv(question_file):
        idx = int(row["index"])
        options = row_options(row)
        letters = list(MMBENCH_LETTERS[: len(options)])
        question = row["question"] if is_none(row.get("hint")) else f"{row['hint']}\n{row['question']}"
        for round_idx in range(len(options) if all_rounds else 1):
            shown = options[round_idx:] + options[:round_idx]
            chars = letters[round_idx:] + letters[:round_idx]
            text = question + "".join(f"\n{c}. {o}" for c, o in zip(MMBENCH_LETTERS, shown))
            prompt = text
            if single_pred_prompt:
                text = f"{text}\n{SINGLE_PRED_PROMPT_CN if lang == 'cn' else SINGLE_PRED_PROMPT}"
            load = functools.partial(_decode_base64_image, row["image"], idx)
            extra = {"round_id": round_idx, "options": shown, "option_char": chars}
            items.append(EvalItem(idx, text, prompt, load, extra))
    return items
