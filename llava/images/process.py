"""Images as the model sees them: pad to square, anyres tiles, the processor's pixels (original LLaVA names).

`process_images(images, image_processor, model_cfg)` turns PIL images into pixel tensors by
`model_cfg.image_aspect_ratio` (None/"square", "pad", "anyres", "anyres_max_N"); `model_cfg` is any object
with `image_aspect_ratio` and `image_grid_pinpoints` (a model config, or the data side's `SampleFormat`).
Grid pinpoints take the three forms of llava.images.grid.parse_grid_pinpoints (a tile-grid range such as
"(1x1),...,(6x6)" is in units of the processor's crop size). The training loader's fast path for
square/pad (`llava.images.transform.ImageTransform`) gives the same pixels. Re-exported by
`llava.mm_utils` under the original's names.
"""

from __future__ import annotations

import base64
import math
from io import BytesIO

import torch
from PIL import Image

from .grid import (
    anyres_grid_shape,
    check_image_aspect_ratio,
    parse_grid_pinpoints,
    select_best_resolution,  # noqa: F401  (the original's public name)
)

# The fixed names; "anyres_max_N" (any N >= 1) is accepted too (llava.images.grid.check_image_aspect_ratio).
IMAGE_ASPECT_RATIOS = (None, "square", "pad", "anyres")


# --------------------------------------------------------------------------------------- anyres
def resize_and_pad_image(image, target_resolution):
    """Resize keeping the aspect ratio, then centre on a black canvas of `target_resolution`."""
    original_width, original_height = image.size
    target_width, target_height = target_resolution
    scale_w, scale_h = target_width / original_width, target_height / original_height
    if scale_w < scale_h:
        new_width, new_height = target_width, min(math.ceil(original_height * scale_w), target_height)
    else:
        new_width, new_height = min(math.ceil(original_width * scale_h), target_width), target_height
    resized = image.resize((new_width, new_height))
    canvas = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    canvas.paste(resized, ((target_width - new_width) // 2, (target_height - new_height) // 2))
    return canvas


def divide_to_patches(image, patch_size):
    """Row-major list of `patch_size` square crops covering `image`."""
    width, height = image.size
    return [
        image.crop((j, i, j + patch_size, i + patch_size))
        for i in range(0, height, patch_size)
        for j in range(0, width, patch_size)
    ]


def get_anyres_image_grid_shape(image_size, grid_pinpoints, patch_size):
    """(columns, rows) of `patch_size` tiles an anyres image of `image_size` (w, h) is cut into."""
    return anyres_grid_shape(image_size, grid_pinpoints, patch_size)


def _size_value(size, key):
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    if value is None:
        raise ValueError(f"image processor has no {key!r} in its size settings ({size})")
    return value


def _tile_side(processor) -> int:
    """The side of an anyres tile: the processor's crop height (its size height where it has no crop)."""
    crop = getattr(processor, "crop_size", None)
    return _size_value(crop if crop else processor.size, "height")


def _base_side(processor) -> int:
    """The side the whole image is resized to: the processor's shortest edge (or its size height)."""
    size = processor.size
    has_edge = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    return _size_value(size, "shortest_edge" if has_edge else "height")


def process_anyres_image(image, processor, grid_pinpoints):
    """Tensor [1 + tiles, 3, H, W]: the whole image resized, then the tiles of the best grid."""
    tile = _tile_side(processor)
    best = select_best_resolution(image.size, parse_grid_pinpoints(grid_pinpoints, tile))
    patches = divide_to_patches(resize_and_pad_image(image, best), tile)
    edge = _base_side(processor)
    tiles = [image.resize((edge, edge))] + patches
    return torch.stack([processor.preprocess(t, return_tensors="pt")["pixel_values"][0] for t in tiles])


# --------------------------------------------------------------------------------------- images
def load_image_from_base64(image):
    return Image.open(BytesIO(base64.b64decode(image)))


def expand2square(pil_img, background_color):
    """Pad the shorter side so the image is square, content centred, `background_color` around."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def process_images(images, image_processor, model_cfg):
    """Pixel tensors for `images` by `model_cfg.image_aspect_ratio` (None/"square", "pad", "anyres",
    "anyres_max_N").

    Returns a stacked tensor [N, ...] when all results share a shape, else a list of tensors.
    """
    mode = getattr(model_cfg, "image_aspect_ratio", None)
    check_image_aspect_ratio(mode)
    if mode in (None, "square"):
        return image_processor(images, return_tensors="pt")["pixel_values"]
    if mode == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        out = [
            image_processor.preprocess(expand2square(im, background), return_tensors="pt")["pixel_values"][0]
            for im in images
        ]
    else:
        pinpoints = getattr(model_cfg, "image_grid_pinpoints", None)
        out = [process_anyres_image(im, image_processor, pinpoints) for im in images]
    if out and all(x.shape == out[0].shape for x in out):
        return torch.stack(out, dim=0)
    return out
