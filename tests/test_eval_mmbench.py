"""MMBench scoring as the MMBench server does it: circular variant rows, the official matching rules.

The TSVs here are made in the tests in the official layout (index ``i`` and its variants
``i + k * 1,000,000`` with the options rotated); every expected value is worked out by hand. The last
tests score LLaVA-1.5-13B's official dev answers (tests/fixtures/eval/mmbench/official, see the
fixtures README) and must give the published 67.7.
"""

import gzip
import json
from pathlib import Path

import pytest

from llava.eval.scorers import mmbench
from llava.eval.scorers.options import match_option

pd = pytest.importorskip("pandas")

FIX = Path(__file__).resolve().parent / "fixtures" / "eval" / "mmbench"
COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category",
           "comment", "split"]  # fmt: skip
STRIDE = 1_000_000


def variant_rows(i, question, options, answer, category, l2):
    """The question ``i`` and its circular variants: variant k shows the options rotated by k."""
    rows = []
    for k in range(len(options)):
        shown = options[k:] + options[:k]
        cells = dict(zip("ABCD", shown))
        rows.append({"index": i + k * STRIDE, "question": question, "hint": None, **cells,
                     "answer": "ABCD"[shown.index(options["ABCD".index(answer)])], "category": category,
                     "source": "generated", "l2-category": l2, "comment": None, "split": "dev"})  # fmt: skip
    return rows


def write_tsv(path, rows):
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, sep="\t", index=False)
    return path


def write_answers(path, answers):
    lines = [json.dumps({"question_id": q, "round_id": r, "text": t}) + "\n" for q, r, t in answers]
    path.write_text("".join(lines))
    return path


@pytest.fixture
def dev_tsv(tmp_path):
    rows = (
        variant_rows(0, "Which animal?", ["cat", "dog"], "B", "ocr", "perception")  # 2 options
        + variant_rows(1, "How many?", ["one", "two", "three"], "C", "count", "reasoning")  # 3 options
        + variant_rows(2, "Which colour?", ["red", "green", "blue", "pink"], "A", "ocr", "perception")
        + variant_rows(3, "Which shape?", ["square", "circle", "star", "heart"], "D", "color", "reasoning")
        + variant_rows(4, "Is it day?", ["yes", "no"], "A", "scene", "reasoning")
    )
    return write_tsv(tmp_path / "mmbench_dev.tsv", rows)


def test_variant_rows_are_rotations(dev_tsv):
    rows = {int(r["index"]): r for r in mmbench.read_tsv(dev_tsv)}
    assert mmbench.row_options(rows[1_000_001]) == ["two", "three", "one"]
    assert rows[1_000_001]["answer"] == "B"
    assert mmbench.row_options(rows[3_000_003]) == ["heart", "square", "circle", "star"]
    assert rows[3_000_003]["answer"] == "A"
    assert mmbench.question_of(3_000_003) == 3 and mmbench.question_of(3) == 3


# one answer per row: q0 right twice; q1 right, right (option text), wrong; q2 right in 4 forms;
# q3 right 3 times with one variant unanswered; q4 right, then an answer no rule reads
ANSWERS = [
    (0, 0, "B"), (1_000_000, 0, "A"),
    (1, 0, "C"), (1_000_001, 0, "There are three."), (2_000_001, 0, "B"),
    (2, 0, "(A)"), (1_000_002, 0, "Answer: D."), (2_000_002, 0, "C"), (3_000_002, 0, "red"),
    (3, 0, "D"), (1_000_003, 0, "C"), (2_000_003, 0, "B"),
    (4, 0, "A"), (1_000_004, 0, "Unsure."),
]  # fmt: skip


def test_circular_accuracy_groups_variant_rows(dev_tsv, tmp_path, capsys):
    from llava.eval.eval_mmbench import main

    answers = write_answers(tmp_path / "a.jsonl", ANSWERS)
    res = main(["--annotation-file", str(dev_tsv), "--result-file", str(answers)])
    # questions right in every variant: q0 and q2 of 5; rows right: 2 + 2 + 4 + 3 + 1 of 15
    assert res["circular/overall"] == pytest.approx(40.0) and res["overall"] == pytest.approx(80.0)
    assert (res["questions"], res["count"], res["answered"]) == (5, 15, 14)
    assert (res["unanswered"], res["unmatched"], res["judge_questions"]) == (1, 1, 1)
    assert res["circular/category/ocr"] == res["category/ocr"] == 100.0
    assert (res["circular/category/count"], res["category/count"]) == (0.0, pytest.approx(200 / 3))
    assert (res["circular/category/color"], res["category/color"]) == (0.0, 75.0)
    assert (res["circular/category/scene"], res["category/scene"]) == (0.0, 50.0)
    assert res["circular/l2-category/perception"] == 100.0 and res["circular/l2-category/reasoning"] == 0.0
    assert res["l2-category/reasoning"] == pytest.approx(600 / 9)
    out = capsys.readouterr().out
    assert "Circular accuracy: 40.00% (5 questions)  Row accuracy: 80.00% (15 rows)" in out
    assert "Warning: 1 rows have no answer" in out and "Unmatched answers: 1 " in out
    assert "  category/count: circular 0.00% (row 66.67%)" in out


