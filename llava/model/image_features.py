"""Turn projected per-crop features into one feature sequence per image (``mm_patch_merge_type``).

``flat`` concatenates the crops' patch rows (LLaVA-1.5). ``spatial`` / ``spatial_unpad`` (LLaVA-1.6,
with ``image_aspect_ratio anyres``) lay the crops out on their grid, optionally cut away the padding
and append ``image_newline`` after every row, after the base (whole-image) crop.
"""

from __future__ import annotations

import torch

MERGE_TYPES = ("flat", "spatial", "spatial_unpad")


def unpad_image(features: torch.Tensor, original_size) -> torch.Tensor:
    """Crop a ``[C, H, W]`` feature map back to the aspect ratio of an image of ``(width, height)``."""
    orig_w, orig_h = original_size
    cur_h, cur_w = features.shape[1:]
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(orig_h * (cur_w / orig_w))
        pad = (cur_h - new_h) // 2
        return features[:, pad : cur_h - pad, :]
    new_w = int(orig_w * (cur_h / orig_h))
    pad = (cur_w - new_w) // 2
    return features[:, :, pad : cur_w - pad]


def merge_crop_features(
    per_image: list[torch.Tensor],
    merge_type: str,
    image_sizes=None,
    image_aspect_ratio: str | None = None,
    grid_pinpoints=None,
    patches_per_side: int | None = None,
    crop_size: int | None = None,
    image_newline: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """``per_image``: one ``[crops, tokens, D]`` tensor per image -> one ``[n, D]`` tensor per image."""
    merge_type = merge_type or "flat"
    if merge_type == "flat":
        return [x.flatten(0, 1) for x in per_image]
    if not merge_type.startswith("spatial"):
        raise ValueError(f"unknown mm_patch_merge_type {merge_type!r}; valid: {list(MERGE_TYPES)}")
    unpad = "unpad" in merge_type
    if unpad and image_newline is None:
        raise ValueError(
            "mm_patch_merge_type spatial_unpad needs model.image_newline; the checkpoint lacks it"
        )
    merged = []
    for idx, feats in enumerate(per_image):
        if feats.shape[0] == 1:
            out = feats[0]
            if unpad:
                out = torch.cat((out, image_newline[None].to(out)), dim=0)
            merged.append(out)
            continue
        if image_aspect_ratio != "anyres":
            raise ValueError(
                f"{feats.shape[0]} crops for one image need image_aspect_ratio 'anyres' "
                f"(got {image_aspect_ratio!r}) with mm_patch_merge_type {merge_type!r}"
            )
        if image_sizes is None:
            raise ValueError("anyres images need image_sizes (the original (width, height) of each image)")
        from llava.images.process import get_anyres_image_grid_shape

        base, crops = feats[0], feats[1:]
        side = patches_per_side
        if side * side != base.shape[0]:
            raise ValueError(
                f"spatial merge needs square patch grids: {base.shape[0]} tokens per crop is not "
                f"{side}x{side} (use mm_vision_select_feature 'patch')"
            )
        grid_w, grid_h = get_anyres_image_grid_shape(image_sizes[idx], grid_pinpoints, crop_size)
        crops = crops.view(grid_h, grid_w, side, side, -1)
        if unpad:
            fmap = crops.permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
            fmap = unpad_image(fmap, image_sizes[idx])
            newline = image_newline[:, None, None].expand(*fmap.shape[:-1], 1).to(fmap)
            out = torch.cat((fmap, newline), dim=-1).flatten(1, 2).transpose(0, 1)
        else:
            out = crops.permute(0, 2, 1, 3, 4).contiguous().flatten(0, 3)
        merged.append(torch.cat((base, out), dim=0))
    return merged
