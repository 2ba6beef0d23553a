"""llava.images.grid: the token counts of every image mode, checked against the rows the model splices in.

The counts here are what the data side's length budget and serving's context check use; if they drift
from the model's merge, training cuts samples in the wrong place. Each count test runs
prepare_inputs_labels_for_multimodal on a tiny model (tower: 40 px, 8 px patches, 5x5 patches per crop)
with images of many odd sizes and compares each sample's length.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.images import grid
from llava.images.process import get_anyres_image_grid_shape, process_images
from tests.model_helpers import build_tiny_llava, configured

SIZES = [(40, 40), (41, 97), (97, 41), (300, 45), (45, 300), (123, 77), (500, 130), (239, 241), (7, 60)]
GRID = "(1x1),...,(6x6)"
PAD = SimpleNamespace(image_aspect_ratio="pad")  # how the images of a multi-image sample are made
LIST_PINPOINTS = [[40, 80], [80, 40], [80, 80], [120, 40], [40, 120], [120, 120]]


# ------------------------------------------------------------------------------ pure functions
def test_parse_grid_pinpoints_three_forms():
    assert grid.parse_grid_pinpoints([[336, 672], [672, 336]]) == [(336, 672), (672, 336)]
    assert grid.parse_grid_pinpoints("[(336, 672), (672, 336)]") == [(336, 672), (672, 336)]
    cells = grid.parse_grid_pinpoints("(1x1),...,(3x2)", crop_size=384)
    assert cells == [(384 * i, 384 * j) for i in (1, 2, 3) for j in (1, 2)]
    assert len(grid.parse_grid_pinpoints(GRID, 40)) == 36
    with pytest.raises(ValueError, match="needs the tower's crop size"):
        grid.parse_grid_pinpoints(GRID)
    for bad in (None, "", "[(1, 2, 3)]", "[[0, 4]]", "nonsense", []):
        with pytest.raises(ValueError, match="image_grid_pinpoints"):
            grid.parse_grid_pinpoints(bad, 40)


def test_aspect_ratio_names():
    assert grid.anyres_max_crops("anyres_max_9") == 9 and grid.anyres_max_crops("anyres_max_1") == 1
    assert grid.anyres_max_crops("anyres") is None and grid.anyres_max_crops(None) is None
    assert grid.is_anyres("anyres") and grid.is_anyres("anyres_max_4") and not grid.is_anyres("pad")
    for ok in (None, "square", "pad", "anyres", "anyres_max_12"):
        grid.check_image_aspect_ratio(ok)
    for bad in ("anyres_max_0", "anyres_max_x", "anyres_max_"):
        with pytest.raises(ValueError, match="anyres_max_N needs a whole number"):
            grid.check_image_aspect_ratio(bad)
    with pytest.raises(ValueError, match="unknown image_aspect_ratio 'crop'; valid: square, pad, anyres"):
        grid.check_image_aspect_ratio("crop")


def test_pooled_side_and_unknown_values():
    assert [grid.pooled_side(5, s, "bilinear") for s in (1, 2, 3)] == [5, 3, 2]
    assert [grid.pooled_side(5, s, m) for s in (1, 2, 3) for m in ("average", "max")] == [5, 5, 2, 2, 1, 1]
    assert grid.pooled_side(24, 2, "bilinear") == 12 == grid.pooled_side(24, 2, "average")
    with pytest.raises(ValueError, match="valid: average, bilinear, max"):
        grid.pooled_side(5, 2, "mean")
    with pytest.raises(ValueError, match="larger than the tower's 5 patches"):
        grid.pooled_side(5, 6, "average")
    with pytest.raises(ValueError, match="valid: grid, frame, one_token, no_token"):
        grid.video_feature_tokens(
            2, side=5, stride=2, pool_mode="max", newline_position="row", merge_type=None
        )
    with pytest.raises(ValueError, match="valid: flat, spatial, spatial_unpad"):
        grid.image_feature_tokens((9, 9), crops=1, merge_type="spatial_pad", image_aspect_ratio=None,
                                  grid_pinpoints=None, side=5, crop_size=40, tokens_per_crop=25)  # fmt: skip


def test_video_settings_defaults_and_counts():
    assert grid.video_settings(SimpleNamespace()) == dict(
        stride=2, pool_mode="bilinear", newline_position="one_token", merge_type="flat"
    )
    # LLaVA-Video-7B: 24x24 patches, 32 frames, bilinear stride 2, a newline after every row.
    cfg = SimpleNamespace(mm_patch_merge_type="spatial_unpad", mm_newline_position="grid")
    assert grid.video_feature_tokens(32, side=24, **grid.video_settings(cfg)) == 32 * 12 * 13
    # OneVision: one newline after the whole video.
    assert grid.video_feature_tokens(32, side=27, stride=2, pool_mode="bilinear", newline_position="one_token",
                                     merge_type="spatial_unpad") == 32 * 14 * 14 + 1  # fmt: skip


def test_onevision_anyres_max_9_count():
    """A 2000x1500 image under OneVision's settings (SigLIP 384 px, 27x27 patches, anyres_max_9 over
    "(1x1),...,(6x6)"): a 6x4 grid's 162x108 map, unpadded to 144x108, shrunk to 93x70 (+70 newlines)."""
    assert grid.anyres_grid_shape((2000, 1500), GRID, 384) == (6, 4)
    assert grid.unpadded_shape((2000, 1500), 4 * 27, 6 * 27) == (108, 144)
    assert grid.anyres_max_shape(108, 144, 9, 27) == (70, 93)
    n = grid.image_feature_tokens((2000, 1500), crops=25, merge_type="spatial_unpad",
                                  image_aspect_ratio="anyres_max_9", grid_pinpoints=GRID, side=27,
                                  crop_size=384, tokens_per_crop=729)  # fmt: skip
    assert n == 729 + 70 * 94
    assert get_anyres_image_grid_shape((2000, 1500), GRID, 384) == (6, 4)


