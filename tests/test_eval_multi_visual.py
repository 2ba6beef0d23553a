"""The answer runner on multi-image and video questions (LLaVA-NeXT's question formats), tiny LLaVA-NeXT model."""

import json

import pytest
from PIL import Image
from transformers import AutoTokenizer

from llava.images.video import write_frame_folder, write_video
from llava.utils.jsonfiles import read_jsonl

FAST = ["--max_new_tokens", "5", "--temperature", "0", "--num-workers", "0", "--conv-mode", "vicuna_v1"]
NEXT = dict(image_aspect_ratio="anyres_max_4", image_grid_pinpoints="(1x1),...,(2x2)", frames_upbound=4)


@pytest.fixture(scope="module")
def tiny_next(tiny_kit, tmp_path_factory):
    """A saved tiny LLaVA-NeXT-style checkpoint (spatial_unpad, anyres_max_4, 4 frames per video), loaded."""
    from llava.model.builder import load_pretrained_model
    from tests.model_helpers import build_tiny_llava

    folder = tmp_path_factory.mktemp("ckpt") / "llava-next-tiny-eval"
    model = build_tiny_llava(tiny_kit, mm_patch_merge_type="spatial_unpad")
    for key, value in NEXT.items():
        setattr(model.config, key, value)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_kit.tokenizer).save_pretrained(folder)
    return folder, load_pretrained_model(folder, None, None, device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    for i, (size, colour) in enumerate(
        [((40, 20), (200, 30, 30)), ((20, 44), (30, 200, 30)), ((33, 33), (30, 30, 200))]
    ):
        img = Image.new("RGB", size, colour)
        img.paste((255, 255, 255), (0, 0, size[0] // 2, size[1] // 3))
        img.save(root / f"img{i}.png")
    frames = [Image.new("RGB", (32, 24), (25 * k, 90, 250 - 25 * k)) for k in range(10)]
    write_video(frames, root / "clip.mp4", fps=2)
    write_frame_folder(frames[:6], root / "frames")
    return root


QUESTIONS = [
    {"question_id": "multi", "image": ["img0.png", "img1.png", "img2.png"], "text": "Which one is green?"},
    {"question_id": "placed", "image": ["img0.png", "img1.png"], "text": "Is <image> redder than <image>?"},
    {"question_id": "one-in-list", "image": ["img1.png"], "text": "What colour?"},
    {"question_id": "video-file", "video": "clip.mp4", "text": "Does it get bluer?"},
    {"question_id": "text-only", "text": "Say hi."},
    {"question_id": "frames-folder", "video": "frames", "text": "How many colours?"},
]


def run_vqa(tiny_next, question_file, media, answers, *extra):
    from llava.eval import model_vqa

    args = ["--model-path", str(tiny_next[0]), "--question-file", str(question_file), "--image-folder", str(media),
            "--answers-file", str(answers), *FAST, *extra]  # fmt: skip
    return read_jsonl(model_vqa.main(args, loaded=tiny_next[1]))


def test_multi_image_and_video_questions_are_answered(tiny_next, media, tmp_path):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    model = tiny_next[1][1]
    calls = []
    original = model.generate

    def spy(ids, **kw):
        images = kw.get("images")
        shapes = [] if images is None else [tuple(x.shape) for x in images]
        calls.append(
            {"markers": int((ids == -200).sum()), "shapes": shapes, "modalities": kw.get("modalities")}
        )
        return original(ids, **kw)

    model.generate = spy
    try:
        one = run_vqa(tiny_next, qfile, media, tmp_path / "b1.jsonl")
    finally:
        del model.generate
    assert [r["question_id"] for r in one] == [q["question_id"] for q in QUESTIONS]
    assert [r["prompt"] for r in one] == [q["text"] for q in QUESTIONS]
    assert [c["markers"] for c in calls] == [3, 2, 1, 1, 0, 1]
    assert calls[0]["shapes"] == [(3, 32, 32)] * 3 and calls[0]["modalities"] is None  # several: padded
    assert calls[2]["shapes"] == [(3, 3, 32, 32)]  # one image: anyres_max_4, 2 tiles + base for 20x44
    assert calls[3] == {"markers": 1, "shapes": [(4, 3, 32, 32)], "modalities": ["video"]}  # 10 frames -> 4
    assert calls[5]["shapes"] == [(4, 3, 32, 32)] and calls[5]["modalities"] == ["video"]
    # Batched (visuals of several questions in one generate call, a video among them): same answers.
    three = run_vqa(tiny_next, qfile, media, tmp_path / "b3.jsonl", "--batch-size", "3", "--dtype", "float32")
    assert [r["text"] for r in three] == [r["text"] for r in one]
    assert len({r["text"] for r in one}) >= 2


def test_llava_next_interleave_json_questions(tiny_next, media, tmp_path):
    questions = [
        {"sample_id": "s1", "image": ["img0.png", "img2.png"], "metadata": {"dataset": "tiny"},
         "conversations": [{"from": "human", "value": "<image>\n<image>\nSame colour?"}, {"from": "gpt", "value": "No"}]},
    ]  # fmt: skip
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (row,) = run_vqa(tiny_next, tmp_path / "q.json", media, tmp_path / "a.jsonl")
    assert row["question_id"] == "s1" and row["prompt"] == "<image>\n<image>\nSame colour?" and row["text"]


@pytest.mark.parametrize(
    "question, error, match",
    [
        (
            {"question_id": 7, "image": ["img0.png"], "video": "clip.mp4", "text": "?"},
            ValueError,
            "question 7 has both",
        ),
        (
            {"question_id": 8, "video": "nope.mp4", "text": "?"},
            FileNotFoundError,
            "question 8: video not found",
        ),
        (
            {"question_id": 9, "image": ["img0.png", "img1.png"], "text": "<image> ?"},
            ValueError,
            "1 <image> marker",
        ),
        (
            {"question_id": 10, "image": ["img0.png", "gone.png"], "text": "?"},
            FileNotFoundError,
            "question 10: image not found",
        ),
    ],
)
def test_bad_questions_name_the_question(tiny_next, media, tmp_path, question, error, match):
    (tmp_path / "q.jsonl").write_text(json.dumps(question) + "\n")
    with pytest.raises(error, match=match):
        run_vqa(tiny_next, tmp_path / "q.jsonl", media, tmp_path / "a.jsonl")


def test_video_folder_flag(tiny_next, media, tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "video": "clip.mp4", "text": "?"}) + "\n")
    with pytest.raises(FileNotFoundError, match="check --video-folder"):
        run_vqa(tiny_next, tmp_path / "q.jsonl", tmp_path, tmp_path / "a.jsonl")
    (row,) = run_vqa(
        tiny_next, tmp_path / "q.jsonl", tmp_path, tmp_path / "a.jsonl", "--video-folder", str(media)
    )
    assert row["question_id"] == 1 and row["text"]
