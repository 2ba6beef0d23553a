"""The answer runner (model_vqa, model_vqa_loader, model_vqa_science, model_vqa_mmbench) on a tiny LLaVA."""

import json
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoTokenizer

from llava.eval.answer_runner import get_chunk, split_list
from llava.utils.jsonfiles import read_json, read_jsonl

FIX = Path(__file__).resolve().parent / "fixtures" / "eval"
FIELDS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
FAST = ["--max_new_tokens", "6", "--temperature", "0", "--num-workers", "0"]


@pytest.fixture(scope="module")
def tiny_llava(tiny_kit, tmp_path_factory):
    """A saved tiny LLaVA checkpoint (original format) and it loaded once through load_pretrained_model."""
    from llava.model.builder import load_pretrained_model
    from tests.model_helpers import build_tiny_llava

    folder = tmp_path_factory.mktemp("ckpt") / "llava-tiny-eval"
    model = build_tiny_llava(tiny_kit)
    model.config.image_aspect_ratio = "pad"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_kit.tokenizer).save_pretrained(folder)
    return folder, load_pretrained_model(folder, None, None, device="cpu")


@pytest.fixture(scope="module")
def vqa_set(tmp_path_factory):
    """7 questions of different lengths on generated images of different sizes, one text-only."""
    root = tmp_path_factory.mktemp("vqa")
    (root / "images").mkdir()
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (120, 40, 160), (20, 20, 20)]
    questions = []
    for i, colour in enumerate(colours):
        Image.new("RGB", (24 + 8 * i, 40 - 3 * i), colour).save(root / "images" / f"img{i}.png")
        text = (
            "What colour is this?"
            + " Please look carefully." * i
            + "\nAnswer the question using a single word or phrase."
        )
        questions.append(
            {"question_id": 100 + i, "image": f"img{i}.png", "text": text, "category": "default"}
        )
    questions.insert(
        3, {"question_id": "text-only", "text": "Say something about shapes.", "category": "default"}
    )
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return root, questions


def vqa_args(tiny_llava, vqa_set, answers, *extra):
    return ["--model-path", str(tiny_llava[0]), "--question-file", str(vqa_set[0] / "questions.jsonl"),
            "--image-folder", str(vqa_set[0] / "images"), "--answers-file", str(answers), "--conv-mode", "vicuna_v1",
            *FAST, *extra]  # fmt: skip


def test_split_as_the_original():
    assert [len(c) for c in split_list(list(range(10)), 3)] == [4, 4, 2]
    assert [len(c) for c in split_list(list(range(5)), 4)] == [2, 2, 1]
    assert get_chunk(list(range(5)), 4, 3) == [] and get_chunk(list(range(5)), 4, 1) == [2, 3]
    with pytest.raises(ValueError, match="--chunk-idx 2"):
        get_chunk([1], 2, 2)


@pytest.mark.slow
def test_answers_well_formed_and_batch_4_equals_batch_1(tiny_llava, vqa_set, tmp_path):
    from llava.eval import model_vqa, model_vqa_loader

    one = read_jsonl(
        model_vqa.main(vqa_args(tiny_llava, vqa_set, tmp_path / "b1.jsonl", "--dtype", "float32"))
    )  # loads from disk
    four = read_jsonl(model_vqa_loader.main(vqa_args(tiny_llava, vqa_set, tmp_path / "b4.jsonl", "--batch-size", "4", "--num-workers", "1"),
                                            loaded=tiny_llava[1]))  # fmt: skip
    questions = vqa_set[1]
    for rows in (one, four):
        assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions]
        assert all(
            set(r) == FIELDS and r["model_id"] == "llava-tiny-eval" and r["metadata"] == {} for r in rows
        )
        assert [r["prompt"] for r in rows] == [q["text"] for q in questions]
        assert len({r["answer_id"] for r in rows}) == len(rows)
    assert [r["text"] for r in four] == [r["text"] for r in one]
    assert len({r["text"] for r in one}) >= 3  # the tiny model says different things to different questions


@pytest.mark.slow
def test_sharding_then_merge_gives_the_same_answers(tiny_llava, vqa_set, tmp_path):
    from llava.eval import model_vqa_loader

    whole = read_jsonl(
        model_vqa_loader.main(vqa_args(tiny_llava, vqa_set, tmp_path / "all.jsonl"), loaded=tiny_llava[1])
    )
    merged = []
    for k in range(3):
        shard = tmp_path / f"3_{k}.jsonl"
        model_vqa_loader.main(vqa_args(tiny_llava, vqa_set, shard, "--num-chunks", "3", "--chunk-idx", str(k), "--batch-size", "2"),
                              loaded=tiny_llava[1])  # fmt: skip
        merged += read_jsonl(shard)
    assert [r["question_id"] for r in merged] == [r["question_id"] for r in whole]
    assert [r["text"] for r in merged] == [r["text"] for r in whole]


