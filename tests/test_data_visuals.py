"""The LLaVA-NeXT / OneVision data model end to end on the data side: samples with no image, one, several
interleaved images or a video become items whose pixels, modalities and `length` are exactly what the
model splices in, in every image mode; bad visuals are errors naming the sample."""

import json

import pytest
import torch
from PIL import Image

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.dataset import BadSampleError, LazySupervisedDataset
from llava.data.sample_format import SampleFormat
from llava.train.arguments import DataArguments


def _write_frames(folder, n, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.new("RGB", size, (20 * k % 255, 100, 200 - 10 * k)).save(folder / f"f{k:03d}.png")


def _write_mp4(path, n, size=(48, 32)):
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(n):
            frame = np.full((size[1], size[0], 3), (30 * k) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _turns(human, reply="It is fine."):
    return [{"from": "human", "value": human}, {"from": "gpt", "value": reply}]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    for name, size in (("wide.png", (50, 20)), ("tall.png", (20, 70)), ("sq.png", (32, 32)), ("odd.png", (77, 41))):
        Image.new("RGB", size, "red").save(root / name)
    _write_frames(root / "clip_frames", 6)
    _write_mp4(root / "clip.mp4", 10)
    samples = [
        {"id": "text", "conversations": _turns("Say hi.")},
        {"id": "one-wide", "image": "wide.png", "conversations": _turns("What is it? <image>")},
        {"id": "one-tall", "image": ["tall.png"], "conversations": _turns("<image>\nDescribe.")},
        {"id": "odd", "image": "odd.png", "conversations": _turns("<image>\nDescribe.")},
        {"id": "three", "image": ["wide.png", "sq.png", "tall.png"],
         "conversations": _turns("First <image>, then <image>; last <image>. Same colour?", "Yes.")},
        {"id": "frames", "video": "clip_frames", "conversations": _turns("<image>\nWhich way does it move?")},
        {"id": "mp4", "video": "clip.mp4", "conversations": _turns("<image>\nWhat happens?")},
    ]  # fmt: skip
    return root, samples


MODES = {
    "square-flat": dict(aspect="square", merge="flat"),
    "pad-unpad": dict(aspect="pad", merge="spatial_unpad"),
    "anyres-unpad": dict(aspect="anyres", merge="spatial_unpad", pinpoints=[[32, 64], [64, 32], [64, 64]]),
    "anyres-spatial": dict(aspect="anyres", merge="spatial", pinpoints=[[32, 64], [64, 32], [64, 64]]),
    "anyres_max_2": dict(aspect="anyres_max_2", merge="spatial_unpad", pinpoints="(1x1),...,(3x3)"),
    "video-grid-avg": dict(aspect="pad", merge="spatial_unpad", newline="grid", pool="average"),
    "video-frame": dict(aspect="pad", merge="spatial_unpad", newline="frame", pool="bilinear"),
    "video-no-token": dict(aspect="anyres", merge="spatial_unpad", newline="no_token", pool="max",
                           pinpoints=[[32, 64], [64, 32]], frames_upbound=4),
}  # fmt: skip


def _model_and_format(tiny_kit, tokenizer, processor, mode, max_length=4096):
    from llava.testing.tiny import build_tiny_llava

    m = MODES[mode]
    model = build_tiny_llava(
        tiny_kit,
        mm_patch_merge_type=m["merge"],
        mm_newline_position=m.get("newline", "one_token"),
        mm_spatial_pool_mode=m.get("pool", "bilinear"),
        mm_spatial_pool_stride=2,
        projector_scale=5.0,
    )
    cfg = model.config
    cfg.image_aspect_ratio, cfg.image_grid_pinpoints = m["aspect"], m.get("pinpoints")
    cfg.frames_upbound, cfg.video_fps = m.get("frames_upbound", 0), 1
    tokenizer.model_max_length = max_length
    return model, SampleFormat.for_model(model, tokenizer, "v1", image_processor=processor)


def _dataset(root, samples, tokenizer, fmt, tmp_path, **data):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    args = DataArguments(data_path=str(path), image_folder=str(root), lengths_cache_dir=str(tmp_path / "c"), **data)
    return LazySupervisedDataset(str(path), tokenizer, args, fmt)


@pytest.mark.parametrize("mode", list(MODES))
def test_item_lengths_equal_what_the_model_splices_in(tiny_kit, kit_tokenizer, kit_processor, media, tmp_path, mode):
    root, samples = media
    model, fmt = _model_and_format(tiny_kit, kit_tokenizer, kit_processor, mode)
    ds = _dataset(root, samples, kit_tokenizer, fmt, tmp_path)
    ds.prepare()
    lengths = ds.lengths
    collate = DataCollatorForSupervisedDataset(tokenizer=kit_tokenizer, sample_format=fmt)
    items = [ds[i] for i in range(len(ds))]
    for i, item in enumerate(items):
        assert item["length"] == lengths[i], samples[i]["id"]
        batch = collate([item])
        with torch.no_grad():
            _, _, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
                batch["input_ids"], None, batch["attention_mask"], None, batch["labels"], batch["images"],
                batch.get("image_sizes"), modalities=batch.get("modalities"),
            )  # fmt: skip
        spliced = embeds.shape[1] if mask is None else int(mask.sum())
        assert spliced == lengths[i], (samples[i]["id"], spliced, lengths[i])
        assert int((labels != IGNORE_INDEX).sum()) == int((item["labels"] != IGNORE_INDEX).sum())
    # one padded batch of everything: the model takes the whole mixture at once
    batch = collate(items)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)
    # unprepared (per-sample tokenising) items agree with the cached ones
    lazy = _dataset(root, samples, kit_tokenizer, fmt, tmp_path)
    for i in (1, 4, 5, 6):
        assert lazy[i]["length"] == items[i]["length"] and torch.equal(lazy[i]["input_ids"], items[i]["input_ids"])


