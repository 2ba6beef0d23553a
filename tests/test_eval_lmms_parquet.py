"""Answering lmms-lab's parquet benchmarks (questions + images in one file) with the LLaVA-1.5 prompts.

Each test writes tiny parquet files in a benchmark's layout (its real column names and types, images as
``datasets.Image`` bytes) and checks the items against the JSON/TSV path's items for the same questions.
"""

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoTokenizer

from llava.eval.lmms_parquet import detect_layout, parquet_items
from llava.eval.question_sources import mmbench_items, science_items, vqa_items
from llava.utils.jsonfiles import read_jsonl

datasets = pytest.importorskip("datasets")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
SHORT = "\nAnswer the question using a single word or phrase."
FAST = ["--max_new_tokens", "4", "--temperature", "0", "--num-workers", "0", "--conv-mode", "vicuna_v1"]


def png(colour, size=(8, 6)) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write(path: Path, rows: list[dict], features: dict) -> Path:
    """Rows as a parquet file with these ``datasets`` features (``str`` = string, ``"image"`` = Image())."""
    kinds = {str: datasets.Value("string"), int: datasets.Value("int64"), bool: datasets.Value("bool"),
             "image": datasets.Image(), "images": datasets.List(datasets.Image()),
             "strings": datasets.List(datasets.Value("string"))}  # fmt: skip
    feats = {name: kinds[kind] if isinstance(kind, (type, str)) else kind for name, kind in features.items()}
    columns = {name: [r.get(name) for r in rows] for name in features}
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=datasets.Features(feats)).to_parquet(str(path))
    return path


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


POPE = {"id": str, "question_id": str, "question": str, "answer": str, "image_source": str, "image": "image",
        "category": str}  # fmt: skip
POPE_ROWS = [
    {"id": "0", "question_id": "1", "question": "Is there a dog in the image?", "answer": "yes",
     "image_source": "COCO_val2014_000000000001", "image": png((200, 0, 0)), "category": "adversarial"},
    {"id": "1", "question_id": "2", "question": "Is there a cat in the image? ", "answer": "no",
     "image_source": "COCO_val2014_000000000001", "image": png((200, 0, 0)), "category": "adversarial"},
    {"id": "2", "question_id": "3", "question": "Is there a car in the image?", "answer": "yes",
     "image_source": "COCO_val2014_000000000002", "image": png((0, 200, 0)), "category": "random"},
]  # fmt: skip
MME = {"question_id": str, "image": "image", "question": str, "answer": str, "category": str}
MME_ROWS = [
    {"question_id": "existence/000001.jpg", "image": png((1, 2, 3)), "category": "existence", "answer": "Yes",
     "question": "Is there a dog in this image? Please answer yes or no."},
    {"question_id": "existence/000001.jpg", "image": png((1, 2, 3)), "category": "existence", "answer": "No",
     "question": "Is there a boat in this image?  Please answer yes or no."},
    {"question_id": "code_reasoning/0001.png", "image": png((9, 9, 9)), "category": "code_reasoning",
     "answer": "Yes", "question": "Is a python code shown in the picture? Please answer yes or no."},
    {"question_id": "code_reasoning/0001.png", "image": png((9, 9, 9)), "category": "code_reasoning",
     "answer": "No", "question": "Is a java code shown in the picture? Please answer yes or no."},
]  # fmt: skip
SQA = {"image": "image", "question": str, "choices": "strings", "answer": int, "hint": str, "task": str,
       "grade": str, "subject": str, "topic": str, "category": str, "skill": str, "lecture": str, "solution": str}  # fmt: skip
SQA_ROWS = [
    {"image": png((90, 140, 30)), "question": "Which is a fruit?", "choices": ["carrot", "apple"], "answer": 1,
     "hint": "A picture of fruit."},
    {"image": png((9, 140, 30)), "question": "Which closing is correct?", "choices": ["Best wishes,\nAnn", "x"],
     "answer": 0, "hint": ""},
    {"image": None, "question": "What is 2 + 2?", "choices": ["3", "4", "5"], "answer": 1, "hint": ""},
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_llava(tiny_kit, tmp_path_factory):
    from llava.model.builder import load_pretrained_model
    from tests.model_helpers import build_tiny_llava

    folder = tmp_path_factory.mktemp("ckpt") / "llava-tiny-parquet"
    model = build_tiny_llava(tiny_kit)
    model.config.image_aspect_ratio = "pad"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_kit.tokenizer).save_pretrained(folder)
    return folder, load_pretrained_model(folder, None, None, device="cpu")


