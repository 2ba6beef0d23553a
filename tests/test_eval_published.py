"""The scorers reproduce the published LLaVA-1.5 numbers from the official prediction files.

Data: ../shared/data/eval (see its README); skipped where that folder is absent (a fresh clone).
Published tables give one decimal. POPE's per-split F1 and the other scores match by rounding;
the 7B LLaVA-Bench-in-the-wild value matches only when truncated to one decimal, as published
(65.47 -> 65.4), so LLaVA-Bench results are checked by truncation.
"""

import json
import math
import runpy
from pathlib import Path

import pytest

from llava.utils.jsonfiles import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "data" / "eval"
pytestmark = pytest.mark.skipif(not EVAL.is_dir(), reason="../shared/data/eval is not available")


def truncate1(x: float) -> float:
    return math.floor(x * 10 + 1e-9) / 10


def test_pope_f1_per_split_and_mean():
    from llava.eval.eval_pope import main

    res = main(["--annotation-dir", str(EVAL / "pope/coco"), "--question-file", str(EVAL / "pope/llava_pope_test.jsonl"),
                "--result-file", str(EVAL / "pope/answers/llava-v1.5-13b.jsonl")])  # fmt: skip
    f1 = {split: round(100 * m.f1, 2) for split, m in res.items()}
    assert f1 == {"adversarial": 84.46, "popular": 86.25, "random": 87.14}
    assert round(100 * sum(m.f1 for m in res.values()) / 3, 1) == 85.9


def test_mme_perception_and_cognition():
    from llava.eval.eval_mme import main

    res = main(
        ["--gt-dir", str(EVAL / "mme/gt"), "--result-file", str(EVAL / "mme/answers/llava-v1.5-13b.jsonl")]
    )
    assert round(res["perception"], 1) == 1531.3
    assert round(res["cognition"], 1) == 295.4


def test_scienceqa_img(tmp_path):
    from llava.eval.eval_science_qa import main

    # the official scored output holds every answer (prompt and raw text); rebuild the answer file from it
    official = read_json(EVAL / "scienceqa/answers/llava-v1.5-13b_output.jsonl")
    rows = [{"question_id": a["question_id"], "prompt": a["question"], "text": a["pred"]}
            for a in official["correct"] + official["incorrect"]]  # fmt: skip
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = EVAL / "scienceqa"
    res = main(["--base-dir", str(base), "--question-file", str(base / "llava_test_CQM-A.json"),
                "--result-file", str(answers), "--output-result", str(tmp_path / "result.json"),
                "--output-file", str(tmp_path / "output.json")])  # fmt: skip
    assert round(res["img_acc"], 1) == 71.6 and res["img_count"] == 2017
    # the whole result file is byte-identical to the official one, the analysis file equal
    assert (tmp_path / "result.json").read_bytes() == (
        base / "answers/llava-v1.5-13b_result.json"
    ).read_bytes()
    assert read_json(tmp_path / "output.json") == official


@pytest.mark.parametrize("model, runs, published", [("13b", [72.8, 72.7, 72.1], 72.5), ("7b", None, 65.4)])
def test_llava_bench_in_the_wild(model, runs, published):
    from llava.eval.summarize_gpt_review import main

    files = [
        str(EVAL / f"llava-bench-in-the-wild/reviews/llava-v1.5-{model}-eval{i}.jsonl") for i in (1, 2, 3)
    ]
    summaries = main(["-f", *files])
    if runs:
        assert [round(s["all"].relative, 1) for s in summaries] == runs
    mean = sum(s["all"].relative for s in summaries) / 3
    assert truncate1(mean) == published


def test_mmvet_total():
    from llava.eval.eval_mmvet import main

    one = main(["--grade-file", str(EVAL / "mm-vet/results/llava-v1.5-13b_gpt-4-grade-1runs.json")])
    assert round(one["total"], 1) == 36.1
    three = main(["--grade-file", str(EVAL / "mm-vet/results/llava-v1.5-13b_gpt-4-grade-3runs.json")])
    assert [round(r, 1) for r in three["runs"]] == [36.1, 36.5, 36.3] and round(three["total"], 1) == 36.3


def test_mmvet_converter_matches_official_file(tmp_path):
    main = runpy.run_path(str(REPO / "scripts/convert_mmvet_for_eval.py"), run_name="not_main")["main"]
    for model in ("13b", "7b"):
        dst = tmp_path / f"{model}.json"
        main(["--src", str(EVAL / f"mm-vet/answers/llava-v1.5-{model}.jsonl"), "--dst", str(dst)])
        assert json.loads(dst.read_text()) == read_json(EVAL / f"mm-vet/results/llava-v1.5-{model}.json")


def test_vizwiz_upload_byte_for_byte(tmp_path):
    main = runpy.run_path(str(REPO / "scripts/convert_vizwiz_for_submission.py"), run_name="not_main")["main"]
    out = tmp_path / "answers_upload/llava-v1.5-13b.json"
    main(["--annotation-file", str(EVAL / "vizwiz/llava_test.jsonl"), "--result-file",
          str(EVAL / "vizwiz/answers/llava-v1.5-13b.jsonl"), "--result-upload-file", str(out)])  # fmt: skip
    assert out.read_bytes() == (EVAL / "vizwiz/answers_upload/llava-v1.5-13b.json").read_bytes()
    assert len(read_jsonl(EVAL / "vizwiz/llava_test.jsonl")) == len(json.loads(out.read_text())) == 8000
