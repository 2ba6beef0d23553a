"""The SEED-Bench, VizWiz, LLaVA-Bench and MM-Vet submission / review steps take lmms-lab's parquet as truth.

Each test writes a tiny parquet file in the benchmark's lmms-lab layout (tests/fixtures/eval/lmms_parquet/
README.md) and the same questions in the original's files, runs the step on both (answers keyed by the ids
each path's answer runner gives) and asserts the same output: byte-identical upload/review files, equal scores.
"""

import json
import runpy
from pathlib import Path

import pytest

from llava.eval.lmms_parquet import SEED_QUESTION_TYPES, parquet_items
from llava.eval.question_sources import vqa_items
from tests.test_eval_lmms_parquet import jsonl, png, write

datasets = pytest.importorskip("datasets")
REPO = Path(__file__).resolve().parents[1]
REV = REPO / "tests/fixtures/eval/review"
VIZWIZ_SUFFIX = ("\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
                 "Answer the question using a single word or phrase.")  # fmt: skip

SEED = {"answer": str, "choice_a": str, "choice_b": str, "choice_c": str, "choice_d": str, "data_id": str,
        "data_type": str, "question": str, "question_id": str, "question_type_id": int, "image": "images"}  # fmt: skip
SEED_ROWS = [
    {"answer": "A", "choice_a": "a beach", "choice_b": "a forest", "choice_c": "a city", "choice_d": "a desert",
     "data_id": "a.jpg", "data_type": "image", "question": "Where is this?", "question_id": "101",
     "question_type_id": 1, "image": [png((1, 2, 3))]},
    {"answer": "C", "choice_a": "1", "choice_b": "2", "choice_c": "3", "choice_d": "4", "data_id": "b.jpg",
     "data_type": "image", "question": "How many cars?", "question_id": "102", "question_type_id": 5,
     "image": [png((4, 5, 6))]},
    {"answer": "D", "choice_a": "running", "choice_b": "sitting", "choice_c": "eating", "choice_d": "dancing",
     "data_id": "v.mp4", "data_type": "video", "question": "What is the person doing?", "question_id": "v1",
     "question_type_id": 10, "image": [png((1, 1, 1)), png((2, 2, 2)), png((3, 3, 3))]},
]  # fmt: skip
VIZWIZ = {"question_id": str, "image": "image", "question": str, "answers": "strings", "category": str}
VIZWIZ_ROWS = [
    {"question_id": f"VizWiz_test_0000000{i}", "image": png((i, i, i)), "question": q, "answers": None,
     "category": None} for i, q in enumerate(["What is this?", "How many dogs?", "What is it?"])
]  # fmt: skip
BENCH = {"question_id": int, "question": str, "image": "image", "caption": str, "gpt_answer": str,
         "category": str, "image_id": str}  # fmt: skip
BENCH_ROWS = [
    {"question_id": 0, "question": "What is the name of this landmark?", "image": png((1, 1, 1)),
     "caption": "A tall iron lattice tower in Paris seen from a park on a clear day.",
     "gpt_answer": "This is the Eiffel Tower in Paris.", "category": "conv", "image_id": "001"},
    {"question_id": 1, "question": "Describe the painting in detail.", "image": png((2, 2, 2)),
     "caption": "An oil painting of a woman with a pearl earring.", "category": "detail", "image_id": "002",
     "gpt_answer": "The painting shows a young woman looking over her shoulder, wearing a pearl earring."},
    {"question_id": 2, "question": "Why is the tower famous?", "image": png((1, 1, 1)),
     "caption": "A tall iron lattice tower in Paris seen from a park on a clear day.",
     "gpt_answer": "It was the tallest structure in the world for 41 years.", "category": "complex",
     "image_id": "001"},
]  # fmt: skip
MMVET = {"question_id": str, "image": "image", "question": str, "answer": str, "image_source": str,
         "capability": str}  # fmt: skip