def same_items(parquet, json_items):
    assert [(i.question_id, i.text, i.prompt, i.extra) for i in parquet] == [
        (i.question_id, i.text, i.prompt, i.extra) for i in json_items
    ]


def test_pope_mme_vizwiz_textvqa_prompts_equal_the_json_path(tmp_path):
    pope = parquet_items(str(write(tmp_path / "pope/test-00000-of-00001.parquet", POPE_ROWS, POPE)))
    as_json = [{"question_id": r["question_id"], "image": "x.jpg", "category": r["category"],
                "text": r["question"].strip() + SHORT} for r in POPE_ROWS]  # fmt: skip
    same_items(pope, vqa_items(str(jsonl(tmp_path / "pope.jsonl", as_json)), str(tmp_path)))
    assert pope[2].load_image().size == (8, 6) and pope[2].load_image().getpixel((0, 0)) == (0, 200, 0)

    mme = parquet_items(str(write(tmp_path / "mme.parquet", MME_ROWS, MME)))
    assert [i.text for i in mme][:2] == [
        "Is there a dog in this image?" + SHORT,
        "Is there a boat in this image?" + SHORT,
    ]
    assert [i.question_id for i in mme] == [r["question_id"] for r in MME_ROWS]

    vizwiz_rows = [{"question_id": "VizWiz_test_00000000", "image": png((5, 5, 5)), "question": "What is this?",
                    "answers": None, "category": None}]  # fmt: skip
    vizwiz = write(tmp_path / "vizwiz.parquet", vizwiz_rows,
                   {"question_id": str, "image": "image", "question": str, "answers": "strings", "category": str})  # fmt: skip
    (item,) = parquet_items(str(vizwiz))
    assert item.text == ("What is this?\nWhen the provided information is insufficient, respond with "
                         "'Unanswerable'.\nAnswer the question using a single word or phrase.")  # fmt: skip

    tv = {"image_id": str, "question_id": int, "question": str, "question_tokens": "strings", "image": "image",
          "answers": "strings", "ocr_tokens": "strings", "set_name": str}  # fmt: skip
    tv_rows = [{"image_id": "img1", "question_id": 7, "question": "What brand is the drink?", "image": png((1, 1, 1)),
                "answers": ["coca cola"] * 10, "ocr_tokens": ["Coca", "Cola"]},
               {"image_id": "img2", "question_id": 8, "question": "How many people are there?",
                "image": png((1, 1, 1)), "answers": ["2"] * 10, "ocr_tokens": []}]  # fmt: skip
    items = parquet_items(str(write(tmp_path / "textvqa.parquet", tv_rows, tv)))
    fixture = read_jsonl(
        Path(__file__).parent / "fixtures/eval/textvqa/answers.jsonl"
    )  # the JSON path's prompts
    assert [(i.question_id, i.prompt) for i in items] == [
        (r["question_id"], r["prompt"]) for r in fixture[:2]
    ]

    from llava.eval.eval_textvqa import eval_single

    answers = jsonl(
        tmp_path / "tv_answers.jsonl", [{**r, "text": t} for r, t in zip(fixture[:2], ["coca cola", "3"])]
    )
    assert eval_single(str(tmp_path / "textvqa.parquet"), str(answers)) == pytest.approx(0.5)


