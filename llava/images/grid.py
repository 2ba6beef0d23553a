"""How many feature rows a visual becomes in the LLM's input: the one source of truth (pure Python).

The model's merge (llava.model.image_features, llava.model.video_features), the data side's length
budget and serving's context check all take their numbers from here, so they agree by construction;
tests/test_grid.py checks these counts against the rows the model actually splices in.

Names follow LLaVA-NeXT's config fields: `image_aspect_ratio` (square | pad | anyres | anyres_max_N),
`image_grid_pinpoints` (a list of (width, height), its string literal, or a tile-grid range such as
"(1x1),...,(6x6)" in units of the tower's crop size), `mm_patch_merge_type` (flat | spatial |
spatial_unpad), `mm_newline_position` (grid | frame | one_token | no_token), `mm_spatial_pool_mode`
(average | bilinear | max) and `mm_spatial_pool_stride`.

`side` is the tower's patches per side (`num_patches_per_side`), `crop_size` its input size in pixels
(`image_size`), `tokens_per_crop` the feature rows of one crop (`num_image_tokens`).
"""

from __future__ import annotations

import ast
import math
import re

MERGE_TYPES = ("flat", "spatial", "spatial_unpad")
POOL_MODES = ("average", "bilinear", "max")
NEWLINE_POSITIONS = ("grid", "frame", "one_token", "no_token")
FIXED_ASPECT_RATIOS = (None, "square", "pad", "anyres")  # plus anyres_max_N for any N >= 1
PINPOINTS_EXAMPLE = "e.g. '[(336, 672), (672, 336), (672, 672)]' or '(1x1),...,(6x6)'"

# What a config without these fields means (LLaVA-NeXT's reading of older checkpoints).
VIDEO_CONFIG_DEFAULTS = {
    "mm_newline_position": "one_token",
    "mm_spatial_pool_stride": 2,
    "mm_spatial_pool_mode": "bilinear",
}

_ANYRES_MAX = re.compile(r"anyres_max_(\d+)")
_GRID_CELL = re.compile(r"\((\d+)\s*x\s*(\d+)\)")


# ------------------------------------------------------------------------------ names and values
def anyres_max_crops(image_aspect_ratio) -> int | None:
    """N of "anyres_max_N" (the most tiles' worth of feature rows an image keeps), else None."""
    if not isinstance(image_aspect_ratio, str) or not image_aspect_ratio.startswith("anyres_max"):
        return None
    m = _ANYRES_MAX.fullmatch(image_aspect_ratio)
    if not m or int(m.group(1)) < 1:
        raise ValueError(
            f"image_aspect_ratio {image_aspect_ratio!r}: anyres_max_N needs a whole number N >= 1, e.g. anyres_max_9"
        )
    return int(m.group(1))


def is_anyres(image_aspect_ratio) -> bool:
    """Whether images are tiled (base image + grid tiles): "anyres" or "anyres_max_N"."""
    return image_aspect_ratio == "anyres" or anyres_max_crops(image_aspect_ratio) is not None


def check_image_aspect_ratio(image_aspect_ratio) -> None:
    """Raise ValueError naming the valid values unless `image_aspect_ratio` is one."""
    if image_aspect_ratio in FIXED_ASPECT_RATIOS or anyres_max_crops(image_aspect_ratio) is not None:
        return
    valid = ", ".join(m for m in FIXED_ASPECT_RATIOS if m)
    raise ValueError(
        f"unknown image_aspect_ratio {image_aspect_ratio!r}; valid: {valid}, anyres_max_N (N >= 1)"
    )


def check_merge_type(merge_type) -> str:
    """`mm_patch_merge_type` (None means "flat"); raise ValueError naming the valid ones."""
    merge_type = merge_type or "flat"
    if merge_type not in MERGE_TYPES:
        raise ValueError(f"unknown mm_patch_merge_type {merge_type!r}; valid: {', '.join(MERGE_TYPES)}")
    return merge_type


