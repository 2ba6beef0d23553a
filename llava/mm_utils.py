"""Image and token helpers shared by training, serving and evaluation (original LLaVA names).

`tokenizer_image_token` turns a rendered prompt into ids with IMAGE_TOKEN_INDEX where each
`<image>` stood. `tokenizer_image_token_with_offsets` is the same tokenisation (one code path)
that also returns each token's character span in the prompt; the training label builder uses it.
"""

from __future__ import annotations

import ast
import base64
import math
from io import BytesIO
from typing import Any, NamedTuple

import torch
from PIL import Image
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

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


# --------------------------------------------------------------------------------------- tokens
class TokenizedPrompt(NamedTuple):
    """ids (IMAGE_TOKEN_INDEX for each `<image>`), per-token [start, end) character spans in the
    prompt, and whether each token was added by the tokenizer (BOS) rather than read from text."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    added: list[bool]


def _encode(prompt: str, tokenizer, image_token_index: int, with_offsets: bool) -> TokenizedPrompt:
    # Each chunk between `<image>` markers is tokenised on its own, exactly as the original
    # tokenizer_image_token did; the BOS of the first chunk is kept and later chunks' BOS dropped.
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    encoded, start = [], 0
    for chunk in chunks:
        if with_offsets:
            enc = tokenizer(chunk, return_offsets_mapping=True, return_special_tokens_mask=True)
            offsets = [(start + a, start + b) for a, b in enc["offset_mapping"]]
            added = [bool(m) for m in enc["special_tokens_mask"]]
        else:
            enc = tokenizer(chunk)
            offsets, added = [(start, start)] * len(enc["input_ids"]), [False] * len(enc["input_ids"])
        encoded.append((list(enc["input_ids"]), offsets, added, start))
        start += len(chunk) + len(DEFAULT_IMAGE_TOKEN)
    bos = getattr(tokenizer, "bos_token_id", None)
    strip = int(bos is not None and bool(encoded[0][0]) and encoded[0][0][0] == bos)
    out = TokenizedPrompt([], [], [])
    if strip:
        out.ids.append(bos)
        out.offsets.append(encoded[0][1][0])
        out.added.append(True)
    for n, (ids, offsets, added, chunk_start) in enumerate(encoded):
        if n > 0:
            img_start = chunk_start - len(DEFAULT_IMAGE_TOKEN)
            out.ids.append(image_token_index)
            out.offsets.append((img_start, chunk_start))
            out.added.append(False)
        out.ids.extend(ids[strip:])
        out.offsets.extend(offsets[strip:])
        out.added.extend(added[strip:])
    return out


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    """Token ids of `prompt` with `image_token_index` spliced in where each `<image>` was."""
    ids = _encode(prompt, tokenizer, image_token_index, with_offsets=False).ids
    if return_tensors is None:
        return ids
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors} (only 'pt' or None)")


def tokenizer_image_token_with_offsets(
    prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX
) -> TokenizedPrompt:
    """`tokenizer_image_token` plus each token's character span (needs a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} gives no character offsets; load the tokenizer with "
            "AutoTokenizer.from_pretrained(path, use_fast=True) (needs its tokenizer.json or a convertible model)"
        )
    return _encode(prompt, tokenizer, image_token_index, with_offsets=True)


# --------------------------------------------------------------------------------------- misc
def get_model_name_from_path(model_path: str) -> str:
    """Last folder name, or "<parent>_checkpoint-N" for a Trainer checkpoint folder."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stops each sequence once its generated text ends with (or contains) one of `keywords`.

    Returns a per-sequence BoolTensor, as current transformers expects, so in a batch finished
    rows stop while the others go on. `input_ids` is the prompt given to generate (its length is
    skipped when the sequences passed in still hold the prompt); None when they hold only new tokens.
    """

    def __init__(self, keywords, tokenizer, input_ids: Any = None):
        self.keywords = [k for k in keywords if k]
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max((len(k) for k in self.keyword_ids), default=0)
        self.start_len = 0 if input_ids is None else int(input_ids.shape[-1])

    def _row_done(self, row: torch.Tensor) -> bool:
        for kid in self.keyword_ids:
            if 0 < len(kid) <= row.shape[0] and torch.equal(row[-len(kid) :], kid.to(row.device)):
                return True
        cur = row.shape[0]
        new = cur - self.start_len if cur > self.start_len else cur
        window = min(new, self.max_keyword_len + 2)
        if window <= 0:
            return False
        text = self.tokenizer.decode(row[-window:], skip_special_tokens=True)
        return any(k in text for k in self.keywords)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor = None, **kwargs
    ) -> torch.BoolTensor:
        done = [self._row_done(row) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
