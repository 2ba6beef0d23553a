"""Training images in one pass: decode, pad to square, resize, crop, normalise.

`ImageTransform.from_processor` reads a CLIP/SigLIP-style image processor's settings once and
then does per image only what must be done per image: one PIL resize (the same call the
processors' PIL backend makes, so the pixels are the same), a crop, and normalisation through a
per-channel lookup table of the 256 possible values (computed once with the processor's own
float32 arithmetic). The per-image overhead of the processor API (format checks, numpy copies,
float64 passes) is gone. Used by the training dataset for `--image_aspect_ratio` square / pad;
anyres and unknown processors go through `llava.images.process.process_images` instead.

`ImageTransform.levels` stops before the normalisation and gives the 8-bit pixels: the trainer's
data loader sends those (a quarter of the bytes of float32) and the vision tower normalises them
on its device with the same table (`normalise_levels`), so the values the tower sees are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def _size_of(size) -> tuple[str, int | tuple[int, int]] | None:
    size = dict(size or {})
    if size.get("shortest_edge") and not size.get("longest_edge"):
        return "shortest_edge", int(size["shortest_edge"])
    if size.get("height") and size.get("width") and not size.get("shortest_edge"):
        return "fixed", (int(size["height"]), int(size["width"]))
    return None


def resized_shape(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to `shortest_edge` (transformers' rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


@dataclass(frozen=True)
class ImageTransform:
    resize: tuple[str, int | tuple[int, int]] | None
    resample: int
    crop: tuple[int, int] | None
    lut: np.ndarray  # [3, 256] float32: normalised value of each 8-bit level per channel
    background: tuple[int, int, int]  # the pad colour of --image_aspect_ratio pad
    pad_to_square: bool

    @classmethod
    def from_processor(cls, processor, image_aspect_ratio: str | None) -> ImageTransform | None:
        """The transform equal to `process_images(..., processor, aspect_ratio)`, or None when this
        processor or aspect ratio is not one it reproduces."""
        if image_aspect_ratio not in (None, "square", "pad"):
            return None
        get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
        needed = ("image_mean", "image_std", "do_resize", "do_rescale", "do_normalize")
        if any(get(n) is None for n in needed) or get("do_pad", False):
            return None
        resize = _size_of(get("size")) if get("do_resize") else None
        if get("do_resize") and resize is None:
            return None
        crop = None
        if get("do_center_crop", False):
            crop_size = dict(get("crop_size") or {})
            if not (crop_size.get("height") and crop_size.get("width")):
                return None
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        values = normalisation_table(processor)
        if values is None:
            return None
        background = tuple(int(x * 255) for x in get("image_mean"))
        resample = int(get("resample") if get("resample") is not None else Image.Resampling.BILINEAR)
        return cls(
            resize,
            resample,
            crop,
            values,
            background,
            image_aspect_ratio == "pad",
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """[3, H, W] float32 pixels of an RGB PIL image."""
        pixels = self._resized(image)
        out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
        for c in range(3):
            np.take(self.lut[c], pixels[:, :, c], out=out[c])
        return torch.from_numpy(out)

    def levels(self, image: Image.Image) -> torch.Tensor:
        """[3, H, W] uint8: the pixels `__call__` would normalise (see `normalise_levels`)."""
        return torch.from_numpy(np.ascontiguousarray(self._resized(image).transpose(2, 0, 1)))

    def _resized(self, image: Image.Image) -> np.ndarray:
        """[H, W, 3] uint8 after padding, resizing and cropping."""
        if self.pad_to_square and image.width != image.height:
            image = self._padded_and_resized(image)
        elif self.resize is not None:
            image = image.resize(self._target(image.width, image.height), resample=self.resample)
        pixels = np.asarray(image)
        if self.crop is not None:
            pixels = _center_crop(pixels, *self.crop)
        return pixels

    def _target(self, width: int, height: int) -> tuple[int, int]:
        kind, value = self.resize
        h, w = resized_shape(height, width, value) if kind == "shortest_edge" else value
        return w, h

    def _padded_and_resized(self, image: Image.Image) -> Image.Image:
        """expand2square, then the resize. PIL resizes in two passes, horizontal then vertical, with
        an 8-bit image between them; for a landscape image the horizontal pass of the background
        bands is a constant, so only the picture's rows go through it (the same pixels, ~20% less
        work). Portrait images take the plain path."""
        w, h = image.size
        side = max(w, h)
        if self.resize is None or w < h:
            square = Image.new(image.mode, (side, side), self.background)
            square.paste(image, ((side - w) // 2, (side - h) // 2))
            return (
                square
                if self.resize is None
                else square.resize(self._target(side, side), resample=self.resample)
            )
        out_w, out_h = self._target(side, side)
        band = Image.new(image.mode, (side, 1), self.background).resize((out_w, 1), resample=self.resample)
        between = Image.new(image.mode, (out_w, side), band.getpixel((0, 0)))
        between.paste(image.resize((out_w, h), resample=self.resample), (0, (side - h) // 2))
        return between.resize((out_w, out_h), resample=self.resample)


def normalisation_table(processor) -> np.ndarray | None:
    """[3, 256] float32: the processor's rescaled and normalised value of every 8-bit level per
    channel, computed with its own float32 arithmetic; None when it lacks the settings."""
    get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
    if any(get(n) is None for n in ("image_mean", "image_std", "do_rescale", "do_normalize")):
        return None
    levels = np.arange(256)
    values = np.stack([levels] * 3).astype(np.float32)
    if get("do_rescale"):
        values = (levels.astype(np.float64) * float(get("rescale_factor"))).astype(np.float32)
        values = np.stack([values] * 3)
    if get("do_normalize"):
        mean = np.asarray(get("image_mean"), dtype=np.float32).reshape(3, 1)
        std = np.asarray(get("image_std"), dtype=np.float32).reshape(3, 1)
        values = (values - mean) / std
    return np.ascontiguousarray(values, dtype=np.float32)


def normalise_levels(levels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [..., 3, H, W] -> float32 through a [3, 256] `normalisation_table` on the
    pixels' device: the same values as normalising on the CPU."""
    if levels.dtype != torch.uint8 or levels.ndim < 3 or levels.shape[-3] != table.shape[0]:
        raise ValueError(
            f"expected uint8 pixels [..., {table.shape[0]}, H, W], got {levels.dtype} {tuple(levels.shape)}"
        )
    table = table.to(levels.device)
    flat = levels.reshape(-1, table.shape[0], levels.shape[-2] * levels.shape[-1])
    out = torch.empty(flat.shape, dtype=table.dtype, device=levels.device)
    for c in range(table.shape[0]):  # one gather per channel: 8x faster on a CPU than fancy indexing
        out[:, c] = table[c].index_select(0, flat[:, c].reshape(-1).long()).view(flat.shape[0], -1)
    return out.view(levels.shape)


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center crop of an [H, W, C] array (zero padding when the crop is larger)."""
    h, w = pixels.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return pixels[top : top + height, left : left + width]
    padded = np.zeros((max(h, height), max(w, width), pixels.shape[2]), dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((padded.shape[0] - h) / 2), math.ceil((padded.shape[1] - w) / 2)
    padded[top_pad : top_pad + h, left_pad : left_pad + w] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[top : top + height, left : left + width]
