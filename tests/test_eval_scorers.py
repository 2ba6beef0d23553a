"""Scorers on small hand-made fixtures (tests/fixtures/eval); every expected value is worked out by hand."""

import json
import runpy
from pathlib import Path

import pytest

from llava.eval.scorers import gqa, mmbench, mme, mmvet, options, pope, scienceqa, seed, textvqa, vqa
from llava.eval.scorers.llava_bench import mean_relative, summarize_reviews
from llava.utils.jsonfiles import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures" / "eval"


def script_main(name):
    return runpy.run_path(str(REPO / "scripts" / name), run_name="not_main")["main"]


# ---------------------------------------------------------------- VQA normalisation and accuracy
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Unanswerable.", "unanswerable"),
        ("Two dogs", "2 dogs"),
        ("It's the remote!", "it 's remote"),  # 's split off, "!" becomes a space, article dropped
        ("a 3.5 inch floppy disk", "3.5 inch floppy disk"),  # a period before a digit stays
        ("yes, it is", "yes it is"),
        ("dont know", "don't know"),  # contraction table
        ("left - right", "left right"),  # a mark next to a space is deleted
        ("well-known", "well known"),  # otherwise it becomes a space
        ("None", "0"),
        ("The Cat\tsat\n", "cat sat"),
    ],
)
def test_normalize_answer(raw, expected):
    assert vqa.normalize_answer(raw) == expected


def test_normalize_answer_removes_at_most_32_periods():
    # the reference tool passes re.UNICODE (32) as sub()'s count: the 33rd period survives
    assert vqa.normalize_answer("." * 33 + "x") == ".x"


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_ten_annotators(matches, expected):
    gts = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa.vqa_accuracy("two", gts) == pytest.approx(expected)


def test_vizwiz_upload_converter(tmp_path):
    out = tmp_path / "up" / "model.json"
    script_main("convert_vizwiz_for_submission.py")(
        ["--annotation-file", str(FIX / "vizwiz/llava_test.jsonl"), "--result-file", str(FIX / "vizwiz/answers.jsonl"),
         "--result-upload-file", str(out)]
    )  # fmt: skip
    # question-file order, EvalAI-normalised answers, json.dump's default separators
    assert out.read_text() == (
        '[{"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"}, '
        '{"image": "VizWiz_test_00000001.jpg", "answer": "2 dogs"}, '
        '{"image": "VizWiz_test_00000002.jpg", "answer": "it \'s remote"}]'
    )


def test_vizwiz_upload_refuses_missing_answers():
    qs = read_jsonl(FIX / "vizwiz/llava_test.jsonl")
    with pytest.raises(KeyError, match="1 VizWiz questions have no answer"):
        vqa.vizwiz_upload(qs, read_jsonl(FIX / "vizwiz/answers.jsonl")[:2])


def test_vqav2_upload_converter(tmp_path):
    d = tmp_path / "vqav2"
    (d / "answers/test-dev/ckpt").mkdir(parents=True)
    (d / "answers/test-dev/ckpt/merge.jsonl").write_text((FIX / "vqav2/merge.jsonl").read_text())
    (d / "llava_vqav2_mscoco_test2015.jsonl").write_text(
        (FIX / "vqav2/llava_vqav2_mscoco_test2015.jsonl").read_text()
    )
    dst = script_main("convert_vqav2_for_submission.py")(
        ["--dir", str(d), "--split", "test-dev", "--ckpt", "ckpt"]
    )
    assert json.loads(Path(dst).read_text()) == [
        {"question_id": 262144000, "answer": "black and white"},
        {"question_id": 262144001, "answer": ""},
        {"question_id": 262144002, "answer": "0"},
    ]


def test_textvqa(capsys):
    from llava.eval.eval_textvqa import main

    res = main(
        [
            "--annotation-file",
            str(FIX / "textvqa/TextVQA_0.5.1_val.json"),
            "--result-file",
            str(FIX / "textvqa/answers.jsonl"),
        ]
    )
    # 3 of 10 annotators -> 0.9; 10 of 10 ("two" -> "2") -> 1.0; 2 of 10 -> (8 * 2/3 + 2 * 1/3) / 10 = 0.6
    assert list(res.values())[0] == pytest.approx((0.9 + 1.0 + 0.6) / 3)
    assert "Samples: 3\nAccuracy: 83.33%" in capsys.readouterr().out