def test_seed_gqa_open_ended_prompts(tmp_path):
    seed = {"answer": str, "choice_a": str, "choice_b": str, "choice_c": str, "choice_d": str, "data_id": str,
            "data_type": str, "question": str, "question_id": str, "question_type_id": int, "image": "images"}  # fmt: skip
    rows = [{"answer": "A", "choice_a": "a beach", "choice_b": "a forest", "choice_c": "a city", "choice_d": "a desert",
             "data_id": "a.jpg", "data_type": "image", "question": "Where is this?", "question_id": "101",
             "question_type_id": 1, "image": [png((1, 2, 3))]},
            {"answer": "D", "choice_a": "running", "choice_b": "sitting", "choice_c": "eating", "choice_d": "dancing",
             "data_id": "v.mp4", "data_type": "video", "question": "What is the person doing?", "question_id": "v1",
             "question_type_id": 10, "image": [png((1, 1, 1)), png((2, 2, 2)), png((3, 3, 3))]}]  # fmt: skip
    path = write(tmp_path / "seed.parquet", rows, seed)
    items = parquet_items(str(path))
    assert items[0].text == ("Where is this?\nA. a beach\nB. a forest\nC. a city\nD. a desert\n"
                             "Answer with the option's letter from the given choices directly.")  # fmt: skip
    assert items[1].load_image().getpixel((0, 0)) == (2, 2, 2)  # a video question: its middle frame
    from llava.eval.lmms_parquet_truth import seed_truth
    from llava.eval.scorers.seed import score_seed

    res = score_seed(
        seed_truth(path), [{"question_id": "101", "text": "A"}, {"question_id": "v1", "text": "B."}]
    )
    assert res["overall"] == 50.0 and res["Scene Understanding"] == 100.0 and res["data_type/video"] == 0.0

    gqa = {"id": str, "imageId": str, "question": str, "answer": str, "fullAnswer": str, "isBalanced": bool,
           "types": datasets.Features({"structural": datasets.Value("string"), "semantic": datasets.Value("string"),
                                       "detailed": datasets.Value("string")})}  # fmt: skip
    q = write(tmp_path / "gqa/q.parquet", [
        {"id": "201", "imageId": "n1", "question": "Is the sky dark?", "answer": "no", "fullAnswer": "No.",
         "isBalanced": True, "types": {"structural": "verify", "semantic": "attr", "detailed": "x"}}], gqa)  # fmt: skip
    images = write(tmp_path / "gqa/images/testdev-00000-of-00001.parquet", [{"id": "n1", "image": png((7, 7, 7))}],
                   {"id": str, "image": "image"})  # fmt: skip
    (item,) = parquet_items(str(q), str(images.parent))
    assert (item.question_id, item.text) == ("201", "Is the sky dark?" + SHORT)
    assert item.load_image().getpixel((0, 0)) == (7, 7, 7)
    from llava.eval.eval_gqa import main as score_gqa

    answers = jsonl(tmp_path / "gqa.jsonl", [{"question_id": "201", "prompt": item.prompt, "text": "No."}])
    assert score_gqa(["--questions", str(q), "--result-file", str(answers)])["accuracy"] == 100.0

    bench = {"question_id": int, "question": str, "image": "image", "caption": str, "gpt_answer": str,
             "category": str, "image_id": str}  # fmt: skip
    (b,) = parquet_items(str(write(tmp_path / "bench.parquet", [
        {"question_id": 0, "question": "What is the name of this famous sight in the photo?", "image": png((1, 1, 1)),
         "caption": "c", "gpt_answer": "g", "category": "conv", "image_id": "001"}], bench)))  # fmt: skip
    assert (b.question_id, b.prompt) == (0, "What is the name of this famous sight in the photo?")
    vet = {"question_id": str, "image": "image", "question": str, "answer": str, "image_source": str,
           "capability": "strings"}  # fmt: skip
    (v,) = parquet_items(str(write(tmp_path / "mmvet.parquet", [
        {"question_id": "v1_0", "image": png((1, 1, 1)), "question": "What is x in the equation?", "answer": "-1",
         "image_source": "v1_0.png", "capability": ["ocr", "math"]}], vet)))  # fmt: skip
    assert (v.question_id, v.prompt) == (
        0,
        "What is x in the equation?",
    )  # LLaVA's id: convert_mmvet adds v1_