def test_all_rounds_answers_need_every_round_of_every_variant(tmp_path):
    tsv = write_tsv(tmp_path / "q.tsv", variant_rows(0, "Which animal?", ["cat", "dog"], "B", "ocr", "p"))
    rows = mmbench.read_tsv(tsv)
    # row 0 (cat, dog; B): round 1 shows dog, cat -> A. Row 1000000 (dog, cat; A): round 1 shows cat, dog -> B
    right = [(0, 0, "B"), (0, 1, "A"), (1_000_000, 0, "A"), (1_000_000, 1, "dog")]
    res = mmbench.score_mmbench(rows, [{"question_id": q, "round_id": r, "text": t} for q, r, t in right])
    assert (res["circular/overall"], res["overall"]) == (100.0, 100.0)
    assert (res["rounds"], res["unanswered"]) == ("all", 0)
    wrong = right[:3] + [(1_000_000, 1, "cat")]  # the last round picks A
    res = mmbench.score_mmbench(rows, [{"question_id": q, "round_id": r, "text": t} for q, r, t in wrong])
    assert (res["circular/overall"], res["overall"]) == (0.0, 100.0)
    res = mmbench.score_mmbench(rows, [{"question_id": q, "round_id": r, "text": t} for q, r, t in right[:3]])
    assert (res["circular/overall"], res["unanswered"]) == (0.0, 1)


def test_answer_for_an_unknown_row_or_round_is_an_error(dev_tsv):
    rows = mmbench.read_tsv(dev_tsv)
    with pytest.raises(KeyError, match="index 7"):
        mmbench.score_mmbench(rows, [{"question_id": 7, "text": "A"}])
    with pytest.raises(ValueError, match="round_id 2"):
        mmbench.score_mmbench(rows, [{"question_id": 0, "round_id": 2, "text": "A"}])


@pytest.mark.parametrize(
    "text, expected",
    [("B", "B"), ("B.", "B"), ("(C)", "C"), ("C. bird", "C"), ("The answer is C", "C"), ("Answer: [D]", "D"),
     ("A cat", "A"),  # the letter step comes first and is case-sensitive: the article counts as A
     ("dog", "B"), ("Dog.", "B"), ("hotdog", "B"),  # option text, lower-cased, anywhere in the answer
     ("a cat or a dog", None), ("A or B", None), ("答案是B", None), ("E", None), ("I am not sure", None),
     ("Z", "Z"), ("I'm sorry, but without the image provided, B", "Z")],
)  # fmt: skip
def test_match_option_follows_the_official_rules(text, expected):
    assert match_option(text, ["cat", "dog", "bird", "fish"]) == expected


def test_match_option_letters_are_the_rows_own():
    assert match_option("C", ["yes", "no"]) is None  # C is not an option of a 2-option row
    assert match_option("The answer is C, not D", ["a", "b", "c", "d"]) is None  # two letters: no letter
    assert match_option("D", ["x", "y", "z"], letters=("B", "C", "D")) == "D"


# ---------------------------------------------------------------- official LLaVA-1.5-13B dev answers
OFFICIAL = FIX / "official"


@pytest.fixture(scope="module")
def official_dev(tmp_path_factory):
    """The official TSV layout rebuilt from the official upload sheet (which holds the dev answers' key)."""
    pytest.importorskip("openpyxl")
    sheet = pd.read_excel(OFFICIAL / "llava-v1.5-13b.xlsx", engine="openpyxl")
    root = tmp_path_factory.mktemp("mmbench_official")
    tsv = root / "mmbench_dev_20230712.tsv"
    sheet.drop(columns=["prediction"]).reindex(columns=COLUMNS).to_csv(tsv, sep="\t", index=False)
    answers = root / "llava-v1.5-13b.jsonl"
    answers.write_bytes(gzip.decompress((OFFICIAL / "llava-v1.5-13b.jsonl.gz").read_bytes()))
    return tsv, answers


def test_official_answers_give_the_published_circular_figure(official_dev, capsys):
    from llava.eval.eval_mmbench import main

    tsv, answers = official_dev
    res = main(["--annotation-file", str(tsv), "--result-file", str(answers)])
    assert (res["count"], res["questions"], res["answered"], res["unanswered"]) == (4377, 1176, 4377, 0)
    assert res["unmatched"] == 0 and res["rounds"] == 1
    assert round(res["circular/overall"], 1) == 67.7  # LLaVA-1.5-13B, MMBench (published)
    assert round(res["overall"], 2) == 76.45  # row accuracy, what the scorer printed before
    out = capsys.readouterr().out
    assert "Circular accuracy: 67.69% (1176 questions)  Row accuracy: 76.45% (4377 rows)" in out


def test_official_answers_on_the_real_tsv_when_present(official_dev):
    """With the real dev TSV in playground/ (not redistributed), the same figure and per-category ones."""
    real = Path(__file__).resolve().parents[1] / "playground/data/eval/mmbench/mmbench_dev_20230712.tsv"
    if not real.is_file():
        pytest.skip(f"{real} is not here (download it from the MMBench authors)")
    from llava.utils.jsonfiles import read_jsonl

    res = mmbench.score_mmbench(mmbench.read_tsv(real), read_jsonl(official_dev[1]))
    assert round(res["circular/overall"], 1) == 67.7 and res["count"] == 4377
    assert any(k.startswith("circular/category/") for k in res)