@pytest.mark.parametrize(
    "prompt, question",
    [
        ("What is it?\nAnswer the question using a single word or phrase.", "what is it?"),
        ("What is it?\nReference OCR token: A, B\nAnswer briefly.", "what is it?"),
        ("Reference OCR token: A\nWhat is it?\nAnswer briefly.", "what is it?"),
        ("OCR tokens: a b Question: What is it? Short answer:", "what is it?"),
    ],
)
def test_textvqa_question_from_prompt(prompt, question):
    assert textvqa.question_from_prompt(prompt) == question


def test_m4c_evaluator_names():
    from llava.eval.m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator

    assert EvalAIAnswerProcessor()("Two.") == "2"
    preds = [
        {"pred_answer": "two", "gt_answers": ["2"] * 10},
        {"pred_answer": "no", "gt_answers": ["yes"] * 10},
    ]
    assert TextVQAAccuracyEvaluator().eval_pred_list(preds) == 0.5


# ---------------------------------------------------------------- GQA
def test_gqa(tmp_path):
    preds = tmp_path / "pred.json"
    script_main("convert_gqa_for_eval.py")(["--src", str(FIX / "gqa/answers.jsonl"), "--dst", str(preds)])
    assert json.loads(preds.read_text())[0] == {"questionId": "q1", "prediction": "left"}
    from llava.eval.eval_gqa import main

    res = main(["--questions", str(FIX / "gqa/testdev_balanced_questions.json"), "--predictions", str(preds)])
    # q1 right (open), q2 right (binary), q3 wrong (binary), q4 missing (open), q5 not balanced
    assert (res["accuracy"], res["open"], res["binary"], res["count"], res["missing"]) == (
        50.0,
        50.0,
        50.0,
        4,
        1,
    )
    assert res["structural/verify"] == 100.0 and res["structural/logical"] == 0.0


# ---------------------------------------------------------------- POPE
@pytest.mark.parametrize(
    "text, label",
    [("Yes", "yes"), ("No, there is not.", "no"), ("Yes, a dog. No cat.", "yes"), ("There is no kite", "no"),
     ("It is not there", "no"), ("Not really", "yes")],  # "Not" (capital) is not in POPE's word list
)  # fmt: skip
def test_pope_parse(text, label):
    assert pope.parse_yes_no(text) == label


def test_pope(capsys):
    from llava.eval.eval_pope import main

    res = main(["--annotation-dir", str(FIX / "pope/coco"), "--question-file", str(FIX / "pope/llava_pope_test.jsonl"),
                "--result-file", str(FIX / "pope/answers.jsonl")])  # fmt: skip
    adv, rnd = res["adversarial"], res["random"]
    # adversarial: labels yes yes no no, predictions yes no yes no -> TP FN FP TN
    assert (adv.tp, adv.fp, adv.tn, adv.fn) == (1, 1, 1, 1)
    assert (adv.accuracy, adv.precision, adv.recall, adv.f1, adv.yes_ratio) == (0.5, 0.5, 0.5, 0.5, 0.5)
    # random: labels yes no yes no, predictions yes no yes yes -> TP 2, TN 1, FP 1
    assert (rnd.tp, rnd.fp, rnd.tn, rnd.fn) == (2, 1, 1, 0)
    assert rnd.precision == pytest.approx(2 / 3) and rnd.recall == 1.0 and rnd.f1 == pytest.approx(0.8)
    assert rnd.accuracy == 0.75 and rnd.yes_ratio == 0.75
    assert "Mean over 2 splits: F1 65.00" in capsys.readouterr().out