def test_pixels_per_visual_follow_the_onevision_rules(tiny_kit, kit_tokenizer, kit_processor, media, tmp_path):
    root, samples = media
    _, fmt = _model_and_format(tiny_kit, kit_tokenizer, kit_processor, "anyres-unpad")
    ds = _dataset(root, samples, kit_tokenizer, fmt, tmp_path)
    items = {s["id"]: ds[i] for i, s in enumerate(samples)}
    assert items["text"]["images"][0].count_nonzero() == 0 and items["text"]["modalities"] == ["image"]
    wide = items["one-wide"]
    assert wide["images"][0].shape == (3, 3, 32, 32)  # one image: anyres (base + 2 tiles of 64x32)
    assert wide["image_sizes"] == [(50, 20)]
    three = items["three"]  # several images: each padded at base resolution
    assert [x.shape for x in three["images"]] == [(3, 32, 32)] * 3
    assert three["image_sizes"] == [(50, 20), (32, 32), (20, 70)] and three["modalities"] == ["image"] * 3
    ids = three["input_ids"].tolist()
    assert ids.count(IMAGE_TOKEN_INDEX) == 3  # the markers stayed interleaved with the text
    assert items["frames"]["images"][0].shape == (6, 3, 32, 32) and items["frames"]["modalities"] == ["video"]
    # 10 frames at 4 fps, one frame per second taken (--video_fps 1, as LLaVA-NeXT): frames 0, 4, 8
    assert items["mp4"]["images"][0].shape == (3, 3, 32, 32) and items["mp4"]["image_sizes"] == [(48, 32)]
    batch = DataCollatorForSupervisedDataset(tokenizer=kit_tokenizer, sample_format=fmt)(list(items.values()))
    assert isinstance(batch["images"], list) and len(batch["images"]) == 1 + 1 + 1 + 1 + 3 + 1 + 1
    assert batch["modalities"] == ["image"] * 7 + ["video"] * 2


def test_frames_upbound_samples_uniformly_and_a_long_video_is_an_error(
    tiny_kit, kit_tokenizer, kit_processor, media, tmp_path
):
    root, samples = media
    _, fmt = _model_and_format(tiny_kit, kit_tokenizer, kit_processor, "video-no-token")
    ds = _dataset(root, samples, kit_tokenizer, fmt, tmp_path)
    assert ds[5]["images"][0].shape[0] == 4  # a folder of 6 frames, --frames_upbound 4: 4 taken uniformly
    assert ds[6]["images"][0].shape[0] == 3  # 10 frames at 4 fps: 3 at 1 fps, under the bound
    # 6 frames x 6 tokens (2x2 pooled + a newline per row) do not fit next to the text: an error at the
    # sample, not a cut through a frame
    _, fmt = _model_and_format(tiny_kit, kit_tokenizer, kit_processor, "video-grid-avg", max_length=40)
    ds = _dataset(root, [samples[5]], kit_tokenizer, fmt, tmp_path)
    with pytest.raises(BadSampleError, match=r"'frames'.*visual\(s\) take 36 tokens.*--frames_upbound"):
        ds.prepare()


