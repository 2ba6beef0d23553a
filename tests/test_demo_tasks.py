"""The demo's multi-image and video tasks: their data (balanced, one picture or frame alone says nothing),
their stage flags (accepted by the training parser), and their quick runs learning far above chance."""

import collections
import json

import pytest

from llava.data.tools.synthetic import COLOURS
from llava.data.tools.synthetic_multi import SAME_COLOUR, generate_multi_image, generate_video
from llava.demo import main
from llava.demo_tasks import TASKS, expand


def _shape_colour(path) -> str:
    from PIL import Image

    pixels = set(Image.open(path).convert("RGB").getdata())
    (name,) = [name for name, rgb in COLOURS.items() if rgb in pixels]
    return name


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_multi_image_pairs_are_balanced_and_interleaved(tmp_path):
    paths = generate_multi_image(tmp_path, n_train=120, n_eval=40)
    train, held_out = json.loads(paths["finetune"].read_text()), _lines(paths["eval"])
    pairs = [s for s in train if "image" in s]
    assert len(pairs) == 120 and len(train) > 120  # plus a few text-only samples
    for s in pairs:
        assert len(s["image"]) == 2 and all((paths["images"] / n).is_file() for n in s["image"])
        assert s["conversations"][0]["value"].count("<image>") == 2
        assert sum(t["value"].count("<image>") for t in s["conversations"]) == 2
        assert s["conversations"][-2]["value"].endswith(SAME_COLOUR)
    assert collections.Counter(q["answer"] for q in held_out) == {"Yes": 20, "No": 20}
    for q in held_out:
        assert q["text"].count("<image>") == 2 and q["text"].endswith(SAME_COLOUR)
    # The answer follows the two pictures' colours; either picture alone says nothing: per colour of the
    # first (or of the second) picture, both answers occur.
    by_colour = [collections.defaultdict(set), collections.defaultdict(set)]
    for sample in pairs:
        colours = [_shape_colour(paths["images"] / name) for name in sample["image"]]
        answer = sample["conversations"][-1]["value"]
        assert answer == ("Yes." if colours[0] == colours[1] else "No."), sample
        for k in (0, 1):
            by_colour[k][colours[k]].add(answer)
    for k in (0, 1):
        assert len(by_colour[k]) == len(COLOURS) and all(v == {"Yes.", "No."} for v in by_colour[k].values())
    # Stage 1 captions one picture of each training pair alone (LCS-558K style, one <image>).
    captions = json.loads(paths["pretrain"].read_text())
    assert len(captions) == 120 and all(
        c["conversations"][0]["value"].count("<image>") == 1 for c in captions
    )


def test_video_task_is_balanced_and_one_frame_says_nothing(tmp_path):
    from llava.images.video import probe_video

    paths = generate_video(tmp_path, n_train=80, n_eval=16, frames=8, cells=3)
    train, held_out = json.loads(paths["finetune"].read_text()), _lines(paths["eval"])
    videos = [s for s in train if "video" in s]
    assert len(videos) == 80
    assert collections.Counter(q["answer"] for q in held_out) == {
        d: 4 for d in ("left", "right", "up", "down")
    }
    kinds = set()
    for s in videos + held_out:
        path = paths["videos"].parent / s["video"]
        assert probe_video(path).frames == 8, path
        kinds.add(path.is_dir())
        text = s["text"] if "text" in s else s["conversations"][0]["value"]
        assert "<image>" in text or "text" in s
    assert kinds == {True, False}  # both mp4 files and frames folders
    # Stage-1 frames (one per training clip): every cell of the 3 x 3 grid occurs, each with several
    # directions, so a single frame does not say which way the dot goes.
    cells = collections.defaultdict(set)
    direction = {s["id"].split("-")[1]: s["conversations"][-1]["value"] for s in videos}
    for p in json.loads(paths["pretrain"].read_text()):
        caption = p["conversations"][1]["value"]  # "A red circle in the top left. Row one, column two."
        cells[caption.split(". ")[1]].add(direction[p["id"].split("-")[1]])
    assert len(cells) == 9 and all(len(v) >= 2 for v in cells.values()), cells


@pytest.mark.parametrize("name", ["multi_image", "video"])
def test_task_flags_parse_as_training_arguments(name, tmp_path):
    import transformers

    from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments

    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    task = TASKS[name]
    for flags in (task.stage1_flags, task.stage2_flags):
        parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), *expand(flags, tmp_path)])
    assert task.quick.n_train < task.sizes.n_train and 0 < task.chance < 1


@pytest.mark.slow
def test_quick_multi_image_demo_learns_to_compare(tmp_path, capfd):
    result = main(["--task", "multi_image", "--quick", "--out", str(tmp_path)])
    out = capfd.readouterr().out
    assert result["accuracy"] >= 0.75, f"chance is 50% (Yes/No): {result}"
    assert "held-out accuracy" in out and "chance 50%" in out
    answers = _lines(tmp_path / "eval_answers.jsonl")
    assert len(answers) == TASKS["multi_image"].quick.n_eval


@pytest.mark.slow
def test_quick_video_demo_learns_the_direction(tmp_path, capfd):
    # About 200 s: the tiny LLM tells the direction (not only the axis) after about 1,000 optimizer
    # steps, so the quick run is 2,000 clips x 4 epochs in batches of 8 (79% on 80 held out; the
    # default run, 4,000 clips x 5 epochs, reaches 100% on 200). Chance is 25% (four directions).
    result = main(["--task", "video", "--quick", "--out", str(tmp_path)])
    out = capfd.readouterr().out
    assert result["accuracy"] >= 0.6, f"chance is 25% (four directions): {result}"
    assert "held-out accuracy" in out and "chance 25%" in out
    answers = _lines(tmp_path / "eval_answers.jsonl")
    assert len(answers) == TASKS["video"].quick.n_eval
    assert {a["text"] for a in answers} <= {"Left.", "Right.", "Up.", "Down."}, answers
    cfg = json.loads((tmp_path / "checkpoints" / "tiny-finetune" / "config.json").read_text())
    assert cfg["frames_upbound"] == 8 and cfg["mm_spatial_pool_stride"] == 6, cfg
    assert result["task"] == "video"
    assert set(result["times"]) == {"data + models", "stage 1", "stage 2", "evaluation", "chat"}
