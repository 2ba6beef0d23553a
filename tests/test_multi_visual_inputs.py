"""llava.images.inputs: the pixels of an inference request's images and videos, and their token counts."""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from llava.images import grid
from llava.images.inputs import (
    frames_upbound,
    load_video,
    prepare_visual_list,
    prepare_visuals,
    sample_frames,
    tower_geometry,
    visual_token_counts,
)
from llava.images.process import process_images
from llava.testing.tiny import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

SIDE, CROP = 4, 32  # a 32 px tower with 8 px patches: 4 x 4 patches, 16 tokens per crop
GEOMETRY = {"side": SIDE, "crop_size": CROP, "tokens_per_crop": SIDE * SIDE}


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessor(
        size={"shortest_edge": CROP},
        crop_size={"height": CROP, "width": CROP},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )


def cfg(**kw):
    base = dict(image_aspect_ratio="pad", image_grid_pinpoints=None, mm_patch_merge_type="flat")
    return SimpleNamespace(**{**base, **kw})


def picture(w, h, colour):
    img = Image.new("RGB", (w, h), colour)
    img.paste((255, 255, 255), (0, 0, max(1, w // 3), max(1, h // 3)))  # not uniform, so crops differ
    return img


def frames(n, size=(40, 24)):
    return [picture(*size, (10 * k, 200 - 10 * k, 90)) for k in range(n)]


def test_one_image_follows_the_aspect_ratio_as_process_images(processor):
    img = picture(48, 20, (200, 30, 30))
    for mode in ("square", "pad"):
        pixels, sizes, modalities = prepare_visual_list([img], processor, cfg(image_aspect_ratio=mode))
        assert torch.equal(pixels, process_images([img], processor, cfg(image_aspect_ratio=mode)))
        assert pixels.shape == (1, 3, CROP, CROP) and sizes == [(48, 20)] and modalities == ["image"]
    anyres = cfg(image_aspect_ratio="anyres_max_4", image_grid_pinpoints="(1x1),...,(2x2)")
    pixels, sizes, _ = prepare_visual_list([img], processor, anyres)
    crops = grid.anyres_crop_count((48, 20), "(1x1),...,(2x2)", CROP)
    assert isinstance(pixels, list) and pixels[0].shape == (crops, 3, CROP, CROP) and crops == 3
    assert torch.equal(pixels[0], process_images([img], processor, anyres)[0])


def test_several_images_are_each_padded_whatever_the_mode(processor):
    imgs = [picture(48, 20, (200, 30, 30)), picture(20, 40, (30, 200, 30)), picture(32, 32, (30, 30, 200))]
    padded = process_images(imgs, processor, cfg(image_aspect_ratio="pad"))
    for mode in ("square", "pad", "anyres"):
        c = cfg(image_aspect_ratio=mode, image_grid_pinpoints=[[32, 64], [64, 32]])
        pixels, sizes, modalities = prepare_visual_list(imgs, processor, c)
        assert torch.equal(pixels, padded), mode  # one [N,3,H,W] tensor: the LLaVA-1.5 path
        assert sizes == [(48, 20), (20, 40), (32, 32)] and modalities == ["image"] * 3
    # Not the square mode's pixels: the first image is padded, not centre-cropped.
    assert not torch.equal(
        padded[0], process_images(imgs[:1], processor, cfg(image_aspect_ratio="square"))[0]
    )


def test_a_video_is_its_frames_plainly_preprocessed_in_order_with_images(processor):
    clip = frames(5)
    plain = processor.preprocess(clip, return_tensors="pt")["pixel_values"]
    img_a, img_b = picture(48, 20, (200, 30, 30)), picture(20, 40, (30, 200, 30))
    pixels, sizes, modalities = prepare_visual_list([img_a, clip, img_b], processor, cfg())
    assert modalities == ["image", "video", "image"] and sizes == [(48, 20), (40, 24), (20, 40)]
    assert isinstance(pixels, list) and [tuple(p.shape) for p in pixels] == [
        (3, 32, 32),
        (5, 3, 32, 32),
        (3, 32, 32),
    ]
    assert torch.equal(pixels[1], plain)
    assert torch.equal(pixels[0], process_images([img_a, img_b], processor, cfg())[0])
    # prepare_visuals: the images, then the videos
    p2, s2, m2 = prepare_visuals([img_a, img_b], [clip], processor, cfg())
    assert m2 == ["image", "image", "video"] and torch.equal(p2[2], plain) and s2[2] == (40, 24)
    assert prepare_visual_list([], processor, cfg()) == (None, [], [])


@pytest.mark.parametrize(
    "config",
    [
        cfg(),
        cfg(image_aspect_ratio="anyres", image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]]),
        cfg(
            image_aspect_ratio="anyres",
            image_grid_pinpoints=[[32, 64], [64, 32]],
            mm_patch_merge_type="spatial",
        ),
        cfg(
            image_aspect_ratio="anyres_max_2",
            image_grid_pinpoints="(1x1),...,(3x3)",
            mm_patch_merge_type="spatial_unpad",
        ),
    ],
)
def test_token_counts_follow_the_pixels_and_grid(processor, config):
    for size in ((48, 20), (20, 70), (33, 33), (90, 31)):
        img = picture(*size, (90, 90, 90))
        (count,) = visual_token_counts([img], config, **GEOMETRY)
        pixels, _, _ = prepare_visual_list([img], processor, config)
        crops = 1 if pixels[0].ndim == 3 else pixels[0].shape[0]
        expected = grid.image_feature_tokens(
            size,
            crops=crops,
            merge_type=config.mm_patch_merge_type,
            image_aspect_ratio=config.image_aspect_ratio,
            grid_pinpoints=config.image_grid_pinpoints,
            **GEOMETRY,
        )
        assert count == expected
    # Several images: each one single crop, whatever the mode.
    counts = visual_token_counts([picture(90, 31, (1, 2, 3))] * 3, config, **GEOMETRY)
    assert counts == [16 + int("unpad" in config.mm_patch_merge_type)] * 3


def test_video_tokens_pool_and_newlines_by_the_config():
    clip = frames(6)
    flat = visual_token_counts([clip], cfg(), **GEOMETRY)
    assert flat == [6 * 2 * 2]  # bilinear stride 2 of 4x4 -> 2x2 per frame, no newline with flat
    unpad = cfg(mm_patch_merge_type="spatial_unpad")
    assert visual_token_counts([clip], unpad, **GEOMETRY) == [6 * 4 + 1]  # missing position = one_token
    grid_cfg = cfg(mm_patch_merge_type="spatial_unpad", mm_newline_position="grid", mm_spatial_pool_stride=1)
    assert visual_token_counts([clip, picture(8, 8, (0, 0, 0))], grid_cfg, **GEOMETRY) == [6 * 16 + 6 * 4, 17]


def test_tower_geometry_reads_the_tower():
    tower = SimpleNamespace(num_patches_per_side=24, image_size=336, num_image_tokens=576, num_patches=576)
    assert tower_geometry(tower) == {"side": 24, "crop_size": 336, "tokens_per_crop": 576}


def test_frames_of_a_video_file_and_folder_are_sampled_by_frames_upbound(tmp_path):
    from llava.images.video import write_frame_folder, write_video

    clip = [Image.new("RGB", (32, 24), (20 * k, 100, 200 - 20 * k)) for k in range(10)]
    video = write_video(clip, tmp_path / "clip.mp4", fps=1)
    folder = write_frame_folder(clip, tmp_path / "frames")
    assert frames_upbound(SimpleNamespace()) == 32 and frames_upbound(SimpleNamespace(frames_upbound=0)) == 0
    assert sample_frames(10, SimpleNamespace()) == list(range(10))  # 10 <= 32: every frame
    assert sample_frames(10, SimpleNamespace(frames_upbound=4)) == [0, 3, 6, 9]
    assert sample_frames(3, SimpleNamespace(frames_upbound=4, force_sample=True)) == [0, 0, 1, 2]
    for path in (video, folder):
        got = load_video(path, SimpleNamespace(frames_upbound=4))
        assert len(got) == 4 and got[0].size == (32, 24)
        # frame 3 is the fourth colour (within codec tolerance for the mp4)
        assert abs(got[1].getpixel((16, 12))[0] - 60) <= 8, path
    with pytest.raises(ValueError, match="nope.mp4"):
        load_video(tmp_path / "nope.mp4", SimpleNamespace())