def test_bad_visuals_name_the_sample(tiny_kit, kit_tokenizer, kit_processor, media, tmp_path):
    root, samples = media
    (root / "broken.mp4").write_bytes(b"not a video at all")
    bad = [
        {"id": "count", "image": ["wide.png", "sq.png"], "conversations": _turns("<image> only one")},
        {"id": "missing", "image": ["wide.png", "nope.png"], "conversations": _turns("<image> <image>")},
        {"id": "both", "image": "wide.png", "video": "clip.mp4", "conversations": _turns("<image>")},
        {"id": "novideo", "video": "gone.mp4", "conversations": _turns("<image>\nWhat?")},
        {"id": "broken", "video": "broken.mp4", "conversations": _turns("<image>\nWhat?")},
        {"id": "empty", "image": [], "conversations": _turns("Hi")},
    ]
    _, fmt = _model_and_format(tiny_kit, kit_tokenizer, kit_processor, "pad-unpad")
    ds = _dataset(root, bad + samples[:2], kit_tokenizer, fmt, tmp_path)
    with pytest.raises(BadSampleError) as err:
        ds.prepare()
    message = str(err.value)
    assert "6 of 8 samples" in message
    for sid, why in (("count", "2 image"), ("missing", "nope.png not found"), ("both", "both 'image' and 'video'"),
                     ("novideo", "gone.mp4"), ("broken", "broken.mp4"), ("empty", "empty list")):  # fmt: skip
        assert f"sample {sid!r}" in message and why in message, (sid, message)
    skipping = _dataset(root, bad + samples[:2], kit_tokenizer, fmt, tmp_path, skip_bad_samples=True)
    assert len(skipping.lengths) == 2


@pytest.mark.parametrize("mode", ["anyres_max_2", "video-grid-avg"])
def test_a_packed_mixture_trains_as_the_padded_batch(tiny_kit, kit_tokenizer, kit_processor, media, tmp_path, mode):
    """--packing with anyres, several images and a video: rows planned from the exact lengths, and the
    packed batch's loss equals the padded batch's (every visual spliced where its placeholder is)."""
    from llava.data.packing import collate_packed

    root, samples = media
    model, fmt = _model_and_format(tiny_kit, kit_tokenizer, kit_processor, mode)
    ds = _dataset(root, samples, kit_tokenizer, fmt, tmp_path)
    items = [ds[i] for i in range(len(ds))]
    capacity = 2 * max(ds.lengths)
    packed = collate_packed(items, kit_tokenizer.pad_token_id, capacity)
    assert packed["input_ids"].shape[0] < len(items)  # several samples share rows
    padded = DataCollatorForSupervisedDataset(tokenizer=kit_tokenizer, sample_format=fmt)(items)
    with torch.no_grad():
        a, b = model(**padded).loss, model(**packed).loss
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("packing", [False, True])
def test_train_on_the_mixture_through_train(tiny_kit, media, tmp_path, packing):
    """train() on text, one anyres_max image, interleaved images and videos; the video and image settings
    reach config.json (serving samples frames as training did) and the loss goes down."""
    from transformers import TrainerCallback

    from llava.train.train import train

    root, samples = media
    data = tmp_path / "mix.json"
    data.write_text(json.dumps(samples * 2))
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    out = tmp_path / "out"
    argv = (
        f"--model_name_or_path {tiny_kit.llm} --version v1 --data_path {data} --image_folder {root} "
        f"--vision_tower {tiny_kit.vision} --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 "
        "--mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio anyres_max_2 "
        "--image_grid_pinpoints (1x1),...,(3x3) --mm_patch_merge_type spatial_unpad --mm_newline_position grid "
        "--frames_upbound 4 --group_by_modality_length True "
        f"--packing {packing} --output_dir {out} --per_device_train_batch_size 7 --learning_rate 3e-3 "
        "--weight_decay 0. --max_steps 6 --logging_steps 1 --report_to none --model_max_length 1024 "
        "--dataloader_num_workers 0 --save_strategy no"
    ).split()
    train(argv=argv, callbacks=[Losses()])
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["image_aspect_ratio"], cfg["mm_newline_position"], cfg["frames_upbound"]) == ("anyres_max_2", "grid", 4)
    assert len(losses) == 6 and losses[-1] < losses[0], losses


def test_video_flags_keep_the_checkpoint_s_values_unless_given():
    """Fine-tuning a OneVision checkpoint (one_token) without the flag keeps one_token; a new model gets
    LLaVA-NeXT's training default (grid); a given flag wins."""
    from types import SimpleNamespace

    from llava.train.arguments import ModelArguments
    from llava.train.model_setup import _with_video_defaults

    onevision = SimpleNamespace(mm_newline_position="one_token", mm_spatial_pool_stride=2, mm_spatial_pool_mode="bilinear")
    assert _with_video_defaults(ModelArguments(), onevision).mm_newline_position == "one_token"
    new = _with_video_defaults(ModelArguments(), SimpleNamespace())
    assert (new.mm_newline_position, new.mm_spatial_pool_stride, new.mm_spatial_pool_mode) == ("grid", 2, "bilinear")
    given = ModelArguments(mm_newline_position="frame")
    assert _with_video_defaults(given, onevision).mm_newline_position == "frame"
    assert given.mm_newline_position == "frame" and ModelArguments().mm_newline_position is None  # not edited
