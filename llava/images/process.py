"""Images as the model sees them: pad to square, anyres tiles, the processor's pixels (original LLaVA names).

`process_images(images, image_processor, model_cfg)` turns PIL images into pixel tensors by
`model_cfg.image_aspect_ratio` (None/"square", "pad", "anyres"); `model_cfg` is any object with
`image_aspect_ratio` and `image_grid_pinpoints` (a model config, or the data side's `SampleFormat`).
The training loader's fast path for square/pad (`llava.images.transform.ImageTransform`) gives the
same pixels. Re-exported by `llava.mm_utils` under the original's names.
"""

from __future__ import annotations

import ast
import base64
import math
from io import BytesIO

import torch
from PIL import Image

IMAGE_ASPECT_RATIOS = (None, "square", "pad", "anyres")


# --------------------------------------------------------------------------------------- anyres
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


def _pinpoints(grid_pinpoints):
    if isinstance(grid_pinpoints, str):
        grid_pinpoints = ast.literal_eval(grid_pinpoints)
    if not grid_pinpoints:
        raise ValueError(
            "image_aspect_ratio 'anyres' needs image_grid_pinpoints, e.g. [[336, 672], [672, 336]]"
        )
    return [tuple(p) for p in grid_pinpoints]


def get_anyres_image_grid_shape(image_size, grid_pinpoints, patch_size):
    """(columns, rows) of `patch_size` tiles an anyres image of `image_size` (w, h) is cut into."""
    width, height = select_best_resolution(image_size, _pinpoints(grid_pinpoints))
    return width // patch_size, height // patch_size


def _size_value(size, key):
    value = size[key] if isinstance(size, dict) else getattr(size, key, None)
    if value is None:
        raise ValueError(f"image processor has no {key!r} in its size settings ({size})")
    return value


def process_anyres_image(image, processor, grid_pinpoints):
    """Tensor [1 + tiles, 3, H, W]: the whole image resized, then the tiles of the best grid."""
    best = select_best_resolution(image.size, _pinpoints(grid_pinpoints))
    padded = resize_and_pad_image(image, best)
    patches = divide_to_patches(padded, _size_value(processor.crop_size, "height"))
    edge = _size_value(processor.size, "shortest_edge")
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
    """Pixel tensors for `images` by `model_cfg.image_aspect_ratio` (None/"square", "pad", "anyres").

    Returns a stacked tensor [N, ...] when all results share a shape, else a list of tensors.
    """
    mode = getattr(model_cfg, "image_aspect_ratio", None)
    if mode not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"unknown image_aspect_ratio {mode!r}; valid: {IMAGE_ASPECT_RATIOS}")
    if mode in (None, "square"):
        return image_processor(images, return_tensors="pt")["pixel_values"]
    if mode == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        out = [
            image_processor.preprocess(expand2square(im, background), return_tensors="pt")["pixel_values"][0]
            for im in images
        ]
    else:
        out = [process_anyres_image(im, image_processor, model_cfg.image_grid_pinpoints) for im in images]
    if out and all(x.shape == out[0].shape for x in out):
        return torch.stack(out, dim=0)
    return out
