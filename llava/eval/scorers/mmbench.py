"""MMBench (and MMBench-CN): option extraction, single-pass and circular accuracy, submission sheet.

Each question has 2-4 options (columns A-D of the ``.tsv``). With ``--all-rounds`` the answer
generator asks every question once per rotation of its options (round r shows option texts
shifted by r positions, always labelled A, B, ...), so in round r the right letter is the one at
``(answer_index - r) mod n``. Circular evaluation counts a question right only if it is answered
right in every rotation; single-pass accuracy uses round 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from llava.eval.scorers.options import extract_option

OPTION_COLUMNS = ("A", "B", "C", "D")
UPLOAD_DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")


def is_none(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def row_options(row: dict) -> list[str]:
    """The option texts of a row: columns A, B, ... up to the first empty one."""
    options = []
    for column in OPTION_COLUMNS:
        if column not in row or is_none(row[column]):
            break
        options.append(str(row[column]))
    return options


def read_tsv(path) -> list[dict]:
    """Rows of an MMBench ``.tsv`` as dicts (empty cells as ``None``)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError("reading MMBench .tsv files needs pandas: pip install -e '.[eval]'") from e
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"MMBench question file not found: {path}")
    df = pd.read_table(path)
    return [{k: (None if is_none(v) else v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def score_mmbench(rows: Sequence[dict], answers: Sequence[dict]) -> dict:
    """Accuracy (round 0) and circular accuracy, overall and per ``category`` / ``l2-category``."""
    by_index = {int(r["index"]): r for r in rows}
    if any(is_none(r.get("answer")) for r in rows):
        raise ValueError("this MMBench file has no ground-truth 'answer' column (a test split): submit the "
                         "sheet from scripts/convert_mmbench_for_submission.py to the MMBench server instead")  # fmt: skip
    rounds: dict[int, dict[int, bool]] = defaultdict(dict)
    for a in answers:
        idx = int(a["question_id"])
        if idx not in by_index:
            raise KeyError(f"MMBench answer for index {idx} that is not in the question file")
        row = by_index[idx]
        options = row_options(row)
        n, r = len(options), int(a.get("round_id", 0))
        shown = options[r:] + options[:r]
        letters = OPTION_COLUMNS[:n]
        right = letters[(OPTION_COLUMNS.index(str(row["answer"]).strip()) - r) % n]
        rounds[idx][r] = extract_option(a["text"], letters, shown) == right
    groups: dict[str, list[tuple[bool, bool | None]]] = defaultdict(list)
    for idx, row in by_index.items():
        got = rounds.get(idx, {})
        single = got.get(0, False)
        n = len(row_options(row))
        circular = all(got.get(r, False) for r in range(n)) if len(got) == n else None
        for key in ("overall", f"category/{row.get('category')}", f"l2-category/{row.get('l2-category')}"):
            groups[key].append((single, circular))
    out = {}
    for key, vals in groups.items():
        out[key] = 100.0 * sum(s for s, _ in vals) / len(vals)
        if all(c is not None for _, c in vals):
            out[f"circular/{key}"] = 100.0 * sum(bool(c) for _, c in vals) / len(vals)
    out["answered"] = sum(0 in rounds.get(i, {}) for i in by_index)
    out["count"] = len(by_index)
    return out


def submission_frame(df, answers: Sequence[dict]):
    """The original's upload sheet: question columns without hint/category/source/image/comment/l2-category,
    a ``prediction`` column (round-0 answers) inserted at position 6."""
    out = df.drop(columns=[c for c in UPLOAD_DROPPED_COLUMNS if c in df.columns]).copy()
    out.insert(min(6, len(out.columns)), "prediction", None)
    preds = {int(a["question_id"]): a["text"] for a in answers if int(a.get("round_id", 0)) == 0}
    out["prediction"] = [preds.get(int(i)) for i in out["index"]]
    return out
