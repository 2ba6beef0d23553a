"""Visuals of dataset items -> the batch's `images`, `image_sizes`, `modalities` (LLaVA-NeXT's batch form).

Used by the padded collator (llava.data.collator) and the packed one (llava.data.packing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def instance_visuals(instance: dict) -> tuple[list, list | None, list] | None:
    """(pixels, sizes or None, modalities) of one dataset item, or None when it carries no visual."""
    if instance.get("images") is not None:
        images = list(instance["images"])
        sizes = instance.get("image_sizes")
        modalities = list(instance.get("modalities") or ["image"] * len(images))
        return images, (list(sizes) if sizes is not None else None), modalities
    if instance.get("image") is not None:  # the original item form: one image
        size = instance.get("image_size")
        return [instance["image"]], ([size] if size is not None else None), ["image"]
    return None


def batch_visuals(per_instance: Sequence[tuple[list, list | None, list]]) -> dict:
    """`images`, `image_sizes` and (with a video) `modalities` of visuals given per instance, in order."""
    images = [x for pixels, _, _ in per_instance for x in pixels]
    modalities = [m for _, _, mods in per_instance for m in mods]
    out = {}
    single = all(x.ndim == 3 for x in images) and all(m == "image" for m in modalities)
    if single and all(x.shape == images[0].shape for x in images):
        out["images"] = torch.stack(images)
    else:
        out["images"] = images
    if all(sizes is not None for _, sizes, _ in per_instance):
        out["image_sizes"] = [tuple(s) for _, sizes, _ in per_instance for s in sizes]
    if any(m != "image" for m in modalities):
        out["modalities"] = modalities
    return out