def check_pool_mode(pool_mode) -> str:
    if pool_mode not in POOL_MODES:
        raise ValueError(f"unknown mm_spatial_pool_mode {pool_mode!r}; valid: {', '.join(POOL_MODES)}")
    return pool_mode


def check_newline_position(newline_position) -> str:
    if newline_position not in NEWLINE_POSITIONS:
        raise ValueError(
            f"unknown mm_newline_position {newline_position!r}; valid: {', '.join(NEWLINE_POSITIONS)}"
        )
    return newline_position


def check_pool_stride(stride) -> int:
    if type(stride) is not int or stride < 1:
        raise ValueError(f"mm_spatial_pool_stride must be a whole number >= 1, got {stride!r}")
    return stride


# ------------------------------------------------------------------------------ anyres tiling
def parse_grid_pinpoints(grid_pinpoints, crop_size: int | None = None) -> list[tuple[int, int]]:
    """`image_grid_pinpoints` as (width, height) pairs in pixels.

    Takes a list of pairs, its string literal ("[(336, 672), (672, 336)]"), or LLaVA-NeXT's tile-grid
    range "(1x1),...,(6x6)": every (i, j) from the first cell to the last, times `crop_size`.
    """
    if grid_pinpoints is None or (isinstance(grid_pinpoints, str) and not grid_pinpoints.strip()):
        raise ValueError(f"anyres images need image_grid_pinpoints, {PINPOINTS_EXAMPLE}")
    value = grid_pinpoints
    if isinstance(value, str) and "x" in value:
        cells = _GRID_CELL.findall(value)
        if not cells:
            raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r} does not parse; {PINPOINTS_EXAMPLE}")
        if not crop_size:
            raise ValueError(
                f"image_grid_pinpoints {grid_pinpoints!r} is in tiles and needs the tower's crop size in pixels"
            )
        (c0, r0), (c1, r1) = (tuple(map(int, c)) for c in (cells[0], cells[-1]))
        value = [(i * crop_size, j * crop_size) for i in range(c0, c1 + 1) for j in range(r0, r1 + 1)]
    elif isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(
                f"image_grid_pinpoints {grid_pinpoints!r} does not parse; {PINPOINTS_EXAMPLE}"
            ) from None
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    pairs = []
    for p in value if ok else ():
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(type(x) is int and x > 0 for x in p)):
            ok = False
            break
        pairs.append((p[0], p[1]))
    if not ok:
        raise ValueError(
            f"image_grid_pinpoints {grid_pinpoints!r} is not a non-empty list of (width, height) pairs of "
            f"positive integers; {PINPOINTS_EXAMPLE}"
        )
    return pairs


def select_best_resolution(original_size, possible_resolutions):
    """The (width, height) from `possible_resolutions` keeping the most detail, least padding."""
    original_width, original_height = original_size
    best_fit, best_effective, best_wasted = None, 0, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        down_w, down_h = int(original_width * scale), int(original_height * scale)
        effective = min(down_w * down_h, original_width * original_height)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best_fit, best_effective, best_wasted = (width, height), effective, wasted
    return best_fit


def anyres_grid_shape(image_size, grid_pinpoints, crop_size: int) -> tuple[int, int]:
    """(columns, rows) of `crop_size` tiles an anyres image of `image_size` (w, h) is cut into."""
    width, height = select_best_resolution(image_size, parse_grid_pinpoints(grid_pinpoints, crop_size))
    return width // crop_size, height // crop_size


def anyres_crop_count(image_size, grid_pinpoints, crop_size: int) -> int:
    """Crops an anyres image becomes: 1 (the whole image resized) + the grid's tiles."""
    cols, rows = anyres_grid_shape(image_size, grid_pinpoints, crop_size)
    return 1 + cols * rows


