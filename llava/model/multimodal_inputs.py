"""Splice image features into the token embeddings where IMAGE_TOKEN_INDEX stands.

This is the behaviour of the original ``prepare_inputs_labels_for_multimodal`` as a plain function:
padding is removed (by the attention mask), each image placeholder is replaced by that visual's
(image's or video's) feature rows (labels IGNORE_INDEX there), sequences are cut to ``max_length``
(``tokenizer_model_max_length``) and padded again on ``padding_side`` with a fresh attention
mask and position ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

MODALITIES = ("image", "video")


def visual_batch(images) -> tuple[torch.Tensor, list[int]]:
    """All crops / frames of ``images`` as one ``[sum_k, 3, H, W]`` batch (one tower call) and each
    visual's count ``k``. ``images``: ``[N,3,H,W]`` (N single-crop visuals), ``[N,K,3,H,W]``, or a list of
    ``[3,H,W]`` / ``[K,3,H,W]`` (K anyres crops of one image or K frames of one video)."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return images[None], [1]
        if images.ndim == 4:
            return images, [1] * images.shape[0]
        if images.ndim == 5:
            return images.flatten(0, 1), [images.shape[1]] * images.shape[0]
        raise ValueError(f"images has shape {tuple(images.shape)}; expected [N,3,H,W] or [N,K,3,H,W]")
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(
            f"images must be a tensor or a non-empty list of tensors, got {type(images).__name__}"
        )
    crops = []
    for i, x in enumerate(images):
        if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"images[{i}] is {shape}; expected [3,H,W] or [K,3,H,W] (crops or frames)")
        x = x[None] if x.ndim == 3 else x
        if crops and x.shape[1:] != crops[0].shape[1:]:
            raise ValueError(
                f"images[{i}] has crops of {tuple(x.shape[1:])} but images[0] of {tuple(crops[0].shape[1:])}; "
                "every crop and frame must have the vision tower's input size"
            )
        crops.append(x)
    return torch.cat(crops, dim=0), [c.shape[0] for c in crops]


def check_modalities(modalities, num_visuals: int) -> list[str]:
    """One "image" | "video" per visual (None: all "image"; one string: that for all)."""
    if modalities is None:
        return ["image"] * num_visuals
    if isinstance(modalities, str):
        modalities = [modalities] * num_visuals
    modalities = list(modalities)
    if len(modalities) != num_visuals:
        raise ValueError(
            f"{len(modalities)} modalities were given for {num_visuals} visuals (entries of images); give one "
            f"'image' or 'video' per entry, in order"
        )
    for i, m in enumerate(modalities):
        if m not in MODALITIES:
            raise ValueError(f"modalities[{i}] is {m!r}; valid: {', '.join(MODALITIES)}")
    return modalities


def count_image_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[int]:
    is_image = input_ids == IMAGE_TOKEN_INDEX
    if attention_mask is not None:
        is_image &= attention_mask.bool()
    return is_image.sum(dim=1).tolist()


def match_images_to_tokens(counts: Sequence[int], num_images: int) -> bool:
    """Whether text-only samples carry a dummy image each (the original collator's convention).

    Returns False when every image belongs to an image token, True when the batch follows the
    dummy convention; raises ValueError when neither fits.
    """
    num_tokens = sum(counts)
    text_only = sum(1 for c in counts if c == 0)
    if num_images == num_tokens:
        return False
    if text_only and num_images == num_tokens + text_only:
        return True
    raise ValueError(
        f"the batch holds {num_tokens} image tokens (IMAGE_TOKEN_INDEX {IMAGE_TOKEN_INDEX}; per sample: "
        f"{list(counts)}) but {num_images} images were given. Each '<image>' in a prompt needs exactly one "
        "image (text-only samples may instead carry one dummy image each, as the original collator does); "
        "check that the prompt was tokenized with tokenizer_image_token and that images match the prompts."
    )


def splice_image_features(
    input_ids: torch.Tensor,
    image_features: Sequence[torch.Tensor],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
):
    """Returns ``(inputs_embeds [B,T,D], attention_mask [B,T] bool, position_ids [B,T], labels [B,T])``.

    ``image_features`` holds one ``[n_i, D]`` tensor per image, in the order the placeholders
    appear in the batch (sample by sample, left to right).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    keep = (
        attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    )
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
    counts = count_image_tokens(input_ids, keep)
    dummy_for_text_only = match_images_to_tokens(counts, len(image_features))

    # One embedding call for the whole batch (placeholders embedded as id 0, then replaced).
    text_embeds = embed_tokens(input_ids.clamp(min=0))
    pieces_per_sample, labels_per_sample = [], []
    next_image = 0
    for b in range(input_ids.shape[0]):
        ids, embeds, labs = input_ids[b][keep[b]], text_embeds[b][keep[b]], labels[b][keep[b]]
        cuts = [-1] + torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist() + [ids.shape[0]]
        pieces, piece_labels = [], []
        for i in range(len(cuts) - 1):
            pieces.append(embeds[cuts[i] + 1 : cuts[i + 1]])
            piece_labels.append(labs[cuts[i] + 1 : cuts[i + 1]])
            if i < len(cuts) - 2:
                feats = image_features[next_image].to(dtype=embeds.dtype, device=embeds.device)
                next_image += 1
                pieces.append(feats)
                piece_labels.append(
                    torch.full((feats.shape[0],), IGNORE_INDEX, dtype=labs.dtype, device=labs.device)
                )
        if counts[b] == 0 and dummy_for_text_only:
            # Keep the (unused) dummy image in the graph so every parameter gets a gradient.
            pieces.append(image_features[next_image][0:0].to(dtype=embeds.dtype, device=embeds.device))
            next_image += 1
        pieces_per_sample.append(torch.cat(pieces))
        labels_per_sample.append(torch.cat(piece_labels))

    if max_length is not None:
        pieces_per_sample = [x[:max_length] for x in pieces_per_sample]
        labels_per_sample = [x[:max_length] for x in labels_per_sample]
    return _pad(pieces_per_sample, labels_per_sample, padding_side)


def _pad(embeds: list[torch.Tensor], labels: list[torch.Tensor], padding_side: str):
    batch, width = len(embeds), max(x.shape[0] for x in embeds)
    dim, dtype, device = embeds[0].shape[1], embeds[0].dtype, embeds[0].device
    out = torch.zeros((batch, width, dim), dtype=dtype, device=device)
    out_labels = torch.full((batch, width), IGNORE_INDEX, dtype=labels[0].dtype, device=device)
    mask = torch.zeros((batch, width), dtype=torch.bool, device=device)
    positions = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, (emb, lab) in enumerate(zip(embeds, labels)):
        n = emb.shape[0]
        span = slice(width - n, width) if padding_side == "left" else slice(0, n)
        out[i, span] = emb
        out_labels[i, span] = lab
        mask[i, span] = True
        positions[i, span] = torch.arange(n, device=device)
    return out, mask, positions, out_labels