def test_pope_rejects_incomplete_or_mismatched_answers():
    qs = read_jsonl(FIX / "pope/llava_pope_test.jsonl")
    answers = read_jsonl(FIX / "pope/answers.jsonl")
    labels = {s: read_jsonl(p) for s, p in pope.split_files(FIX / "pope/coco").items()}
    with pytest.raises(ValueError, match="1 answers but 4 labels|3 answers but 4 labels"):
        pope.evaluate_pope(qs, answers[1:], labels)
    swapped = {"adversarial": labels["random"], "random": labels["adversarial"]}
    with pytest.raises(ValueError, match="do not match"):
        pope.evaluate_pope(qs, answers, swapped)


# ---------------------------------------------------------------- MME
def _mme_expected(res):
    # existence: 3 of 4 right, 1 of 2 images fully right -> 75 + 50; code_reasoning: 1 of 2, 0 of 1 -> 50 + 0
    assert res["subtasks"]["existence"].score == pytest.approx(125.0)
    assert res["subtasks"]["code_reasoning"].score == pytest.approx(50.0)
    assert res["subtasks"]["code_reasoning"].other == 1  # "Maybe"
    assert (res["perception"], res["cognition"]) == (pytest.approx(125.0), pytest.approx(50.0))


def test_mme_eval_tool_layout(tmp_path):
    from llava.eval.eval_mme import main

    res = main(
        [
            "--gt-dir",
            str(FIX / "mme/gt"),
            "--result-file",
            str(FIX / "mme/answers.jsonl"),
            "--output-dir",
            str(tmp_path),
        ]
    )
    _mme_expected(res)
    lines = (tmp_path / "existence.txt").read_text().splitlines()
    assert (
        lines[3]
        == "000002.jpg\tIs there a boat in this image?  Please answer yes or no.\tNo\tno, there isn't"
    )


def test_mme_release_layout(tmp_path):
    # the MME release folders: existence/<image>.txt beside the images, code_reasoning/questions_answers_YN/
    for line in (FIX / "mme/gt/existence.txt").read_text().splitlines():
        img, q, a = line.split("\t")
        (tmp_path / "existence").mkdir(exist_ok=True)
        (tmp_path / "existence" / img).write_bytes(b"")
        with open(tmp_path / "existence" / img.replace(".jpg", ".txt"), "a") as f:
            f.write(f"{q}\t{a}\n")
    (tmp_path / "code_reasoning/questions_answers_YN").mkdir(parents=True)
    (tmp_path / "code_reasoning/images").mkdir()
    (tmp_path / "code_reasoning/images/0001.png").write_bytes(b"")
    rows = [line.split("\t", 1)[1] for line in (FIX / "mme/gt/code_reasoning.txt").read_text().splitlines()]
    (tmp_path / "code_reasoning/questions_answers_YN/0001.txt").write_text("\n".join(rows) + "\n")
    from llava.eval.eval_mme import main

    _mme_expected(main(["--gt-dir", str(tmp_path), "--result-file", str(FIX / "mme/answers.jsonl")]))


def test_mme_missing_answer_is_an_error():
    gt = mme.load_ground_truth(FIX / "mme/gt")
    with pytest.raises(KeyError, match="1 MME questions have no answer"):
        mme.match_answers(gt, read_jsonl(FIX / "mme/answers.jsonl")[1:])


# ---------------------------------------------------------------- ScienceQA
def test_scienceqa(tmp_path, capsys):
    from llava.eval.eval_science_qa import main

    base = tmp_path / "sqa"
    base.mkdir()
    (base / "pid_splits.json").write_text((FIX / "scienceqa/pid_splits.json").read_text())
    (base / "llava_test_CQM-A.json").write_text((FIX / "scienceqa/llava_test_CQM-A.json").read_text())
    res = main(["--base-dir", str(base), "--result-file", str(FIX / "scienceqa/answers.jsonl"),
                "--output-file", str(tmp_path / "out.json"), "--output-result", str(tmp_path / "res.json")])  # fmt: skip
    # 10 "B" right; 11 "A. hat" right; 12 "The answer is A." right (its choices span two lines each);
    # 13 "E" with 3 choices -> -1; 14 no answer -> FAILED.  3/5 overall, images 10, 12, 14 -> 2/3
    result = read_json(tmp_path / "res.json")
    assert result["results"] == {"10": 1, "11": 0, "12": 0, "13": -1, "14": -1}
    assert (result["correct"], result["count"], result["acc"]) == (3, 5, 60.0)
    assert res["img_acc"] == pytest.approx(200 / 3) and res["missing"] == 1
    assert "Accuracy: 60.00%, IMG-Accuracy: 66.67%" in capsys.readouterr().out
    assert [a["parsed_ans"] for a in read_json(tmp_path / "out.json")["incorrect"]] == ["E", "FAILED"]


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("C. a cat", "C"),
        ("It is blue. The answer is D.", "D"),
        ("The answer is A. The answer is B.", "FAILED"),
        ("B.", "FAILED"),
        ("b", "FAILED"),
    ],  # fmt: skip
)
def test_scienceqa_extraction(text, letter):
    assert scienceqa.extract_letter(text) == letter