MMVET_ROWS = [
    {"question_id": "v1_0", "image": png((1, 1, 1)), "question": "What is x in the equation?",
     "answer": "-1 <AND> -5", "image_source": "v1_0.png", "capability": "ocr,math"},
    {"question_id": "v1_1", "image": png((2, 2, 2)), "question": "What is in the picture?", "answer": "a dog",
     "image_source": "v1_1.jpg", "capability": "rec"},
    {"question_id": "v1_2", "image": png((3, 3, 3)), "question": "What does the sign say?", "answer": "stop",
     "image_source": "v1_2.jpg", "capability": "rec,ocr"},
]  # fmt: skip


def script_main(name):
    return runpy.run_path(str(REPO / "scripts" / name), run_name="not_main")["main"]


def answered(items, texts) -> list[dict]:
    """An answer file as the runner writes it, keyed by the ids ``items`` (its questions) carry."""
    return [{"question_id": i.question_id, "prompt": i.prompt, "text": t, "answer_id": "x", "model_id": "m",
             "metadata": {}} for i, t in zip(items, texts)]  # fmt: skip


def says_in_help(main, capsys, phrase) -> bool:
    """Whether ``main --help`` prints ``phrase`` (compared without whitespace: argparse wraps at hyphens)."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    return "".join(phrase.split()) in "".join(capsys.readouterr().out.split())


def test_seed_submission_from_the_parquet_equals_seed_bench_json(tmp_path, capsys):
    parquet = write(tmp_path / "seed/test-00000-of-00001.parquet", SEED_ROWS, SEED)
    original = tmp_path / "SEED-Bench.json"  # the same questions in SEED-Bench.json's layout
    questions = [{k: v for k, v in r.items() if k != "image"} for r in SEED_ROWS]
    original.write_text(json.dumps({"question_type": SEED_QUESTION_TYPES, "questions": questions}))
    answers = jsonl(tmp_path / "merge.jsonl", answered(parquet_items(str(parquet)), ["A", "B", "D."]))
    convert = script_main("convert_seed_for_submission.py")
    outputs = []
    for truth in (original, parquet.parent):
        capsys.readouterr()
        upload = tmp_path / f"upload-{truth.name}.jsonl"
        res = convert(["--annotation-file", str(truth), "--result-file", str(answers),
                       "--result-upload-file", str(upload)])  # fmt: skip
        outputs.append((res, capsys.readouterr().out, upload.read_bytes()))
    assert outputs[0] == outputs[1]
    res, printed, upload = outputs[1]
    assert res["overall"] == pytest.approx(200 / 3) and res["Instances Counting"] == 0.0
    assert res["Action Recognition"] == 100.0 and res["data_type/video"] == 100.0 and res["missing"] == 0
    assert "Total accuracy: 66.67%" in printed
    assert upload.decode().splitlines()[2] == '{"question_id": "v1", "prediction": "D."}'
    assert says_in_help(convert, capsys, "lmms-lab's SEED-Bench parquet")


def test_vizwiz_upload_from_the_parquet_equals_llavas_question_file(tmp_path, capsys):
    parquet = write(tmp_path / "vizwiz/test.parquet", VIZWIZ_ROWS, VIZWIZ)
    original = jsonl(tmp_path / "llava_test.jsonl", [
        {"question_id": i, "image": f"{r['question_id']}.jpg", "text": r["question"] + VIZWIZ_SUFFIX,
         "category": "default"} for i, r in enumerate(VIZWIZ_ROWS)])  # fmt: skip
    texts = ["Unanswerable.", "Two dogs", "It's the remote!"]
    by_parquet = jsonl(tmp_path / "a_parquet.jsonl", answered(parquet_items(str(parquet)), texts))
    by_json = jsonl(tmp_path / "a_json.jsonl", answered(vqa_items(str(original), str(tmp_path)), texts))
    convert = script_main("convert_vizwiz_for_submission.py")
    uploads = []
    for truth, answers in ((original, by_json), (parquet, by_parquet)):
        uploads.append(tmp_path / f"up-{truth.suffix[1:]}.json")
        convert(["--annotation-file", str(truth), "--result-file", str(answers),
                 "--result-upload-file", str(uploads[-1])])  # fmt: skip
    assert uploads[0].read_bytes() == uploads[1].read_bytes()
    assert json.loads(uploads[1].read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "2 dogs"},
        {"image": "VizWiz_test_00000002.jpg", "answer": "it 's remote"},
    ]
    with pytest.raises(ValueError, match=r"none of the answers' question ids \(first: 0\).*llava_test.jsonl"):
        convert(["--annotation-file", str(parquet), "--result-file", str(by_json),
                 "--result-upload-file", str(tmp_path / "x.json")])  # fmt: skip
    assert says_in_help(convert, capsys, "lmms-lab's VizWiz-VQA parquet")


@pytest.fixture()
def judge_stub():
    from fixtures.eval.stub_openai import StubOpenAI

    def judge(request):  # scores that depend on the question, so each line is checked
        user = request["messages"][-1]["content"]
        if "landmark" in user:
            return "8 9\nclose."
        return "9, 6\nmisses details." if "painting" in user else "7 5"

    with StubOpenAI(judge) as stub:
        yield stub


def test_llava_bench_review_from_the_parquet_equals_the_original_files(tmp_path, judge_stub, capsys):
    from llava.eval.eval_gpt_review_bench import main as review
    from llava.eval.summarize_gpt_review import main as summarize

    parquet = write(tmp_path / "bench/data/train-00000-of-00001.parquet", BENCH_ROWS, BENCH)
    questions = jsonl(tmp_path / "questions.jsonl", [
        {"question_id": r["question_id"], "image": f"{r['image_id']}.jpg", "text": r["question"],
         "category": r["category"]} for r in BENCH_ROWS])  # fmt: skip
    context = jsonl(tmp_path / "context.jsonl", [{"id": i, "image": f"{i}.jpg", "caption": c} for i, c in
                                                 {r["image_id"]: r["caption"] for r in BENCH_ROWS}.items()])  # fmt: skip
    reference = jsonl(tmp_path / "answers_gpt4.jsonl",
                      [{"question_id": r["question_id"], "text": r["gpt_answer"]} for r in BENCH_ROWS])  # fmt: skip
    items = parquet_items(str(parquet.parent))
    assert [i.question_id for i in items] == [i.question_id for i in vqa_items(str(questions), str(tmp_path))]
    model = jsonl(
        tmp_path / "model.jsonl", answered(items, ["It is the Eiffel Tower.", "A woman.", "It is tall."])
    )

    def run(q, c, ref, name):
        out = tmp_path / f"review_{name}.jsonl"
        review(["-q", str(q), "-c", str(c), "-r", str(REV / "rule.json"), "-a", str(ref), str(model), "-o", str(out),
                "--api-base", judge_stub.url, "--model", "m", "--cache-dir", "", "--workers", "1"])  # fmt: skip
        return out

    first = run(questions, context, reference, "original")
    folder = str(parquet.parent)
    second = run(folder, folder, folder, "parquet")
    sent = [r["messages"][1]["content"] for r in judge_stub.requests]
    assert sent[:3] == sent[3:] and len(sent) == 6  # the judge saw the same texts, sent again (no cache)
    assert sent[2].startswith("[Context]\nA tall iron lattice tower in Paris seen from a park on a clear day.\n\n"
                              "[Question]\nWhy is the tower famous?\n\n[Assistant 1]\nIt was the tallest")  # fmt: skip
    assert first.read_bytes() == second.read_bytes()
    # questions from the parquet, the context and reference answers from the original's files
    mixed = run(folder, context, reference, "mixed")
    assert mixed.read_bytes() == first.read_bytes()
    capsys.readouterr()
    (summary,) = summarize(["-f", str(second)])
    assert [(c, s.count) for c, s in summary.items()] == [
        ("all", 3), ("llava_bench_complex", 1), ("llava_bench_conv", 1), ("llava_bench_detail", 1)]  # fmt: skip
    assert summary["all"].relative == pytest.approx(100 * 20 / 24)
    assert says_in_help(review, capsys, "llava-bench-in-the-wild parquet")


def test_llava_bench_parquet_with_two_captions_for_one_image_is_an_error(tmp_path):
    from llava.eval.lmms_parquet_truth import llava_bench_inputs

    rows = [BENCH_ROWS[0], {**BENCH_ROWS[2], "caption": "Another caption."}]
    with pytest.raises(ValueError, match=r"question 2: image_id '001' has another caption"):
        llava_bench_inputs(write(tmp_path / "b.parquet", rows, BENCH))


def test_mmvet_grader_file_and_summary_from_the_parquet_equal_mm_vet_json(tmp_path, capsys):
    from llava.eval.eval_mmvet import main as summary

    parquet = write(tmp_path / "mmvet/test-00000-of-00001.parquet", MMVET_ROWS, MMVET)
    original = tmp_path / "mm-vet.json"  # MM-Vet's own file: capabilities as lists
    original.write_text(json.dumps({r["question_id"]: {
        "imagename": r["image_source"], "capability": r["capability"].split(","), "question": r["question"],
        "answer": r["answer"]} for r in MMVET_ROWS}, indent=2))  # fmt: skip
    items = parquet_items(str(parquet))
    assert [i.question_id for i in items] == [0, 1, 2]
    answers = jsonl(tmp_path / "answers.jsonl", list(reversed(answered(items, ["x = -1", "a cat", "STOP"]))))
    convert = script_main("convert_mmvet_for_eval.py")
    results = []
    for truth in (original, parquet):
        dst, meta = tmp_path / f"res-{truth.suffix[1:]}.json", tmp_path / f"meta-{truth.suffix[1:]}.json"
        convert(
            ["--src", str(answers), "--dst", str(dst), "--metadata", str(truth), "--metadata-dst", str(meta)]
        )
        results.append((dst.read_bytes(), meta.read_bytes()))
    assert results[0] == results[1]
    # the metadata's order, not the answers'
    assert list(json.loads(results[1][0])) == ["v1_0", "v1_1", "v1_2"]
    assert results[1][1] == original.read_bytes()  # the grader's mm-vet.json, written from the parquet
    with pytest.raises(KeyError, match=r"1 MM-Vet questions have no answer \(first: \['v1_0'\]\)"):
        convert(["--src", str(jsonl(tmp_path / "part.jsonl", answered(items[1:], ["a", "b"]))),
                 "--dst", str(tmp_path / "p.json"), "--metadata", str(parquet)])  # fmt: skip

    grades = tmp_path / "grade.json"
    grades.write_text(json.dumps({"v1_0": {"score": [0.5, 1.0]}, "v1_1": {"score": [0.0, 0.0]},
                                  "v1_2": {"score": [1.0, 0.6]}}))  # fmt: skip
    scores = [
        summary(["--grade-file", str(grades), "--metadata", str(truth)]) for truth in (original, parquet)
    ]
    assert scores[0] == scores[1]
    # question means .75 / 0 / .8: ocr (q0, q2), math (q0), rec (q1, q2)
    assert scores[1]["capabilities"] == pytest.approx({"math": 75.0, "ocr": 77.5, "rec": 40.0})
    assert scores[1]["integrations"] == pytest.approx({"math_ocr": 75.0, "ocr_rec": 80.0, "rec": 0.0})
    assert says_in_help(convert, capsys, "lmms-lab's MMVet parquet")
    assert says_in_help(summary, capsys, "lmms-lab's MMVet parquet")
