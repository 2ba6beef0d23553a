"""llava.data.validate on LLaVA-NeXT / OneVision data: several interleaved images, anyres images, video
files and frames folders. Its token counts are the dataset's in every image mode, every broken image or
video is found and named, a video too long for --model_max_length is "cut_fails", and the flags of a
training command make the SampleFormat training builds."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from llava.data.dataset import BadSampleError, LazySupervisedDataset
from llava.data.sample_format import SampleFormat
from llava.data.tools.synthetic_video import make_moving_dot_folder, make_moving_dot_video
from llava.data.tools.validate import main, parse_args, validate
from llava.data.tools.visual_check import sample_format_from_flags
from llava.data.visuals import num_visuals
from llava.train.arguments import DataArguments

SIDE, TOKENS = 4, 16  # the tiny kit's CLIP tower: 32 px crops of 8 px patches


def _sample(sid, question="<image>\nWhat is it?", answer="A red dot.", **visual):
    return {"id": sid, **visual, "conversations": [{"from": "human", "value": question},
                                                   {"from": "gpt", "value": answer}]}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Images (square, wide, tall, broken) and videos (files, frames folders, broken ones)."""
    root = tmp_path_factory.mktemp("visuals")
    images, videos = root / "images", root / "videos"
    images.mkdir()
    for name, size in (("sq.png", (20, 16)), ("wide.png", (64, 24)), ("tall.png", (30, 70))):
        Image.new("RGB", size, "red").save(images / name)
    (images / "garbage.png").write_bytes(b"no picture here")
    make_moving_dot_video(videos / "clip.mp4", "left", frames=8, size=32)
    make_moving_dot_folder(videos / "frames", "up", frames=6, size=32)
    make_moving_dot_video(videos / "long.mp4", "down", frames=40, size=32)
    data = (videos / "clip.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])  # its index intact, frames gone
    (videos / "text.mp4").write_text("not a video")
    Image.new("RGB", (32, 32)).save(videos / "still.png")
    _audio_only(videos / "audio.wav")
    (videos / "empty").mkdir()
    bad = make_moving_dot_folder(videos / "bad_frame", "left", frames=4, size=32)
    (bad / "frame_00002.png").write_bytes(b"broken")
    return root, images, videos


def _audio_only(path):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


GOOD = [
    _sample("text", "Hello there", "Hi!"),
    _sample("square", image="sq.png"),
    _sample("wide", "Describe it.\n<image>", image="wide.png"),
    _sample(
        "interleaved",
        "Compare <image> with <image>.\nAnd this one: <image>?",
        "They differ.",
        image=["sq.png", "wide.png", "tall.png"],
    ),  # fmt: skip
    {
        "id": "later-turn",
        "image": ["tall.png", "sq.png"],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "Tall."},
            {"from": "human", "value": "And <image>?"},
            {"from": "gpt", "value": "Square."},
        ],
    },  # fmt: skip
    _sample("video", "<image>\nWhich way does the dot move?", "Left.", video="clip.mp4"),
    _sample("frames", "Which way?\n<image>", "Up.", video="frames"),
]
# (flags as a training command gives them, the format's fields). The tiny tower: crop 32, patch 8.
MODES = {
    "pad": ["--image_aspect_ratio", "pad"],
    "anyres_max": ["--image_aspect_ratio", "anyres_max_1", "--image_grid_pinpoints", "(1x1),...,(2x2)",
                   "--mm_patch_merge_type", "spatial_unpad", "--mm_newline_position", "grid"],
    "anyres_spatial": ["--image_aspect_ratio", "anyres", "--image_grid_pinpoints", "[(32, 64), (64, 32), (64, 64)]",
                       "--mm_patch_merge_type", "spatial", "--mm_newline_position", "frame",
                       "--mm_spatial_pool_mode", "average", "--frames_upbound", "4"],
}  # fmt: skip


