"""lmms-lab's parquet benchmarks (questions and images in one file) as ``EvalItem``s, and their ground truth.

``--question-file`` may be one ``.parquet`` (or ``.arrow``) file, a glob, a folder of one split's shards
(``test-00000-of-00003.parquet`` ...) or a ``datasets`` ``save_to_disk`` folder. It is read with
``datasets``; images are decoded from the row (``datasets.Image`` bytes), so no image folder is needed
(GQA keeps its images in a second file: ``--image-folder`` names it, or a folder of ``<imageId>.jpg``).

Which benchmark a file holds is told by its columns (``LAYOUTS``; the most specific layout whose
columns are all present wins) or by ``--benchmark``. Each benchmark's prompt is the one LLaVA-1.5's own
question file holds for that question (the same suffix instructions), so the answers go to the
existing scorers; llava.eval.lmms_parquet_truth gives those scorers their ground truth from the
same parquet. tests/fixtures/eval/lmms_parquet/README.md lists each layout and where it was read.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from llava.eval.answer_runner import EvalItem

SHORT_ANSWER = "Answer the question using a single word or phrase."
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
MME_YES_NO = "Please answer yes or no."
# SEED-Bench.json's question_type table (the parquet keeps only the id).
SEED_QUESTION_TYPES = {
    "Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4,
    "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
    "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11, "Procedure Understanding": 12,
}  # fmt: skip
_SHARD = re.compile(r"^(.*?)-\d{5}-of-\d{5}\.(parquet|arrow)$")


def is_parquet_source(path) -> bool:
    """Whether a ``--question-file`` names parquet/arrow data (a file, a glob or a folder) rather than JSON."""
    path = str(path)
    return path.endswith((".parquet", ".arrow")) or any(c in path for c in "*?[") or os.path.isdir(path)


def _data_files(path: str) -> list[str]:
    if any(c in path for c in "*?["):
        files = sorted(glob.glob(os.path.expanduser(path), recursive=True))
    elif os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        files = files or sorted(glob.glob(os.path.join(path, "**", "*.arrow"), recursive=True))
        splits = sorted({m.group(1) for f in files if (m := _SHARD.match(os.path.basename(f)))})
        if len(splits) > 1:
            raise ValueError(f"{path} holds the shards of several splits ({', '.join(splits)}): pass one "
                             f"split, e.g. --question-file '{os.path.join(path, '**', splits[0])}-*.parquet'")  # fmt: skip
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"question file not found: {path}")
    if not files:
        raise FileNotFoundError(f"no .parquet or .arrow files in {path}")
    return files


def load_table(path: str):
    """The rows of ``path`` as one ``datasets.Dataset`` (images still encoded until a row is read).

    Read once per process while its files are unchanged (the runner and a scorer may both ask)."""
    path = os.path.expanduser(str(path))
    saved = os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json"))
    files = [os.path.join(path, "state.json")] if saved else _data_files(path)
    return _load(path, tuple((f, os.path.getmtime(f)) for f in files))


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: tuple):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json")):
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path} is a DatasetDict with splits {list(ds)}: pass the folder of one split")
        return ds
    tables = []
    for f, _ in stamp:
        try:
            tables.append(
                datasets.Dataset.from_file(f) if f.endswith(".arrow") else datasets.Dataset(pq.read_table(f))
            )
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{f}: not a readable parquet/arrow file ({e})") from e
    try:
        return tables[0] if len(tables) == 1 else datasets.concatenate_datasets(tables)
    except ValueError as e:
        raise ValueError(f"{path}: its shards do not have the same columns ({e})") from e


def _columns(ds, names) -> list[dict]:
    return ds.select_columns([n for n in names if n in ds.column_names]).to_list()


@dataclass(frozen=True)
class Layout:
    name: str
    columns: frozenset  # the columns a file must have to be read as this benchmark
    build: Callable  # (Source, opts) -> list[EvalItem]


@dataclass
class Source:
    path: str
    ds: object  # datasets.Dataset
    image_folder: str

    def rows(self) -> list[dict]:
        return _columns(self.ds, [c for c in self.ds.column_names if c != "image"])

    def loader(self, index: int, qid, pick: Callable | None = None):
        """A loader of row ``index``'s image (None when the row has none)."""
        if "image" not in self.ds.column_names:
            return None
        return functools.partial(_row_image, self.ds, self.path, index, qid, self.image_folder, pick)


def _row_image(ds, path, index, qid, image_folder, pick):
    from PIL import Image

    from llava.eval.question_sources import _open_image

    try:
        value = ds[index]["image"]
    except Exception as e:  # a broken image in a row: name the row
        raise ValueError(f"{path}: row {index} (question {qid}): its image cannot be decoded ({e})") from e
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{path}: row {index} (question {qid}) has an empty image list")
        value = pick(value) if pick else value[0]
    if value is None:
        return None
    if isinstance(value, str):
        return _open_image(os.path.join(os.path.expanduser(image_folder), value), qid)
    if not isinstance(value, Image.Image):
        raise ValueError(
            f"{path}: row {index} (question {qid}): 'image' is {type(value).__name__}, not an image"
        )
    return value.convert("RGB")