def unpadded_shape(image_size, rows: int, cols: int) -> tuple[int, int]:
    """(rows, cols) left of a `rows` x `cols` feature map once the padding of an image of
    `image_size` (w, h) is cut away (the slice llava.model.image_features.unpad_image takes)."""
    orig_w, orig_h = image_size
    if orig_w / orig_h > cols / rows:
        pad = (rows - int(orig_h * (cols / orig_w))) // 2
        return len(range(pad, rows - pad)), cols
    pad = (cols - int(orig_w * (rows / orig_h))) // 2
    return rows, len(range(pad, cols - pad))


def anyres_max_shape(rows: int, cols: int, max_crops: int, side: int) -> tuple[int, int]:
    """(rows, cols) of an unpadded map after anyres_max_N's downscale: by `times` =
    sqrt(rows * cols / (N * side^2)) when that exceeds 1.1 (LLaVA-NeXT's rule), else unchanged."""
    times = math.sqrt(rows * cols / (max_crops * side**2))
    if times > 1.1:
        return int(rows // times), int(cols // times)
    return rows, cols


def image_feature_tokens(
    image_size,
    *,
    crops: int,
    merge_type,
    image_aspect_ratio,
    grid_pinpoints,
    side: int,
    crop_size: int,
    tokens_per_crop: int,
) -> int:
    """Feature rows of one image of `image_size` (w, h) given as `crops` crops (1, or 1 + K anyres tiles)."""
    merge_type = check_merge_type(merge_type)
    unpad = "unpad" in merge_type
    if crops < 1:
        raise ValueError(f"an image has at least one crop, got {crops}")
    if crops == 1:
        return tokens_per_crop + int(unpad)
    if merge_type == "flat":
        return crops * tokens_per_crop
    if not is_anyres(image_aspect_ratio):
        raise ValueError(
            f"{crops} crops for one image need image_aspect_ratio anyres or anyres_max_N "
            f"(got {image_aspect_ratio!r}) with mm_patch_merge_type {merge_type!r}"
        )
    if image_size is None:
        raise ValueError("anyres images need their image size (the original (width, height))")
    cols, rows = anyres_grid_shape(image_size, grid_pinpoints, crop_size)
    if cols * rows != crops - 1:
        raise ValueError(
            f"an image of size {tuple(image_size)} is cut into {cols}x{rows} tiles by image_grid_pinpoints "
            f"{grid_pinpoints!r}, but {crops - 1} tiles (+1 base) were given"
        )
    if tokens_per_crop != side * side:
        raise ValueError(
            f"spatial merge needs square patch grids: {tokens_per_crop} tokens per crop is not {side}x{side} "
            "(use mm_vision_select_feature 'patch')"
        )
    if not unpad:
        return crops * tokens_per_crop
    h, w = unpadded_shape(image_size, rows * side, cols * side)
    max_crops = anyres_max_crops(image_aspect_ratio)
    if max_crops is not None:
        h, w = anyres_max_shape(h, w, max_crops, side)
    return tokens_per_crop + h * (w + 1)


# ------------------------------------------------------------------------------ video
def pooled_side(side: int, stride: int, mode: str) -> int:
    """Patches per side of a frame after 2-D pooling: bilinear ceil(side / stride), average/max floor."""
    check_pool_mode(mode)
    check_pool_stride(stride)
    out = math.ceil(side / stride) if mode == "bilinear" else side // stride
    if out < 1:
        raise ValueError(
            f"mm_spatial_pool_stride {stride} is larger than the tower's {side} patches per side "
            f"(mm_spatial_pool_mode {mode!r})"
        )
    return out


def video_needs_newline(newline_position: str, merge_type) -> bool:
    """Whether a video's features carry `image_newline` rows (LLaVA-NeXT: not with merge type flat;
    "one_token" only with an unpad merge type)."""
    merge_type = check_merge_type(merge_type)
    check_newline_position(newline_position)
    if merge_type == "flat" or newline_position == "no_token":
        return False
    return newline_position in ("grid", "frame") or "unpad" in merge_type


def check_video_newline(newline_position: str, merge_type, has_newline: bool) -> None:
    """Raise a clear error when a video's newline rows need an `image_newline` the model lacks."""
    if video_needs_newline(newline_position, merge_type) and not has_newline:
        raise ValueError(
            f"mm_newline_position {newline_position!r} puts image_newline rows into a video's features, but the "
            f"model has no image_newline (LLaVA-NeXT creates it only for an unpad mm_patch_merge_type; this one is "
            f"{merge_type!r}); use mm_patch_merge_type spatial_unpad or mm_newline_position no_token"
        )


def video_settings(cfg) -> dict:
    """The video keywords of video_feature_tokens (stride, pool_mode, newline_position, merge_type) from any
    object with LLaVA-NeXT's config fields (a model config, training args); a missing field takes
    VIDEO_CONFIG_DEFAULTS' value. Validated."""

    def field(name):
        value = getattr(cfg, name, None)
        return VIDEO_CONFIG_DEFAULTS[name] if value is None or value == "" else value

    return dict(
        stride=check_pool_stride(field("mm_spatial_pool_stride")),
        pool_mode=check_pool_mode(field("mm_spatial_pool_mode")),
        newline_position=check_newline_position(field("mm_newline_position")),
        merge_type=check_merge_type(getattr(cfg, "mm_patch_merge_type", None)),
    )


def video_feature_tokens(
    frames: int, *, side: int, stride: int, pool_mode: str, newline_position: str, merge_type
) -> int:
    """Feature rows of a video of `frames` frames: pooled frames, plus newlines by `newline_position`.
    (Counts only: check_video_newline says whether a model without image_newline can make them.)"""
    if frames < 1:
        raise ValueError(f"a video has at least one frame, got {frames}")
    p = pooled_side(side, stride, pool_mode)
    merge_type = check_merge_type(merge_type)
    rows = frames * p * p
    if not video_needs_newline(newline_position, merge_type):
        return rows
    if newline_position == "grid":
        return rows + frames * p
    if newline_position == "frame":
        return rows + frames
    return rows + 1  # one_token


# ------------------------------------------------------------------------------ a sample's visuals
def sample_visual_tokens(
    visuals,
    *,
    image_aspect_ratio,
    grid_pinpoints,
    merge_type,
    side: int,
    crop_size: int,
    tokens_per_crop: int,
    stride: int = 2,
    pool_mode: str = "bilinear",
    newline_position: str = "one_token",
) -> list[int]:
    """Each visual's feature rows for one sample (or request): `visuals` is a list of
    ("image", (w, h) or None) and ("video", frames taken) pairs in placeholder order. The one rule:
    a sample's only image is tiled by `image_aspect_ratio` (anyres: its size decides the tiles),
    several images each count as one crop (LLaVA-NeXT / OneVision), a video by its frames.
    Training's length budget and serving's context check both count with this."""
    images = sum(1 for kind, _ in visuals if kind != "video")
    image_settings = dict(
        merge_type=merge_type, image_aspect_ratio=image_aspect_ratio, grid_pinpoints=grid_pinpoints,
        side=side, crop_size=crop_size, tokens_per_crop=tokens_per_crop,
    )  # fmt: skip
    out = []
    for kind, value in visuals:
        if kind == "video":
            out.append(
                video_feature_tokens(
                    int(value), side=side, stride=stride, pool_mode=pool_mode,
                    newline_position=newline_position, merge_type=merge_type,
                )  # fmt: skip
            )
        elif images == 1 and is_anyres(image_aspect_ratio):
            if value is None:
                raise ValueError("an anyres image's tokens depend on its size (width, height)")
            crops = anyres_crop_count(value, grid_pinpoints, crop_size)
            out.append(image_feature_tokens(value, crops=crops, **image_settings))
        else:
            out.append(image_feature_tokens(value or (crop_size, crop_size), crops=1, **image_settings))
    return out
