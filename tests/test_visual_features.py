"""Videos and mixed visuals in the model: pooling, newline placement, counts, order, labels, generate.

A tiny model whose tower sees 40 px crops as 5x5 patches (odd, so bilinear's ceil and average/max's
floor differ). Video features are checked against LLaVA-NeXT's sequence of tensor operations
(get_2dPool, add_token_per_grid / add_token_per_frame), counts against llava.images.grid.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.images import grid
from llava.images.process import process_images
from llava.testing.tiny import llava_vision_args
from tests.model_helpers import build_tiny_llava, configured

IMG = IMAGE_TOKEN_INDEX
GRID = "(1x1),...,(6x6)"
PAD = SimpleNamespace(image_aspect_ratio="pad")  # how the images of a multi-image sample are made
SIDE = 5


@pytest.fixture(scope="module")
def clip40(tmp_path_factory):
    from llava.testing.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip40") / "clip", image_size=40)


@pytest.fixture(scope="module")
def model(tiny_kit, clip40):
    return build_tiny_llava(tiny_kit, vision_tower=str(clip40), mm_patch_merge_type="spatial_unpad")


def frames(n, seed=0):
    return torch.randn(n, 3, 40, 40, generator=torch.Generator().manual_seed(seed))


def _rows(model, ids, images, modalities, sizes=None):
    _, _, mask, _, _, _ = model.prepare_inputs_labels_for_multimodal(
        ids, None, torch.ones_like(ids), None, None, images, sizes, modalities=modalities
    )
    return [int(m.sum()) - int((row != IMG).sum()) for m, row in zip(mask, ids)]


# ------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("newline", grid.NEWLINE_POSITIONS)
@pytest.mark.parametrize("pool", grid.POOL_MODES)
def test_video_counts_equal_spliced_rows(model, newline, pool):
    ids = torch.tensor([[1, 300, IMG, 301]])
    p = math.ceil(SIDE / 2) if pool == "bilinear" else SIDE // 2  # by hand for stride 2, 3 frames
    by_hand = 3 * p * p + {"grid": 3 * p, "frame": 3, "one_token": 1, "no_token": 0}[newline]
    for stride, n_frames in ((1, 2), (2, 3), (3, 4)):
        with configured(
            model, mm_newline_position=newline, mm_spatial_pool_mode=pool, mm_spatial_pool_stride=stride
        ):
            expected = grid.video_feature_tokens(n_frames, side=SIDE, **grid.video_settings(model.config))
            assert _rows(model, ids, [frames(n_frames)], ["video"]) == [expected]
        if stride == 2:
            assert expected == by_hand


@pytest.mark.parametrize("merge", ["flat", "spatial"])
def test_video_without_unpad_merge(model, merge):
    """flat: pooled frames only; spatial: one_token/no_token add nothing, grid/frame need a newline."""
    ids = torch.tensor([[1, IMG, 301]])
    for newline in grid.NEWLINE_POSITIONS:
        with configured(model, mm_patch_merge_type=merge, mm_newline_position=newline):
            expected = grid.video_feature_tokens(2, side=SIDE, **grid.video_settings(model.config))
            if merge == "flat" or newline in ("one_token", "no_token"):
                assert expected == 2 * 9
            assert _rows(model, ids, [frames(2)], ["video"]) == [expected]
    inner = model.get_model()
    saved = inner.image_newline
    try:
        inner.image_newline = None  # as a model built with merge type spatial: LLaVA-NeXT makes none
        with configured(model, mm_patch_merge_type="spatial", mm_newline_position="grid"):
            with pytest.raises(ValueError, match="mm_newline_position 'grid' .* model has no image_newline"):
                model(input_ids=ids, images=[frames(2)], modalities=["video"])
    finally:
        inner.image_newline = saved


# ------------------------------------------------------------------------------ values (LLaVA-NeXT's ops)
def _next_reference(model, video, newline_position, pool, stride):
    with torch.no_grad():
        feat = model.encode_images(video)  # [F, 25, D]
    num_frames, _, dim = feat.shape
    x = feat.view(num_frames, SIDE, SIDE, -1).permute(0, 3, 1, 2).contiguous()
    if pool == "average":
        x = F.avg_pool2d(x, stride)
    elif pool == "max":
        x = F.max_pool2d(x, stride)
    else:
        x = F.interpolate(x, size=[math.ceil(SIDE / stride)] * 2, mode="bilinear")
    x = x.permute(0, 2, 3, 1).reshape(num_frames, -1, dim)
    newline = model.get_model().image_newline
    if newline_position == "grid":
        s = int(math.sqrt(x.shape[1]))
        y = x.view(num_frames, 1, s, s, -1).permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
        y = torch.cat((y, newline[:, None, None].expand(*y.shape[:-1], 1)), dim=-1)
        return y.flatten(1, 2).transpose(0, 1)
    if newline_position == "frame":
        y = x.permute(2, 0, 1).contiguous()
        y = torch.cat((y, newline[:, None, None].expand(*y.shape[:-1], 1)), dim=-1)
        return y.permute(1, 2, 0).contiguous().flatten(0, 1)
    if newline_position == "one_token":
        return torch.cat((x.flatten(0, 1), newline[None]), dim=0)
    return x.flatten(0, 1)


@pytest.mark.parametrize("newline", grid.NEWLINE_POSITIONS)
def test_video_features_match_next_operations(model, newline):
    video = frames(3, seed=1)
    for pool, stride in (("bilinear", 2), ("average", 2), ("max", 3)):
        with configured(
            model, mm_newline_position=newline, mm_spatial_pool_mode=pool, mm_spatial_pool_stride=stride
        ):
            ours = model.image_features([video], modalities=["video"])[0]
        torch.testing.assert_close(
            ours, _next_reference(model, video, newline, pool, stride), atol=1e-5, rtol=0
        )


# ------------------------------------------------------------------------------ a mixed batch
def _mixed_batch(model):
    """Text-only (with its stand-in), one anyres image, three images, a video; right padded."""
    from PIL import Image

    processor = model.get_vision_tower().image_processor
    pics = [Image.new("RGB", s, c) for s, c in (((123, 77), (200, 10, 10)), ((41, 97), (0, 90, 0)),
                                               ((97, 41), (0, 0, 200)), ((60, 60), (90, 90, 0)))]  # fmt: skip
    anyres = process_images(pics[:1], processor, model.config)[0]
    pads = list(process_images(pics[1:], processor, PAD))
    video = frames(4, seed=2)
    visuals = [torch.zeros(3, 40, 40), anyres, *pads, video]
    sizes = [(40, 40), (123, 77), (41, 97), (97, 41), (60, 60), (40, 40)]
    modalities = ["image"] * 5 + ["video"]
    prompts = [
        [1, 600, 601, 602, 603],
        [1, 300, IMG, 301, 302],
        [1, IMG, 310, IMG, 311, IMG, 312],
        [1, 320, IMG, 321],
    ]
    width = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    labels = torch.where((ids == IMG) | (mask == 0), IGNORE_INDEX, ids)
    labels[:, :2] = IGNORE_INDEX
    return ids, mask, labels, visuals, sizes, modalities, prompts


def test_mixed_batch_places_each_visual_in_order_and_masks_labels(model):
    with configured(
        model, image_aspect_ratio="anyres_max_9", image_grid_pinpoints=GRID, mm_newline_position="grid"
    ):
        ids, mask, labels, visuals, sizes, modalities, prompts = _mixed_batch(model)
        _, _, new_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            ids, None, mask, None, labels, visuals, sizes, modalities=modalities
        )
        alone = [model.image_features([v], [s], [m])[0] for v, s, m in zip(visuals, sizes, modalities)]
        out = model(input_ids=ids, attention_mask=mask, labels=labels, images=visuals, image_sizes=sizes,
                    modalities=modalities)  # fmt: skip
    assert len({a.shape[0] for a in alone[1:]}) >= 3  # anyres, single crop and video rows all differ
    emb, next_visual = model.get_input_embeddings(), 1  # visual 0 is the text-only sample's stand-in
    for b, prompt in enumerate(prompts):
        pieces, piece_labels = [], []
        for t, lab in zip(prompt, labels[b].tolist()):
            if t == IMG:
                feats = alone[next_visual]
                next_visual += 1
                pieces.append(feats)
                piece_labels += [IGNORE_INDEX] * feats.shape[0]
            else:
                pieces.append(emb(torch.tensor([t])))
                piece_labels.append(lab)
        want = torch.cat(pieces)
        n = want.shape[0]
        assert int(new_mask[b].sum()) == n and bool(new_mask[b, :n].all())
        torch.testing.assert_close(embeds[b, :n], want.to(embeds.dtype), atol=1e-5, rtol=0)
        assert new_labels[b, :n].tolist() == piece_labels
        assert new_labels[b, n:].eq(IGNORE_INDEX).all()
    assert next_visual == len(visuals)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    expected = F.cross_entropy(logits, new_labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, expected)
    # distinct visuals give distinct rows: swapping two of the three images changes sample 2's features
    swapped = visuals[:2] + [visuals[3], visuals[2]] + visuals[4:]
    with configured(
        model, image_aspect_ratio="anyres_max_9", image_grid_pinpoints=GRID, mm_newline_position="grid"
    ):
        _, _, _, _, embeds2, _ = model.prepare_inputs_labels_for_multimodal(
            ids,
            None,
            mask,
            None,
            None,
            swapped,
            sizes[:2] + [sizes[3], sizes[2]] + sizes[4:],
            modalities=modalities,
        )
    assert not torch.allclose(embeds[2], embeds2[2]) and torch.equal(embeds[3], embeds2[3])


def test_four_d_tensor_equals_list_of_single_crops(model):
    ids = torch.tensor([[1, IMG, 300, IMG, 301]])
    pix = frames(2, seed=4)
    a = model(input_ids=ids, images=pix).logits
    b = model(input_ids=ids, images=[pix[0], pix[1]], modalities=["image", "image"]).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert a.shape[1] == 3 + 2 * (SIDE * SIDE + 1)  # spatial_unpad: one newline after a single crop


def test_modalities_are_validated(model):
    ids = torch.tensor([[1, IMG, 300, IMG]])
    with pytest.raises(ValueError, match="1 modalities were given for 2 visuals"):
        model(input_ids=ids, images=frames(2), modalities=["image"])
    with pytest.raises(ValueError, match=r"modalities\[1\] is 'audio'; valid: image, video"):
        model(input_ids=ids, images=frames(2), modalities=["image", "audio"])
    with pytest.raises(
        ValueError, match="unknown mm_spatial_pool_mode 'mean'; valid: average, bilinear, max"
    ):
        with configured(model, mm_spatial_pool_mode="mean"):
            model(input_ids=torch.tensor([[1, IMG]]), images=[frames(2)], modalities=["video"])


def test_packed_rows_take_videos(model):
    """A packed row holding an image sample and a video sample: both spliced, positions restart."""
    ids = torch.tensor([[1, 300, IMG, 301, 1, IMG, 302]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    with configured(model, mm_newline_position="frame"):
        out = model.prepare_packed_inputs(ids, pos, torch.ones_like(ids), None, [frames(1)[0], frames(3)],
                                          [(40, 40), (40, 40)], ["image", "video"])  # fmt: skip
        n_img = SIDE * SIDE + 1
        n_vid = grid.video_feature_tokens(3, side=SIDE, **grid.video_settings(model.config))
    assert out["inputs_embeds"].shape[1] == 5 + n_img + n_vid
    starts = (out["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [0, 3 + n_img]


# ------------------------------------------------------------------------------ generate
@pytest.mark.parametrize("kind", ["video", "images"])
def test_generate_with_a_video_or_several_images(model, kind):
    if kind == "video":
        ids, visuals, modalities = torch.tensor([[1, 300, IMG, 301]]), [frames(3, seed=7)], ["video"]
    else:
        ids, visuals, modalities = torch.tensor([[1, IMG, 300, IMG, 301]]), list(frames(2, seed=8)), None
    with configured(model, mm_newline_position="grid"):
        gen = model.generate(ids, images=visuals, modalities=modalities, do_sample=False, max_new_tokens=3,
                             min_new_tokens=3, pad_token_id=0)  # fmt: skip
        cur, by_hand = ids, []
        for _ in range(3):
            nxt = int(model(input_ids=cur, images=visuals, modalities=modalities).logits[0, -1].argmax())
            by_hand.append(nxt)
            cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
    assert gen[0].tolist() == by_hand


# ------------------------------------------------------------------------------ config
def test_initialize_vision_modules_records_video_fields(tiny_kit, clip40):
    m = build_tiny_llava(tiny_kit, vision_tower=str(clip40))
    assert (m.config.mm_newline_position, m.config.mm_spatial_pool_stride, m.config.mm_spatial_pool_mode) == (
        "one_token", 2, "bilinear")  # fmt: skip
    args = llava_vision_args(tiny_kit, vision_tower=str(clip40), mm_newline_position="frame",
                             mm_spatial_pool_stride=3, mm_spatial_pool_mode="max")  # fmt: skip
    m.get_model().initialize_vision_modules(args)
    assert (m.config.mm_newline_position, m.config.mm_spatial_pool_stride, m.config.mm_spatial_pool_mode) == (
        "frame", 3, "max")  # fmt: skip
    with pytest.raises(ValueError, match="unknown mm_newline_position 'row'"):
        m.get_model().initialize_vision_modules(llava_vision_args(tiny_kit, mm_newline_position="row"))