def _short(question: str, *suffixes: str) -> str:
    return "\n".join((question, *suffixes))


def _vqa(src: Source, rows, texts, ids) -> list[EvalItem]:
    return [EvalItem(qid, text, text, src.loader(i, qid)) for i, (text, qid) in enumerate(zip(texts, ids))]


def _pope(src, opts):
    rows = src.rows()
    return _vqa(
        src,
        rows,
        [_short(r["question"].strip(), SHORT_ANSWER) for r in rows],
        [r["question_id"] for r in rows],
    )


def _mme(src, opts):
    # LLaVA's llava_mme.jsonl: MME's question without "Please answer yes or no.", then the short-answer line.
    rows = src.rows()
    texts = [_short(r["question"].replace(MME_YES_NO, "").strip(), SHORT_ANSWER) for r in rows]
    return _vqa(src, rows, texts, [r["question_id"] for r in rows])


def _textvqa(src, opts):
    # LLaVA's llava_textvqa_val_v051_ocr.jsonl: id = the image id, the OCR tokens on a line of their own.
    rows, texts = src.rows(), []
    for r in rows:
        ocr = [t for t in (r.get("ocr_tokens") or []) if t]
        texts.append(
            _short(r["question"], *([f"Reference OCR token: {', '.join(ocr)}"] if ocr else []), SHORT_ANSWER)
        )
    return _vqa(src, rows, texts, [r["image_id"] for r in rows])


def _vizwiz(src, opts):
    rows = src.rows()
    texts = [_short(r["question"], VIZWIZ_UNANSWERABLE, SHORT_ANSWER) for r in rows]
    return _vqa(src, rows, texts, [r["question_id"] for r in rows])


def _open_ended(src, opts):  # LLaVA-Bench (in the wild): the question as it is
    rows = src.rows()
    return _vqa(src, rows, [r["question"] for r in rows], [r["question_id"] for r in rows])


def _mmvet_id(value):
    """MM-Vet's own ids are ``v1_<n>``; LLaVA's question file (and convert_mmvet_for_eval) use ``<n>``."""
    m = re.fullmatch(r"v1_(\d+)", str(value))
    return int(m.group(1)) if m else value


def _mmvet(src, opts):
    rows = src.rows()
    return _vqa(src, rows, [r["question"] for r in rows], [_mmvet_id(r["question_id"]) for r in rows])