# ---------------------------------------------------------------- options (MMBench / SEED)
@pytest.mark.parametrize(
    "text, expected",
    [("B", "B"), ("B.", "B"), ("(C)", "C"), ("A. cat", "A"), ("The answer is C", "C"), ("答案是B", "B"),
     ("dog", "B"), ("Dog.", "B"), ("A man", None), ("E", None), ("I am not sure", None)],
)  # fmt: skip
def test_extract_option(text, expected):
    assert options.extract_option(text, ("A", "B", "C", "D"), ["cat", "dog", "bird", "fish"]) == expected


def test_mmbench_circular():
    pytest.importorskip("pandas")
    rows = mmbench.read_tsv(FIX / "mmbench/mmbench_dev_tiny.tsv")
    assert mmbench.row_options(rows[0]) == ["cat", "dog", "bird"]
    res = mmbench.score_mmbench(rows, read_jsonl(FIX / "mmbench/answers.jsonl"))
    # q0 right in all 3 rotations; q1 wrong in round 3; q2 wrong in round 0 -> single 2/3, circular 1/3
    assert res["overall"] == pytest.approx(200 / 3) and res["circular/overall"] == pytest.approx(100 / 3)
    assert res["category/animal"] == res["circular/category/animal"] == 100.0
    assert (res["category/count"], res["circular/category/count"]) == (100.0, 0.0)
    assert res["category/color"] == 0.0 and res["answered"] == 3


def test_mmbench_round0_only_without_variant_rows_circular_is_single_pass():
    pytest.importorskip("pandas")
    rows = mmbench.read_tsv(FIX / "mmbench/mmbench_dev_tiny.tsv")
    res = mmbench.score_mmbench(
        rows, [a for a in read_jsonl(FIX / "mmbench/answers.jsonl") if a["round_id"] == 0]
    )
    # no variant rows (index + k * 1,000,000) and one round: every question is asked once
    assert res["overall"] == pytest.approx(200 / 3) and res["circular/overall"] == pytest.approx(200 / 3)
    assert (res["questions"], res["rounds"], res["unanswered"]) == (3, 1, 0)


def test_mmbench_submission_sheet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("openpyxl")
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers/exp.jsonl").write_text((FIX / "mmbench/answers.jsonl").read_text())
    dst = script_main("convert_mmbench_for_submission.py")(
        ["--annotation-file", str(FIX / "mmbench/mmbench_dev_tiny.tsv"), "--result-dir", str(tmp_path / "answers"),
         "--upload-dir", str(tmp_path / "upload"), "--experiment", "exp"]
    )  # fmt: skip
    sheet = pd.read_excel(dst, engine="openpyxl")
    assert list(sheet.columns) == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert list(sheet["prediction"]) == ["B", "D", "B"]  # round-0 answers