def test_counts_agree_with_transformers_onevision_processor():
    """transformers' LlavaOnevisionProcessor counts the same rows (its own implementation)."""
    import functools

    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor as P

    if not hasattr(P, "_get_number_of_features"):
        pytest.skip("this transformers has no LlavaOnevisionProcessor._get_number_of_features")
    pinpoints = [list(p) for p in grid.parse_grid_pinpoints(GRID, 384)]
    fake = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=pinpoints),
                           num_image_tokens=729, vision_aspect_ratio="anyres_max_9")  # fmt: skip
    fake._get_unpadded_features = functools.partial(P._get_unpadded_features, fake)
    for w, h in SIZES + [(2000, 1500), (3000, 1000), (640, 480), (1920, 1080), (333, 1999)]:
        crops = grid.anyres_crop_count((w, h), GRID, 384)
        ours = grid.image_feature_tokens((w, h), crops=crops, merge_type="spatial_unpad",
                                         image_aspect_ratio="anyres_max_9", grid_pinpoints=GRID, side=27,
                                         crop_size=384, tokens_per_crop=729)  # fmt: skip
        assert ours == P._get_number_of_features(fake, h, w, 384, 384), (w, h)


# ------------------------------------------------------------------------------ counts == the model's rows
@pytest.fixture(scope="module")
def model(tiny_kit, tmp_path_factory):
    from llava.testing.tiny import make_tiny_clip

    clip = make_tiny_clip(tmp_path_factory.mktemp("clip40") / "clip", image_size=40)
    return build_tiny_llava(tiny_kit, vision_tower=str(clip), mm_patch_merge_type="spatial_unpad")


def _image(size, seed):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def _expected(model, size, crops):
    tower, cfg = model.get_vision_tower(), model.config
    return grid.image_feature_tokens(size, crops=crops, merge_type=cfg.mm_patch_merge_type,
                                     image_aspect_ratio=cfg.image_aspect_ratio,
                                     grid_pinpoints=cfg.image_grid_pinpoints, side=tower.num_patches_per_side,
                                     crop_size=tower.image_size, tokens_per_crop=tower.num_image_tokens)  # fmt: skip


def _spliced_rows(model, pixels, sizes, per_sample=1):
    """Visual rows of each sample (`per_sample` images each) in one right-padded batch."""
    text = [1, 300, 301]
    rows = [
        text[:1] + [IMAGE_TOKEN_INDEX, 302] * per_sample + text[1:] for _ in range(len(pixels) // per_sample)
    ]
    ids = torch.tensor(rows)
    _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        ids, None, torch.ones_like(ids), None, None, pixels, sizes
    )
    n_text = ids.shape[1] - per_sample
    return [int(m.sum()) - n_text for m in mask]