def _seed(src, opts):
    # LLaVA's llava-seed-bench.jsonl: the question, the four choices "A. ..", the letter instruction; one
    # image (a video question's middle frame, as LLaVA-1.5 evaluated them).
    rows, items = src.rows(), []
    for i, r in enumerate(rows):
        choices = [f"{c}. {r[f'choice_{c.lower()}']}" for c in "ABCD"]
        text = _short(r["question"], *choices, LETTER_ANSWER)
        items.append(
            EvalItem(r["question_id"], text, text, src.loader(i, r["question_id"], lambda v: v[len(v) // 2]))
        )
    return items


def scienceqa_id(index: int, row: dict):
    """lmms-lab's ScienceQA has no problem id: a row's id is its ``id`` column if any, else its position."""
    return str(row["id"]) if row.get("id") is not None else str(index)


def _scienceqa(src, opts):
    from llava.eval.question_sources import science_item

    items, has_image = [], _has_image(src.ds)
    for i, r in enumerate(src.rows()):
        hint = (r.get("hint") or "").strip()
        choices = "\n".join(f"{chr(ord('A') + k)}. {c}" for k, c in enumerate(r["choices"]))
        text = (f"Context: {hint}\n" if hint else "") + f"{r['question']}\n{choices}"
        qid = scienceqa_id(i, r)
        load = src.loader(i, qid) if has_image[i] else None
        items.append(science_item(qid, text, load, opts.get("single_pred_prompt", True)))
    return items


def _mmbench(src, opts):
    from llava.eval.question_sources import mmbench_rows_items

    rows = mmbench_rows(src.path)
    loaders = [src.loader(i, r["index"]) for i, r in enumerate(rows)]
    return mmbench_rows_items(rows, loaders, opts.get("all_rounds", False), opts.get("single_pred_prompt", True),
                              opts.get("lang") or "en")  # fmt: skip


def _gqa(src, opts):
    rows = src.rows()
    images = None if "image" in src.ds.column_names else _gqa_images(src.image_folder, src.path)
    items = []
    for i, r in enumerate(rows):
        text = _short(r["question"], SHORT_ANSWER)
        load = src.loader(i, r["id"]) if images is None else functools.partial(images, r["imageId"], r["id"])
        items.append(EvalItem(r["id"], text, text, load))
    return items


def _gqa_images(image_folder: str, question_file: str):
    """GQA's questions name their image by ``imageId``: images from a parquet of ``{id, image}`` rows
    (lmms-lab/GQA ``testdev_balanced_images``) or a folder of ``<imageId>.jpg``."""
    from llava.eval.question_sources import _open_image

    if not image_folder:
        raise ValueError(f"{question_file}: GQA's questions hold no images: pass --image-folder (the "
                         "testdev_balanced_images parquet, or the folder of <imageId>.jpg)")  # fmt: skip
    folder = os.path.expanduser(image_folder)
    if is_parquet_source(folder) and (not os.path.isdir(folder) or _data_files_or_none(folder)):
        ds = load_table(folder)
        position = {row["id"]: i for i, row in enumerate(_columns(ds, ["id"]))}

        def load(image_id, qid):
            if image_id not in position:
                raise FileNotFoundError(f"GQA question {qid}: image {image_id} is not in {folder}")
            return _row_image(ds, folder, position[image_id], qid, "", None)

        return load
    return lambda image_id, qid: _open_image(os.path.join(folder, f"{image_id}.jpg"), qid)


def _data_files_or_none(folder):
    try:
        return _data_files(folder)
    except FileNotFoundError:
        return None


def _cols(*names):
    return frozenset(names)


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout(
            "pope", _cols("question_id", "question", "answer", "image_source", "category", "image"), _pope
        ),
        Layout("mme", _cols("question_id", "question", "answer", "category", "image"), _mme),
        Layout(
            "mmbench", _cols("index", "question", "hint", "A", "B", "answer", "category", "image"), _mmbench
        ),
        Layout(
            "seed",
            _cols(
                "question_id",
                "question",
                "answer",
                "choice_a",
                "choice_b",
                "choice_c",
                "choice_d",
                "data_type",
                "question_type_id",
                "image",
            ),
            _seed,
        ),  # fmt: skip
        Layout("scienceqa", _cols("question", "choices", "answer", "hint", "image"), _scienceqa),
        Layout("gqa", _cols("id", "imageId", "question", "answer", "types", "isBalanced"), _gqa),
        Layout(
            "textvqa",
            _cols("question_id", "image_id", "question", "answers", "ocr_tokens", "image"),
            _textvqa,
        ),
        Layout("vizwiz", _cols("question_id", "question", "answers", "image"), _vizwiz),
        Layout(
            "llava_bench",
            _cols("question_id", "question", "caption", "gpt_answer", "category", "image"),
            _open_ended,
        ),  # fmt: skip
        Layout("mmvet", _cols("question_id", "question", "answer", "capability", "image"), _mmvet),
    )
}


def detect_layout(columns, path: str = "") -> Layout:
    """The most specific layout whose columns ``columns`` has; an error lists them when none or several fit."""
    columns = set(columns)
    fits = [lay for lay in LAYOUTS.values() if lay.columns <= columns]
    best = [lay for lay in fits if all(other.columns <= lay.columns for other in fits)]
    if len(best) == 1:
        return best[0]
    if not fits:
        raise ValueError(f"{path}: its columns {sorted(columns)} are not one of lmms-lab's benchmark layouts "
                         f"({', '.join(LAYOUTS)}; see llava.eval.lmms_parquet.LAYOUTS)")  # fmt: skip
    raise ValueError(f"{path}: its columns fit several layouts ({', '.join(f.name for f in fits)}): "
                     "pass --benchmark NAME")  # fmt: skip


def parquet_items(
    question_file: str, image_folder: str = "", benchmark: str | None = None, **opts
) -> list[EvalItem]:
    """The questions of an lmms-lab parquet benchmark. ``opts``: ``single_pred_prompt`` (MMBench, ScienceQA;
    default on, as LLaVA's scripts run them), ``all_rounds`` and ``lang`` (MMBench)."""
    ds = load_table(str(question_file))
    if benchmark:
        if benchmark not in LAYOUTS:
            raise ValueError(f"--benchmark {benchmark!r} is not one of {', '.join(LAYOUTS)}")
        layout = LAYOUTS[benchmark]
        missing = sorted(layout.columns - set(ds.column_names) - ({"image"} if benchmark == "gqa" else set()))
        if missing:
            raise ValueError(f"{question_file}: --benchmark {benchmark} needs the columns {missing}")
    else:
        layout = detect_layout(ds.column_names, str(question_file))
    return layout.build(Source(str(question_file), ds, image_folder or ""), opts)


def _has_image(ds) -> list[bool]:
    """Whether each row has an image, read without decoding them."""
    import datasets

    if "image" not in ds.column_names:
        return [False] * len(ds)
    column = ds.select_columns(["image"])
    if isinstance(ds.features["image"], datasets.Image):
        column = column.cast_column("image", datasets.Image(decode=False))
    return [v is not None for v in column["image"]]


def mmbench_rows(path) -> list[dict]:
    """The rows as ``read_tsv`` gives them (no image; ``L2-category`` named ``l2-category`` as in the TSV)."""
    from llava.eval.scorers.mmbench import is_none

    ds = load_table(str(path))
    rows = _columns(ds, [c for c in ds.column_names if c != "image"])
    out = []
    for r in rows:
        r = {("l2-category" if k == "L2-category" else k): (None if is_none(v) else v) for k, v in r.items()}
        r["index"] = int(r["index"])
        out.append(r)
    return out