def test_seed(tmp_path, capsys):
    upload = tmp_path / "upload.jsonl"
    res = script_main("convert_seed_for_submission.py")(
        ["--annotation-file", str(FIX / "seed/SEED-Bench.json"), "--result-file", str(FIX / "seed/answers.jsonl"),
         "--result-upload-file", str(upload)]
    )  # fmt: skip
    # 101 right, 102 "C." right, 103 wrong, v1 right
    assert (
        res["Scene Understanding"] == 100.0
        and res["Instance Counting"] == 50.0
        and res["Action Recognition"] == 100.0
    )
    assert (
        res["data_type/image"] == pytest.approx(200 / 3)
        and res["data_type/video"] == 100.0
        and res["overall"] == 75.0
    )
    assert [r["question_id"] for r in read_jsonl(upload)] == ["101", "102", "103", "v1"]
    assert read_jsonl(upload)[1] == {"question_id": "102", "prediction": "C."}
    assert "Total accuracy: 75.00%" in capsys.readouterr().out


# ---------------------------------------------------------------- LLaVA-Bench and MM-Vet summaries
def test_llava_bench_summary(capsys):
    from llava.eval.summarize_gpt_review import main

    run1, run2 = main(
        ["-f", str(FIX / "llava-bench/review-run1.jsonl"), str(FIX / "llava-bench/review-run2.jsonl")]
    )
    # conv: reference (8+6)/2 = 7, model (6+6)/2 = 6 -> 85.7; detail 5/10 -> 50; all 6 / 7.75 -> 77.4
    assert run1["llava_bench_conv"].relative == pytest.approx(600 / 7)
    assert run1["llava_bench_detail"].relative == 50.0 and run1["llava_bench_complex"].relative == 100.0
    assert run1["all"].relative == pytest.approx(600 / 7.75) and run1["all"].model == 60.0
    assert mean_relative([run1, run2]) == pytest.approx((600 / 7.75 + 100) / 2)
    out = capsys.readouterr().out
    assert "all 77.4 77.5 60.0" in out and "llava_bench_conv 85.7 70.0 60.0" in out


def test_llava_bench_ignore():
    reviews = read_jsonl(FIX / "llava-bench/review-run1.jsonl")
    assert summarize_reviews(reviews, ignore=[2])["all"].relative == pytest.approx(100 * 19 / 21)


def test_mmvet_summary_and_converter(tmp_path):
    from llava.eval.eval_mmvet import main

    res = main(
        ["--grade-file", str(FIX / "mm-vet/grade-2runs.json"), "--metadata", str(FIX / "mm-vet/mm-vet.json")]
    )
    # run 1: (1 + 0 + 0.6) / 3, run 2: (0.5 + 0.5 + 0.4) / 3
    assert res["runs"] == pytest.approx([160 / 3, 140 / 3]) and res["total"] == pytest.approx(50.0)
    assert res["std"] == pytest.approx(10 / 3)
    # per question means .75 / .25 / .5: rec (q0, q2), ocr (q1, q2), math (q1)
    assert res["capabilities"] == pytest.approx({"math": 25.0, "ocr": 37.5, "rec": 62.5})
    assert res["integrations"] == pytest.approx({"math_ocr": 25.0, "ocr_rec": 50.0, "rec": 75.0})
    dst = tmp_path / "res.json"
    script_main("convert_mmvet_for_eval.py")(["--src", str(FIX / "mm-vet/answers.jsonl"), "--dst", str(dst)])
    assert dst.read_text() == '{\n  "v1_0": "x = 3",\n  "v1_1": "Caf\\u00e9 \\"Sol\\""\n}'
    assert mmvet.answers_for_grader([{"question_id": 7, "text": "t"}]) == {"v1_7": "t"}


# ---------------------------------------------------------------- files
def test_truncated_answer_file_names_the_line(tmp_path):
    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, "te')
    with pytest.raises(ValueError, match=r"answers.jsonl:2: not valid JSON .*truncated"):
        read_jsonl(bad)
    with pytest.raises(FileNotFoundError, match="answer file not found"):
        read_jsonl(tmp_path / "nope.jsonl", "answer file")


def test_gqa_scorer_direct():
    qs = read_json(FIX / "gqa/testdev_balanced_questions.json")
    assert gqa.score_gqa(qs, [{"questionId": "q4", "prediction": "red"}])["accuracy"] == 25.0
    assert seed.LETTERS == ("A", "B", "C", "D")