def test_scienceqa_and_mmbench_prompts_equal_the_json_path(tmp_path):
    path = write(tmp_path / "sqa/test-00000-of-00001.parquet", SQA_ROWS, SQA)
    as_json = [
        {"id": "0", "image": "0.png", "conversations": [{"value": "<image>\nContext: A picture of fruit.\nWhich is a fruit?\nA. carrot\nB. apple"}]},
        {"id": "1", "image": "1.png", "conversations": [{"value": "<image>\nWhich closing is correct?\nA. Best wishes,\nAnn\nB. x"}]},
        {"id": "2", "conversations": [{"value": "What is 2 + 2?\nA. 3\nB. 4\nC. 5"}]},
    ]  # fmt: skip
    (tmp_path / "sqa.json").write_text(json.dumps(as_json))
    for single in (True, False):
        same_items(
            science_items(str(tmp_path / "sqa"), "", single),
            science_items(str(tmp_path / "sqa.json"), "", single),
        )
    assert science_items(str(path), "", True)[2].load_image is None  # a text-only row

    pytest.importorskip("pandas")
    from llava.eval.scorers.mmbench import read_tsv

    fix = Path(__file__).parent / "fixtures/eval/mmbench/mmbench_dev_tiny.tsv"
    tsv = read_tsv(fix)
    feats = {"index": int, "question": str, "hint": str, "answer": str, "A": str, "B": str, "C": str, "D": str,
             "category": str, "image": "image", "source": str, "L2-category": str, "comment": str, "split": str}  # fmt: skip
    rows = []
    for r in tsv:  # the TSV's cells as the parquet's strings (pandas reads a numeric option column as floats)
        row = {k: (v if v is None or feats[k] is not str else str(v)) for k, v in r.items() if k in feats}
        rows.append({**row, "image": png((3, 3, 3), (4, 4)), "L2-category": r.get("l2-category")})
    mmb = write(tmp_path / "mmbench/en/dev-00000-of-00001.parquet", rows, feats)
    for all_rounds, lang in ((True, "cn"), (False, "en")):
        same_items(
            mmbench_items(str(mmb), all_rounds, True, lang), mmbench_items(str(fix), all_rounds, True, lang)
        )
    from llava.eval.eval_mmbench import main as score

    answers = jsonl(
        tmp_path / "mmb.jsonl", [{"question_id": int(r["index"]), "text": r["answer"]} for r in tsv]
    )
    assert score(["--annotation-file", str(mmb), "--result-file", str(answers)])["overall"] == 100.0


def test_layout_detection_and_errors(tmp_path):
    assert (
        detect_layout(POPE).name == "pope" and detect_layout(MME).name == "mme"
    )  # POPE's columns hold MME's
    with pytest.raises(ValueError, match="not one of lmms-lab's benchmark layouts"):
        detect_layout({"foo", "image"}, "x.parquet")
    write(tmp_path / "two/dev-00000-of-00001.parquet", POPE_ROWS[:1], POPE)
    write(tmp_path / "two/test-00000-of-00001.parquet", POPE_ROWS[1:], POPE)
    with pytest.raises(ValueError, match=r"several splits \(dev, test\)"):
        parquet_items(str(tmp_path / "two"))
    assert len(parquet_items(str(tmp_path / "two" / "test-*.parquet"))) == 2
    with pytest.raises(ValueError, match="--benchmark mmvet needs the columns"):
        parquet_items(str(tmp_path / "two" / "test-*.parquet"), benchmark="mmvet")
    saved = tmp_path / "saved"
    datasets.Dataset.from_parquet(str(tmp_path / "two/test-00000-of-00001.parquet")).save_to_disk(str(saved))
    assert [i.question_id for i in parquet_items(str(saved))] == ["2", "3"]  # a save_to_disk folder
    bad = write(
        tmp_path / "bad.parquet", [{**POPE_ROWS[0], "image": {"bytes": b"not an image", "path": None}}], POPE
    )
    (item,) = parquet_items(str(bad))
    with pytest.raises(ValueError, match=r"bad.parquet: row 0 \(question 1\): its image cannot be decoded"):
        item.load_image()


