"""Turn projected per-crop features into one feature sequence per image (``mm_patch_merge_type``).

``flat`` concatenates the crops' patch rows (LLaVA-1.5). ``spatial`` / ``spatial_unpad`` (LLaVA-1.6 and
OneVision, with ``image_aspect_ratio`` anyres / anyres_max_N) lay the crops out on their grid, optionally
cut away the padding (for anyres_max_N then shrink the map bilinearly to about N tiles' worth, LLaVA-NeXT's
rule) and append ``image_newline`` after every row, after the base (whole-image) crop. The row counts are
llava.images.grid's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.images.grid import (  # noqa: F401  (MERGE_TYPES: the valid mm_patch_merge_type values)
    MERGE_TYPES,
    anyres_grid_shape,
    anyres_max_crops,
    anyres_max_shape,
    check_merge_type,
    is_anyres,
)


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


def merge_image_features(
    feats: torch.Tensor,
    merge_type: str | None,
    *,
    image_size=None,
    image_aspect_ratio: str | None = None,
    grid_pinpoints=None,
    patches_per_side: int | None = None,
    crop_size: int | None = None,
    image_newline: torch.Tensor | None = None,
) -> torch.Tensor:
    """One image's ``[crops, tokens, D]`` projected crop features -> its ``[n, D]`` feature rows
    (``n`` = llava.images.grid.image_feature_tokens)."""
    merge_type = check_merge_type(merge_type)
    if merge_type == "flat":
        return feats.flatten(0, 1)
    unpad = "unpad" in merge_type
    if unpad and image_newline is None:
        raise ValueError(
            f"mm_patch_merge_type {merge_type} needs model.image_newline; the checkpoint lacks it"
        )
    if feats.shape[0] == 1:
        out = feats[0]
        return torch.cat((out, image_newline[None].to(out)), dim=0) if unpad else out
    if not is_anyres(image_aspect_ratio):
        raise ValueError(
            f"{feats.shape[0]} crops for one image need image_aspect_ratio anyres or anyres_max_N "
            f"(got {image_aspect_ratio!r}) with mm_patch_merge_type {merge_type!r}"
        )
    if image_size is None:
        raise ValueError("anyres images need image_sizes (the original (width, height) of each image)")
    base, crops = feats[0], feats[1:]
    side = patches_per_side
    if side * side != base.shape[0]:
        raise ValueError(
            f"spatial merge needs square patch grids: {base.shape[0]} tokens per crop is not "
            f"{side}x{side} (use mm_vision_select_feature 'patch')"
        )
    grid_w, grid_h = anyres_grid_shape(image_size, grid_pinpoints, crop_size)
    if grid_w * grid_h != crops.shape[0]:
        raise ValueError(
            f"an image of size {tuple(image_size)} is cut into {grid_w}x{grid_h} tiles by image_grid_pinpoints "
            f"{grid_pinpoints!r}, but {crops.shape[0]} tiles (+1 base) were given: were the pixels made with "
            "the model's image_aspect_ratio and image_grid_pinpoints?"
        )
    crops = crops.view(grid_h, grid_w, side, side, -1)
    if not unpad:
        out = crops.permute(0, 2, 1, 3, 4).contiguous().flatten(0, 3)
        return torch.cat((base, out), dim=0)
    fmap = crops.permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)  # [D, rows, cols]
    fmap = unpad_image(fmap, image_size)
    max_crops = anyres_max_crops(image_aspect_ratio)
    if max_crops is not None:
        shape = anyres_max_shape(fmap.shape[1], fmap.shape[2], max_crops, side)
        if shape != tuple(fmap.shape[1:]):
            fmap = F.interpolate(fmap[None], list(shape), mode="bilinear")[0]
    newline = image_newline[:, None, None].expand(*fmap.shape[:-1], 1).to(fmap)
    out = torch.cat((fmap, newline), dim=-1).flatten(1, 2).transpose(0, 1)
    return torch.cat((base, out), dim=0)


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
    return [
        merge_image_features(
            feats,
            merge_type,
            image_size=image_sizes[idx] if image_sizes is not None else None,
            image_aspect_ratio=image_aspect_ratio,
            grid_pinpoints=grid_pinpoints,
            patches_per_side=patches_per_side,
            crop_size=crop_size,
            image_newline=image_newline,
        )
        for idx, feats in enumerate(per_image)
    ]