def _format(mode, processor, max_len=4096):
    flags = ["--data_path", "unused.json", "--model_max_length", str(max_len), "--image_crop_size", "32",
             "--patch_size", "8", *MODES[mode]]  # fmt: skip
    from_flags = sample_format_from_flags(parse_args(flags))
    by_hand = dict(image_aspect_ratio="pad", image_grid_pinpoints=None, mm_patch_merge_type="flat",
                   mm_newline_position="grid", mm_spatial_pool_mode="bilinear", frames_upbound=0)  # fmt: skip
    if mode != "pad":
        by_hand.update(image_aspect_ratio=MODES[mode][1], image_grid_pinpoints=MODES[mode][3],
                       mm_patch_merge_type=MODES[mode][5], mm_newline_position=MODES[mode][7])  # fmt: skip
    if mode == "anyres_spatial":
        by_hand.update(mm_spatial_pool_mode="average", frames_upbound=4)
    fmt = SampleFormat("v1", max_len, is_multimodal=True, num_image_tokens=TOKENS, patches_per_side=SIDE,
                       crop_size=32, image_processor=processor, **by_hand)  # fmt: skip
    assert from_flags == fmt  # the flags make this format (the processor aside)
    return fmt


def _dataset(samples, root, images, videos, tokenizer, fmt, name="data.json"):
    path = root / name
    path.write_text(json.dumps(samples))
    args = DataArguments(data_path=str(path), image_folder=str(images), video_folder=str(videos),
                         lengths_cache_dir=str(root / "cache"))  # fmt: skip
    return LazySupervisedDataset(str(path), tokenizer, args, fmt)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_token_counts_are_the_datasets_lengths(files, llama2_tokenizer, kit_processor, mode):
    root, images, videos = files
    fmt = _format(mode, kit_processor)
    report = validate(
        GOOD, images, llama2_tokenizer, image_check="decode", video_folder=videos, sample_format=fmt
    )
    assert report.num_errors == 0 and not report.problems, report.summary()
    assert report.modalities == {"text": 1, "image": 2, "multi_image": 2, "video": 2}
    ds = _dataset(GOOD, root, images, videos, llama2_tokenizer, fmt, f"{mode}.json")
    assert report.token_counts == dict(enumerate(ds.lengths))
    for i, sample in enumerate(GOOD):  # the items training loads say the same
        item = ds[i]
        assert item["length"] == ds.lengths[i], sample["id"]
        assert len(item["images"]) == max(1, num_visuals(sample))  # one tensor per visual (text: a stand-in)
    visual = {
        s["id"]: report.token_counts[i] - ds.budget.split(ds[i]["input_ids"])[0] for i, s in enumerate(GOOD)
    }
    if mode == "pad":  # by hand: 16 per image; a frame pooled 4x4 -> 2x2, no newlines (flat)
        assert visual == {"text": 0, "square": 16, "wide": 16, "interleaved": 48, "later-turn": 32,
                          "video": 8 * 4, "frames": 6 * 4}  # fmt: skip
    elif mode == "anyres_max":  # every video frame: 2x2 pooled + a newline per row; several images: 16 + 1
        assert visual["video"] == 8 * 6 and visual["frames"] == 6 * 6 and visual["interleaved"] == 3 * 17
        # sq 20x16: 1 tile, its 4x4 map unpadded, + a newline per row; wide 64x24: 2x1 tiles, the 4x8 map
        # over anyres_max_1's budget, so downscaled by sqrt(2) to 2x5, + newlines
        assert visual["square"] == 16 + 4 * 5 and visual["wide"] == 16 + 2 * 6
    else:  # average pooling 2x2, one newline per frame, 4 frames at most
        assert visual["video"] == visual["frames"] == 4 * 5 and visual["interleaved"] == 48
        assert visual["wide"] == 16 * 3  # base + 2 tiles of (64, 32): spatial keeps them whole


BAD = [
    _sample("both", image="sq.png", video="clip.mp4"),
    _sample("empty-list", image=[]),
    _sample("video-two-markers", "<image> then <image>", video="clip.mp4"),
    _sample("multi-mismatch", "<image> and <image>", image=["sq.png", "wide.png", "tall.png"]),
    _sample("multi-missing", "<image> and <image>", image=["sq.png", "nope.png"]),
    _sample("multi-corrupt", "<image> and <image>", image=["garbage.png", "sq.png"]),
    _sample("video-missing", video="absent.mp4"),
    _sample("video-text", video="text.mp4"),
    _sample("video-audio", video="audio.wav"),
    _sample("video-still", video="still.png"),
    _sample("video-no-frames", video="empty"),
    _sample("video-bad-frame", video="bad_frame"),
    _sample("video-truncated", video="truncated.mp4"),
    _sample("fine", video="clip.mp4"),
]