MODES = [
    ("square", "flat", None),
    ("pad", "flat", None),
    ("pad", "spatial_unpad", None),
    ("anyres", "flat", LIST_PINPOINTS),
    ("anyres", "spatial", LIST_PINPOINTS),
    ("anyres", "spatial_unpad", LIST_PINPOINTS),
    ("anyres", "spatial_unpad", str(LIST_PINPOINTS)),
    ("anyres_max_9", "spatial_unpad", GRID),
    ("anyres_max_9", "spatial", GRID),
    ("anyres_max_9", "flat", GRID),
    ("anyres_max_2", "spatial_unpad", GRID),
]


@pytest.mark.parametrize(
    "mode,merge,pinpoints", MODES, ids=[f"{m}-{g}-{type(p).__name__}" for m, g, p in MODES]
)
def test_image_counts_equal_spliced_rows(model, mode, merge, pinpoints):
    with configured(
        model, image_aspect_ratio=mode, mm_patch_merge_type=merge, image_grid_pinpoints=pinpoints
    ):
        processor = model.get_vision_tower().image_processor
        images = [_image(s, i) for i, s in enumerate(SIZES)]
        pixels = [process_images([im], processor, model.config)[0] for im in images]
        crops = [p.shape[0] if p.ndim == 4 else 1 for p in pixels]
        if grid.is_anyres(mode):
            assert crops == [grid.anyres_crop_count(s, pinpoints, 40) for s in SIZES]
            assert max(crops) > 4  # some images are tiled on big grids
        expected = [_expected(model, s, c) for s, c in zip(SIZES, crops)]
        assert _spliced_rows(model, pixels, SIZES) == expected
        if mode == "anyres_max_9" and merge == "spatial_unpad":  # the downscale happened for some image
            plain = [_expected_without_max(model, s, c) for s, c in zip(SIZES, crops)]
            assert any(e < p for e, p in zip(expected, plain))


def _expected_without_max(model, size, crops):
    with configured(model, image_aspect_ratio="anyres"):
        return _expected(model, size, crops)


def test_several_images_per_sample_counts(model):
    """A sample with several images: each processed as "pad", one crop, N (+1 newline for unpad) rows."""
    with configured(model, image_aspect_ratio="anyres_max_9", image_grid_pinpoints=GRID):
        processor = model.get_vision_tower().image_processor
        images = [_image(s, i) for i, s in enumerate(SIZES[:6])]
        pixels = list(process_images(images, processor, PAD))
        assert all(p.shape == (3, 40, 40) for p in pixels)
        rows = _spliced_rows(model, pixels, SIZES[:6], per_sample=3)
        assert rows == [3 * _expected(model, (40, 40), 1)] * 2 == [3 * 26] * 2


def test_anyres_max_merge_matches_next_reference(model):
    """The anyres_max downscale's values: unpad, bilinear to N tiles' worth, newline after each row."""
    size = (500, 130)
    with configured(model, image_aspect_ratio="anyres_max_2", image_grid_pinpoints=GRID):
        pixels = process_images([_image(size, 3)], model.get_vision_tower().image_processor, model.config)[0]
        feats = model.image_features([pixels], image_sizes=[size])[0]
        with torch.no_grad():
            enc = model.encode_images(pixels)
        cols, rows = grid.anyres_grid_shape(size, GRID, 40)
        fmap = (
            enc[1:]
            .view(rows, cols, 5, 5, -1)
            .permute(4, 0, 2, 1, 3)
            .reshape(enc.shape[-1], rows * 5, cols * 5)
        )
        from llava.model.image_features import unpad_image

        fmap = unpad_image(fmap, size)
        c, h, w = fmap.shape
        times = math.sqrt(h * w / (2 * 25))
        assert times > 1.1
        fmap = torch.nn.functional.interpolate(
            fmap[None], [int(h // times), int(w // times)], mode="bilinear"
        )[0]
        newline = model.get_model().image_newline
        ref = torch.cat((fmap, newline[:, None, None].expand(c, fmap.shape[1], 1)), dim=-1).flatten(1).T
        torch.testing.assert_close(feats, torch.cat((enc[0], ref)), atol=1e-5, rtol=0)


def test_tile_count_mismatch_is_a_clear_error(model):
    with configured(model, image_aspect_ratio="anyres", image_grid_pinpoints=LIST_PINPOINTS):
        with pytest.raises(ValueError, match=r"cut into 3x1 tiles .* but 2 tiles"):
            model.image_features([torch.zeros(3, 3, 40, 40)], image_sizes=[(300, 45)])
        with pytest.raises(ValueError, match="2 image_sizes were given for 1 visuals"):
            model.image_features([torch.zeros(4, 3, 40, 40)], image_sizes=[(300, 45), (3, 3)])