@pytest.mark.skipif(not (SHARED / "mme/llava_mme.jsonl").is_file(), reason="needs ../shared/data/eval")
def test_prompts_equal_llavas_own_question_files(tmp_path):
    """Rows made from the benchmarks' own questions give the exact texts of LLaVA-1.5's question files."""
    llava = read_jsonl(SHARED / "mme/llava_mme.jsonl")
    gt = [line.split("\t") for line in (SHARED / "mme/gt/existence.txt").read_text().splitlines()[:4]]
    rows = [{"question_id": f"existence/{img}", "image": png((1, 1, 1)), "question": q, "answer": a,
             "category": "existence"} for img, q, a in gt]  # fmt: skip
    items = parquet_items(str(write(tmp_path / "mme.parquet", rows, MME)))
    want = {(q["question_id"], q["text"]) for q in llava}
    assert all((i.question_id, i.text) in want for i in items)
    pope = read_jsonl(SHARED / "pope/llava_pope_test.jsonl")[:3]
    labels = read_jsonl(SHARED / "pope/coco/coco_pope_adversarial.json")[:3]
    rows = [
        {**POPE_ROWS[0], "question_id": str(q["question_id"]), "question": lab["text"]}
        for q, lab in zip(pope, labels)
    ]
    items = parquet_items(str(write(tmp_path / "pope.parquet", rows, POPE)))
    assert [i.text for i in items] == [q["text"] for q in pope]
    vizwiz = read_jsonl(SHARED / "vizwiz/llava_test.jsonl")[:2]
    rows = [{"question_id": q["image"][:-4], "image": png((1, 1, 1)), "answers": None,
             "question": q["text"].split("\n")[0]} for q in vizwiz]  # fmt: skip
    feats = {"question_id": str, "image": "image", "question": str, "answers": "strings"}
    assert [i.text for i in parquet_items(str(write(tmp_path / "vw.parquet", rows, feats)))] == [
        q["text"] for q in vizwiz
    ]


@pytest.mark.slow
def test_answers_then_scorers_end_to_end(tiny_llava, tmp_path):
    from llava.eval import model_vqa_loader, model_vqa_science
    from llava.eval.eval_mme import main as score_mme
    from llava.eval.eval_pope import main as score_pope
    from llava.eval.eval_science_qa import main as score_sqa

    model = ["--model-path", str(tiny_llava[0]), *FAST]
    pope = write(tmp_path / "pope/test-00000-of-00001.parquet", POPE_ROWS, POPE)
    answers = model_vqa_loader.main([*model, "--question-file", str(pope.parent), "--answers-file",
                                     str(tmp_path / "pope.jsonl"), "--batch-size", "2"], loaded=tiny_llava[1])  # fmt: skip
    rows = read_jsonl(answers)
    assert [r["question_id"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["prompt"] == "Is there a dog in the image?" + SHORT
    res = score_pope(["--question-file", str(pope.parent), "--result-file", str(answers)])
    assert set(res) == {"adversarial", "random"} and res["adversarial"].tp + res["adversarial"].fp + \
        res["adversarial"].tn + res["adversarial"].fn == 2  # fmt: skip

    mme = write(tmp_path / "mme.parquet", MME_ROWS, MME)
    answers = model_vqa_loader.main([*model, "--question-file", str(mme), "--answers-file", str(tmp_path / "mme.jsonl")],
                                    loaded=tiny_llava[1])  # fmt: skip
    assert len(read_jsonl(answers)) == 4
    res = score_mme(["--gt-dir", str(mme), "--result-file", str(answers)])
    assert set(res["subtasks"]) == {"existence", "code_reasoning"}

    sqa = write(tmp_path / "sqa.parquet", SQA_ROWS, SQA)
    answers = model_vqa_science.main([*model, "--question-file", str(sqa), "--answers-file", str(tmp_path / "s.jsonl"),
                                      "--single-pred-prompt"], loaded=tiny_llava[1])  # fmt: skip
    rows = read_jsonl(answers)
    assert [r["question_id"] for r in rows] == ["0", "1", "2"] and rows[0]["prompt"].startswith(
        "<image>\nContext: "
    )
    res = score_sqa(["--question-file", str(sqa), "--result-file", str(answers)])
    assert res["count"] == 3 and res["img_count"] == 2 and res["missing"] == 0