def _ids(report, category):
    return [p.sample_id for p in report.problems.get(category, [])]


def test_every_broken_image_and_video_is_found_and_named(files, llama2_tokenizer, kit_processor):
    _, images, videos = files
    fmt = _format("pad", kit_processor)
    report = validate(BAD, images, llama2_tokenizer, video_folder=videos, sample_format=fmt)
    assert _ids(report, "schema") == ["both", "empty-list"]
    assert _ids(report, "image_token_mismatch") == ["video-two-markers", "multi-mismatch"]
    assert _ids(report, "missing_image") == ["multi-missing"]
    assert _ids(report, "corrupt_image") == ["multi-corrupt"]
    assert _ids(report, "missing_video") == ["video-missing"]
    assert _ids(report, "corrupt_video") == ["video-text", "video-audio", "video-still", "video-no-frames",
                                             "video-bad-frame"]  # fmt: skip
    msgs = {p.sample_id: p.message for probs in report.problems.values() for p in probs}
    assert "has both 'image' and 'video'" in msgs["both"]
    assert "2 <image> marker(s) for 1 video" in msgs["video-two-markers"]
    assert "2 <image> marker(s) for 3 image(s)" in msgs["multi-mismatch"]
    assert f"{images / 'nope.png'} not found" in msgs["multi-missing"]
    assert "garbage.png cannot be read" in msgs["multi-corrupt"]
    assert f"{videos / 'absent.mp4'} not found (check --video_folder" in msgs["video-missing"]
    assert "not a video FFmpeg can read" in msgs["video-text"]
    assert "no video stream" in msgs["video-audio"] and "a still image" in msgs["video-still"]
    assert "no frame images" in msgs["video-no-frames"] and "frame_00002.png" in msgs["video-bad-frame"]
    assert {BAD[i]["id"] for i in report.bad_indices} == {s["id"] for s in BAD} - {"fine", "video-truncated"}
    # a video whose frames do not decode is found by decoding them, as training would
    decoded = validate(
        BAD, images, llama2_tokenizer, image_check="decode", video_folder=videos, sample_format=fmt
    )
    assert _ids(decoded, "corrupt_video")[-1] == "video-truncated"
    assert "does not decode" in decoded.problems["corrupt_video"][-1].message
    # without --video_folder, videos are looked for under --image_folder, as the dataset does
    lost = validate(BAD[-1:], images, None, image_check="exists", sample_format=fmt)
    assert _ids(lost, "missing_video") == ["fine"]


def test_a_video_too_long_for_the_budget_is_cut_fails(files, llama2_tokenizer, kit_processor, capsys):
    root, images, videos = files
    samples = [_sample("long-video", "<image>\nWhich way?", "Down.", video="long.mp4"), GOOD[1]]
    fmt = _format("pad", kit_processor, max_len=128)  # 40 frames x 4 tokens = 160
    report = validate(
        samples, images, llama2_tokenizer, video_folder=videos, allow_too_long=True, sample_format=fmt
    )
    assert _ids(report, "cut_fails") == ["long-video"] and report.bad_indices == {0}
    message = report.problems["cut_fails"][0].message
    assert "a video of 40 frames, 40 sampled (--frames_upbound 0): 160 tokens" in message
    assert "> --model_max_length 128" in message and "lower --frames_upbound" in message
    with pytest.raises(BadSampleError, match="'long-video'.*lower --frames_upbound"):  # training agrees
        _dataset(samples, root, images, videos, llama2_tokenizer, fmt, "long.json").prepare()
    from tests.conftest import FIXTURES

    flags = ["--data_path", str(root / "long.json"), "--image_folder", str(images), "--video_folder", str(videos),
             "--model_name_or_path", str(FIXTURES / "tokenizers" / "llama2"), "--model_max_length", "128",
             "--image_crop_size", "32", "--patch_size", "8", "--image_aspect_ratio", "pad"]  # fmt: skip
    assert main(flags) == 1
    out = capsys.readouterr().out
    assert "cut_fails                     1" in out and "by modality: image 1, video 1" in out
    assert main([*flags, "--frames_upbound", "8"]) == 0  # 8 frames x 4 tokens fit
    assert "2 samples: 2 usable, 0 with errors" in capsys.readouterr().out


