"""MMBench (and MMBench-CN): circular and row accuracy as the MMBench server scores them; upload sheet.

The official dev ``.tsv`` holds each question several times: index ``i`` and its circular variants
``i + 1,000,000``, ``i + 2,000,000``, ... with the options rotated (one row per rotation, 2-4 options).
The server counts a question right only when every row of its group (``index % 1,000,000``) is
answered right; that circular accuracy is the published figure. Row accuracy counts rows alone.

With ``--all-rounds`` the answer generator also asks every row once per rotation of its options
(round r shows the option texts shifted by r positions, labelled A, B, ...), so in round r the
right letter is the one at ``(answer_index - r) mod n``; then every round of every row of a group
must be right. Row accuracy uses round 0.

Answers are read with the official rule-based steps (``options.match_option``: an option letter,
then an option text). An answer that neither step matches counts as wrong; the server would ask
a GPT judge about it, so the figure is exact only when no answer is unmatched (``unmatched``). A
row (or round) without an answer counts as wrong too (``unanswered``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from llava.eval.scorers.options import match_option

OPTION_COLUMNS = ("A", "B", "C", "D")
QUESTION_STRIDE = 1_000_000
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


def question_of(index) -> int:
    """The question a row belongs to: its circular variants have the index plus a multiple of 1,000,000."""
    return int(index) % QUESTION_STRIDE


def _percent(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values)


def _verdicts(by_index: dict, answers: Sequence[dict]) -> dict:
    """``{(index, round): True | False | None}`` (None: no option matched) for each answer."""
    out = {}
    for a in answers:
        idx, r = int(a["question_id"]), int(a.get("round_id", 0))
        if idx not in by_index:
            raise KeyError(f"MMBench answer for index {idx} that is not in the question file")
        row = by_index[idx]
        options = row_options(row)
        n = len(options)
        if not 0 <= r < n:
            raise ValueError(f"MMBench answer for index {idx} has round_id {r}, but the row has {n} options")
        letters = OPTION_COLUMNS[:n]
        right = letters[(OPTION_COLUMNS.index(str(row["answer"]).strip()) - r) % n]
        picked = match_option(a["text"], options[r:] + options[:r], letters)
        out[(idx, r)] = None if picked is None else picked == right
    return out


def score_mmbench(rows: Sequence[dict], answers: Sequence[dict]) -> dict:
    """Circular (per question) and row accuracy, overall and per ``category`` / ``l2-category``.

    Keys: ``circular/overall``, ``overall`` (row accuracy, round 0), ``circular/category/<c>``,
    ``category/<c>`` (likewise ``l2-category/``, when the file has those columns); counts
    ``questions``, ``count`` (rows), ``answered`` (rows with a round-0 answer), ``unanswered``
    (expected answers missing), ``unmatched`` (answers no rule matched) and ``judge_questions``
    (questions the server would send to its GPT judge: no answer wrong, one unmatched).
    """
    by_index = {int(r["index"]): r for r in rows}
    if any(is_none(r.get("answer")) for r in rows):
        raise ValueError("this MMBench file has no ground-truth 'answer' column (a test split): submit the "
                         "sheet from scripts/convert_mmbench_for_submission.py to the MMBench server instead")  # fmt: skip
    verdicts = _verdicts(by_index, answers)
    all_rounds = any(r > 0 for _, r in verdicts)
    groups: dict[int, list[bool | None]] = defaultdict(list)
    row_right, unanswered = {}, 0
    for idx, row in by_index.items():
        rounds = range(len(row_options(row))) if all_rounds else (0,)
        for r in rounds:
            verdict = verdicts.get((idx, r), "missing")
            unanswered += verdict == "missing"
            groups[question_of(idx)].append(False if verdict == "missing" else verdict)
        row_right[idx] = verdicts.get((idx, 0)) is True
    first = {}  # the group's category is its main row's (the lowest index)
    for idx in sorted(by_index):
        first.setdefault(question_of(idx), by_index[idx])
    buckets: dict[str, list[bool]] = defaultdict(list)
    for q, got in groups.items():
        for key in _keys(first[q]):
            buckets[f"circular/{key}"].append(all(v is True for v in got))
    for idx, row in by_index.items():
        for key in _keys(row):
            buckets[key].append(row_right[idx])
    out: dict = {key: _percent(vals) for key, vals in buckets.items()}
    out["questions"] = len(groups)
    out["count"] = len(by_index)
    out["answered"] = sum((i, 0) in verdicts for i in by_index)
    out["unanswered"] = unanswered
    out["unmatched"] = sum(v is None for v in verdicts.values())
    out["judge_questions"] = sum(None in got and False not in got for got in groups.values())
    out["rounds"] = "all" if all_rounds else 1
    return out


def _keys(row: dict) -> list[str]:
    keys = ["overall"]
    for column in ("category", "l2-category"):
        if not is_none(row.get(column)):
            keys.append(f"{column}/{row[column]}")
    return keys


def submission_frame(df, answers: Sequence[dict]):
    """The original's upload sheet: question columns without hint/category/source/image/comment/l2-category,
    a ``prediction`` column (round-0 answers) inserted at position 6."""
    out = df.drop(columns=[c for c in UPLOAD_DROPPED_COLUMNS if c in df.columns]).copy()
    out.insert(min(6, len(out.columns)), "prediction", None)
    preds = {int(a["question_id"]): a["text"] for a in answers if int(a.get("round_id", 0)) == 0}
    out["prediction"] = [preds.get(int(i)) for i in out["index"]]
    return out
