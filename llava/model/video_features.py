"""A video's feature rows: its frames' projected patch features, 2-D pooled, with newlines (LLaVA-NeXT).

Each frame's ``side x side`` patch map is pooled by ``mm_spatial_pool_mode`` with
``mm_spatial_pool_stride`` (bilinear resize to ceil(side / stride), or average / max pooling to
floor(side / stride)). ``mm_newline_position`` then places ``image_newline`` rows: ``grid`` after every
row of every frame, ``frame`` after every frame, ``one_token`` once after the whole video (only with an
unpad merge type), ``no_token`` none. With ``mm_patch_merge_type`` flat the pooled frames are just
concatenated. The row count is llava.images.grid.video_feature_tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.images.grid import (
    check_merge_type,
    check_newline_position,
    check_video_newline,
    pooled_side,
    video_needs_newline,
)


def pool_frames(frames: torch.Tensor, side: int, stride: int, mode: str) -> torch.Tensor:
    """``[F, side*side, D]`` per-frame features -> ``[F, p*p, D]`` with ``p`` = pooled_side(side, stride, mode)."""
    num_frames, tokens, dim = frames.shape
    if tokens != side * side:
        raise ValueError(
            f"video pooling needs square patch grids: {tokens} tokens per frame is not {side}x{side} "
            "(use mm_vision_select_feature 'patch')"
        )
    p = pooled_side(side, stride, mode)
    fmap = frames.reshape(num_frames, side, side, dim).permute(0, 3, 1, 2)  # [F, D, side, side]
    if mode == "bilinear":
        fmap = F.interpolate(fmap, size=[p, p], mode="bilinear")
    elif mode == "average":
        fmap = F.avg_pool2d(fmap, stride)
    else:
        fmap = F.max_pool2d(fmap, stride)
    return fmap.permute(0, 2, 3, 1).reshape(num_frames, p * p, dim)


def add_video_newlines(
    pooled: torch.Tensor, newline_position: str, merge_type: str | None, image_newline: torch.Tensor | None
) -> torch.Tensor:
    """``[F, p*p, D]`` pooled frames -> ``[n, D]`` rows with ``image_newline`` placed by ``newline_position``."""
    merge_type = check_merge_type(merge_type)
    check_newline_position(newline_position)
    check_video_newline(newline_position, merge_type, has_newline=image_newline is not None)
    if not video_needs_newline(newline_position, merge_type):
        return pooled.flatten(0, 1)
    num_frames, tokens, dim = pooled.shape
    newline = image_newline.to(pooled)
    if newline_position == "grid":
        p = int(round(tokens**0.5))
        rows = pooled.reshape(num_frames, p, p, dim)
        rows = torch.cat((rows, newline.expand(num_frames, p, 1, dim)), dim=2)
        return rows.reshape(-1, dim)
    if newline_position == "frame":
        return torch.cat((pooled, newline.expand(num_frames, 1, dim)), dim=1).reshape(-1, dim)
    return torch.cat((pooled.flatten(0, 1), newline[None]), dim=0)  # one_token


def video_features(
    frames: torch.Tensor,
    *,
    side: int,
    stride: int,
    pool_mode: str,
    newline_position: str,
    merge_type: str | None,
    image_newline: torch.Tensor | None,
) -> torch.Tensor:
    """``[F, side*side, D]`` projected frame features -> the video's ``[n, D]`` feature rows."""
    check_newline_position(newline_position)
    check_video_newline(newline_position, merge_type, has_newline=image_newline is not None)
    return add_video_newlines(
        pool_frames(frames, side, stride, pool_mode), newline_position, merge_type, image_newline
    )