def test_training_flags_make_trainings_sample_format(tiny_kit, tmp_path):
    import transformers

    from llava.train.arguments import ModelArguments, TrainingArguments
    from llava.train.model_setup import build_model_and_tokenizer

    shared = ["--version", "v1", "--model_max_length", "300", "--vision_tower", str(tiny_kit.vision),
              "--image_aspect_ratio", "anyres_max_4", "--image_grid_pinpoints", "(1x1),...,(2x2)",
              "--mm_patch_merge_type", "spatial_unpad", "--mm_newline_position", "frame",
              "--mm_spatial_pool_stride", "2", "--mm_spatial_pool_mode", "max", "--frames_upbound", "4",
              "--video_fps", "2", "--force_sample", "True", "--mm_use_im_start_end", "False"]  # fmt: skip
    train = ["--model_name_or_path", str(tiny_kit.llm), "--data_path", "x.json", "--output_dir", str(tmp_path),
             "--report_to", "none", *shared]  # fmt: skip
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model, tokenizer, template = build_model_and_tokenizer(*parser.parse_args_into_dataclasses(args=train))
    trained = SampleFormat.for_model(model, tokenizer, template)
    validated = sample_format_from_flags(parse_args(["--data_path", "x.json", *shared]))
    assert validated == trained
    assert (validated.crop_size, validated.patches_per_side, validated.num_image_tokens) == (32, SIDE, TOKENS)
    assert dataclasses.replace(validated, force_sample=False) != trained  # the comparison sees the fields


def test_bad_flags_are_named(tiny_kit):
    def fmt(*flags):
        return sample_format_from_flags(parse_args(["--data_path", "x.json", *flags]))

    with pytest.raises(ValueError, match="--image_grid_pinpoints: anyres images need image_grid_pinpoints"):
        fmt("--image_aspect_ratio", "anyres_max_9")
    with pytest.raises(ValueError, match="--mm_newline_position: unknown mm_newline_position 'row'"):
        fmt("--mm_newline_position", "row")
    with pytest.raises(ValueError, match="--vision_tower or --image_crop_size/--patch_size, not both"):
        fmt("--vision_tower", str(tiny_kit.vision), "--patch_size", "8")
    with pytest.raises(ValueError, match="--num_image_tokens 576 but the tower .* gives 16"):
        fmt("--vision_tower", str(tiny_kit.vision), "--num_image_tokens", "576")
    assert fmt().num_image_tokens == 576 and fmt().patches_per_side == 24  # CLIP ViT-L/14-336
    assert fmt("--num_image_tokens", "16").patches_per_side == 4  # the old flag alone, as before


def test_shared_flags_have_trainings_defaults():
    from llava.train.arguments import VIDEO_TRAINING_DEFAULTS, ModelArguments, TrainingArguments

    trained = {f.name: f.default for cls in (ModelArguments, DataArguments) for f in dataclasses.fields(cls)}
    trained["model_max_length"] = next(f.default for f in dataclasses.fields(TrainingArguments)
                                       if f.name == "model_max_length")  # fmt: skip
    defaults = vars(parse_args(["--data_path", "x.json"]))
    # on purpose: v1 is what v0 trains with; 2048 is LLaVA-1.5's (training's 512 is transformers'); a
    # tokenizer is optional here; --data_path is required
    # the video flags: training's None keeps a checkpoint's value, else LLaVA-NeXT's new-model defaults,
    # which the validator (no checkpoint) takes
    differ = {"version", "model_max_length", "model_name_or_path", "data_path", "mm_newline_position",
              "mm_spatial_pool_stride", "mm_spatial_pool_mode"}  # fmt: skip
    assert {k: defaults[k] for k in ("mm_newline_position", "mm_spatial_pool_stride", "mm_spatial_pool_mode")} == (
        VIDEO_TRAINING_DEFAULTS
    )
    shared = sorted(set(defaults) & set(trained) - differ)
    assert len(shared) >= 11, shared
    assert {k: defaults[k] for k in shared} == {k: trained[k] for k in shared}