@pytest.mark.slow
def test_resume_skips_answered_and_drops_a_torn_line(tiny_llava, vqa_set, tmp_path):
    from llava.eval import model_vqa

    answers = tmp_path / "answers.jsonl"
    full = read_jsonl(model_vqa.main(vqa_args(tiny_llava, vqa_set, answers), loaded=tiny_llava[1]))
    kept = full[:3]
    answers.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"question_id": 103, "pro')
    calls = []
    tokenizer, model, processor, ctx = tiny_llava[1]
    original = model.generate

    def counting(*a, **k):
        calls.append(a[0].shape[0])
        return original(*a, **k)

    model.generate = counting
    try:
        resumed = read_jsonl(model_vqa.main(vqa_args(tiny_llava, vqa_set, answers), loaded=tiny_llava[1]))
        again = read_jsonl(model_vqa.main(vqa_args(tiny_llava, vqa_set, answers), loaded=tiny_llava[1]))
    finally:
        del model.generate
    assert sum(calls) == len(full) - 3  # only the unanswered questions, nothing on the third run
    assert resumed[:3] == kept and [r["text"] for r in resumed] == [r["text"] for r in full]
    assert again == resumed
    with pytest.raises(ValueError, match="already holds answers of model 'llava-tiny-eval'"):
        bad = [json.dumps({**r, "model_id": "llava-tiny-eval"}) for r in full[:1]]
        (tmp_path / "other").mkdir()
        (tmp_path / "other/answers.jsonl").write_text(bad[0] + "\n")
        args = vqa_args(
            tiny_llava,
            vqa_set,
            tmp_path / "other/answers.jsonl",
            "--model-path",
            str(tmp_path / "other-model"),
        )
        model_vqa.main(args, loaded=tiny_llava[1])


def test_missing_image_names_the_question(tiny_llava, vqa_set, tmp_path):
    from llava.eval import model_vqa

    with pytest.raises(FileNotFoundError, match="question 100: image not found: .*img0.png"):
        model_vqa.main(
            vqa_args(tiny_llava, vqa_set, tmp_path / "a.jsonl", "--image-folder", str(tmp_path)),
            loaded=tiny_llava[1],
        )


@pytest.mark.slow
def test_science_runner_feeds_the_scorer(tiny_llava, tmp_path):
    from llava.eval import model_vqa_science
    from llava.eval.eval_science_qa import main as score

    for pid in ("10", "12", "14"):
        (tmp_path / "images" / pid).mkdir(parents=True)
        Image.new("RGB", (30, 20), (90, 140, 30)).save(tmp_path / "images" / pid / "image.png")
    answers = tmp_path / "sqa.jsonl"
    model_vqa_science.main(["--model-path", str(tiny_llava[0]), "--question-file", str(FIX / "scienceqa/llava_test_CQM-A.json"),
                            "--image-folder", str(tmp_path / "images"), "--answers-file", str(answers),
                            "--single-pred-prompt", "--conv-mode", "vicuna_v1", "--batch-size", "3", *FAST],
                           loaded=tiny_llava[1])  # fmt: skip
    rows = {r["question_id"]: r for r in read_jsonl(answers)}
    assert set(rows) == {"10", "11", "12", "13", "14", "99"}
    assert rows["10"]["prompt"] == ("<image>\nContext: A picture of fruit.\nWhich is a fruit?\nA. carrot\nB. apple\n"
                                    "Answer with the option's letter from the given choices directly.")  # fmt: skip
    assert rows["11"]["prompt"].startswith("Which word rhymes with cat?")  # text-only: no image token
    (tmp_path / "base").mkdir()
    (tmp_path / "base/pid_splits.json").write_text((FIX / "scienceqa/pid_splits.json").read_text())
    res = score(["--base-dir", str(tmp_path / "base"), "--question-file", str(FIX / "scienceqa/llava_test_CQM-A.json"),
                 "--result-file", str(answers)])  # fmt: skip
    assert res["count"] == 5 and res["missing"] == 0


@pytest.mark.slow
def test_mmbench_runner_all_rounds(tiny_llava, tmp_path):
    pytest.importorskip("pandas")
    from llava.eval import model_vqa_mmbench
    from llava.eval.eval_mmbench import main as score

    answers = tmp_path / "mmb.jsonl"
    model_vqa_mmbench.main(["--model-path", str(tiny_llava[0]), "--question-file", str(FIX / "mmbench/mmbench_dev_tiny.tsv"),
                            "--answers-file", str(answers), "--all-rounds", "--single-pred-prompt", "--lang", "cn",
                            "--conv-mode", "vicuna_v1", "--batch-size", "4", *FAST], loaded=tiny_llava[1])  # fmt: skip
    rows = read_jsonl(answers)
    assert [(r["question_id"], r["round_id"]) for r in rows] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 0),
        (2, 1),
    ]
    r = rows[1]
    assert r["options"] == ["dog", "bird", "cat"] and r["option_char"] == ["B", "C", "A"]
    assert r["prompt"] == "A pet at home.\nWhich animal is shown?\nA. dog\nB. bird\nC. cat"
    assert set(FIELDS) <= set(r)
    res = score(
        ["--annotation-file", str(FIX / "mmbench/mmbench_dev_tiny.tsv"), "--result-file", str(answers)]
    )
    assert res["answered"] == 3 and "circular/overall" in res


def test_mmbench_prompt_uses_the_chinese_instruction(tmp_path):
    pytest.importorskip("pandas")
    from llava.eval.question_sources import mmbench_items

    items = mmbench_items(
        str(FIX / "mmbench/mmbench_dev_tiny.tsv"), all_rounds=False, single_pred_prompt=True, lang="cn"
    )
    assert [it.question_id for it in items] == [0, 1, 2]
    assert items[2].text == "What colour is the square?\nA. red\nB. green\n请直接回答选项字母。"
    assert items[0].load_image().size == (4, 4)
    assert read_json(FIX / "scienceqa/pid_splits.json")["test"][0] == "10"
