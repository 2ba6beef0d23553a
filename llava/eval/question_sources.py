"""Question files of the benchmarks turned into ``EvalItem``s for the answer runner.

* ``vqa_items``: a question jsonl (``question_id``, ``image``, ``text``), as model_vqa(_loader) read;
  also LLaVA-NeXT's multi-image and video questions: ``image`` a list of file names (one ``<image>``
  each, in the text where it places them, else at the front) or ``video`` (a video file or a folder
  of frames under ``--video-folder``; one ``<image>``), and a JSON list (``.json``) of such questions
  whose text is the first human turn of ``conversations`` (id: ``question_id``, ``sample_id`` or ``id``);
* ``science_items``: LLaVA's ScienceQA json (``id``, optional ``image``, ``conversations``);
* ``mmbench_items``: an MMBench ``.tsv`` (base64 images, options A-D, optional hint), one item per
  rotation of the options with ``all_rounds``.

Each also reads lmms-lab's parquet form of the benchmark (a ``.parquet`` file, a glob or a folder of
shards; images in the rows): see llava.eval.lmms_parquet.
"""

from __future__ import annotations

import functools
import os

from llava.eval.answer_runner import EvalItem
from llava.eval.lmms_parquet import is_parquet_source, parquet_items
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


def _load_visuals(image_paths: list[str], video_path: str | None, question_id, model_cfg) -> list:
    from llava.images.inputs import load_video
    from llava.images.video import VideoError

    if video_path is not None:
        if not os.path.exists(video_path):
            raise FileNotFoundError(
                f"question {question_id}: video not found: {video_path} (check --video-folder)"
            )
        try:
            return [load_video(video_path, model_cfg)]
        except VideoError as e:
            raise ValueError(f"question {question_id}: {e}") from None
    return [_open_image(p, question_id) for p in image_paths]


def _visual_loaders(q: dict, image_folder: str, video_folder: str | None, where: str):
    """(load_image, load_visuals) of one question: a single image keeps the original's loader."""
    qid, image, video = _question_id(q, where), q.get("image"), q.get("video")
    if image and video:
        raise ValueError(
            f"{where}: question {qid} has both 'image' and 'video'; a question has one or the other"
        )
    if video:
        if not isinstance(video, str):
            raise ValueError(f"{where}: question {qid}: 'video' must be a file or folder name, got {video!r}")
        folder = os.path.expanduser(video_folder if video_folder is not None else image_folder)
        return None, functools.partial(_load_visuals, [], os.path.join(folder, video), qid)
    if isinstance(image, list):
        if not image or not all(isinstance(x, str) and x for x in image):
            raise ValueError(f"{where}: question {qid}: 'image' must be a file name or a list of file names")
        if len(image) == 1:
            return _image_loader(image_folder, image[0], qid), None
        paths = [os.path.join(os.path.expanduser(image_folder), x) for x in image]
        return None, functools.partial(_load_visuals, paths, None, qid)
    return _image_loader(image_folder, image, qid), None


def _question_id(q: dict, where: str):
    for key in ("question_id", "sample_id", "id"):
        if key in q:
            return q[key]
    raise ValueError(f"{where}: question has no 'question_id' (or 'sample_id' / 'id') field")


def _question_text(q: dict, where: str) -> str:
    if "text" in q:
        return q["text"]
    turns = q.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict) and "value" in turns[0]:
        return turns[0]["value"]
    raise ValueError(f"{where}: question has no 'text' field (nor 'conversations' with a first human turn)")


def vqa_items(
    question_file: str, image_folder: str, video_folder: str | None = None, benchmark: str | None = None
) -> list[EvalItem]:
    if is_parquet_source(question_file):
        return parquet_items(question_file, image_folder, benchmark)
    if str(question_file).endswith(".json"):
        rows = read_json(question_file, "question file")
        if not isinstance(rows, list):
            raise ValueError(f"{question_file}: a .json question file must hold a list of questions")
    else:
        rows = read_jsonl(question_file, "question file")
    items = []
    for lineno, q in enumerate(rows, 1):
        where = f"{question_file}:{lineno}"
        qid, text = _question_id(q, where), _question_text(q, where)
        load_image, load_visuals = _visual_loaders(q, image_folder, video_folder, where)
        items.append(EvalItem(qid, text, text, load_image, load_visuals=load_visuals))
    return items


def science_item(qid, text: str, load_image, single_pred_prompt: bool) -> EvalItem:
    """One ScienceQA question as LLaVA asks it: ``<image>`` first when it has an image, then the letter instruction."""
    text = text.replace("<image>", "").strip()
    prompt = f"<image>\n{text}" if load_image is not None else text
    if single_pred_prompt:
        text, prompt = f"{text}\n{SINGLE_PRED_PROMPT}", f"{prompt}\n{SINGLE_PRED_PROMPT}"
    return EvalItem(qid, text, prompt, load_image)


def science_items(
    question_file: str, image_folder: str, single_pred_prompt: bool, benchmark=None
) -> list[EvalItem]:
    if is_parquet_source(question_file):
        return parquet_items(question_file, image_folder, benchmark, single_pred_prompt=single_pred_prompt)
    return [
        science_item(
            q["id"],
            q["conversations"][0]["value"],
            _image_loader(image_folder, q.get("image"), q["id"]),
            single_pred_prompt,
        )  # fmt: skip
        for q in read_json(question_file, "ScienceQA question file")
    ]


def _decode_base64_image(data: str, question_id):
    from llava.mm_utils import load_image_from_base64

    try:
        return load_image_from_base64(data).convert("RGB")
    except Exception as e:
        raise ValueError(
            f"MMBench question {question_id}: its image column is not a decodable base64 image ({e})"
        ) from e


def mmbench_items(
    question_file: str, all_rounds: bool, single_pred_prompt: bool, lang: str = "en", benchmark=None
) -> list[EvalItem]:
    if is_parquet_source(question_file):
        return parquet_items(question_file, "", benchmark, all_rounds=all_rounds,
                             single_pred_prompt=single_pred_prompt, lang=lang)  # fmt: skip
    from llava.eval.scorers.mmbench import read_tsv

    rows = read_tsv(question_file)
    loaders = [functools.partial(_decode_base64_image, row["image"], int(row["index"])) for row in rows]
    return mmbench_rows_items(rows, loaders, all_rounds, single_pred_prompt, lang)


def mmbench_rows_items(
    rows, loaders, all_rounds: bool, single_pred_prompt: bool, lang: str = "en"
) -> list[EvalItem]:
    """MMBench rows (the TSV's columns) as items, one per rotation of the options with ``all_rounds``."""
    from llava.eval.scorers.mmbench import is_none, row_options

    items = []
    for row, load in zip(rows, loaders):
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
            extra = {"round_id": round_idx, "options": shown, "option_char": chars}
            items.append(EvalItem(idx, text, prompt, load, extra))
    return items
