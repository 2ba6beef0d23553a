"""The model side of padding-free packing: splice image features into packed rows.

A packed batch (llava.data.packing.collate_packed) holds several samples per row: `position_ids`
restart at 0 where a sample starts, `attention_mask` marks real tokens (pads at a row's end).
Here each image placeholder becomes its image's feature rows, every sample's positions are
counted again after the splice (image tokens included), each sample's first label becomes
IGNORE_INDEX (the previous sample's last token never predicts it), and the result is laid out
for the attention implementation:

- "rows": [rows, widest row] with `attention_mask=None`. transformers then finds the samples
  from the restarting `position_ids` (masking_utils.find_packed_sequence_indices) and builds a
  block-diagonal causal mask for sdpa / eager / flex_attention. Pads form a segment of their own.
- "flat": all rows end to end as one sequence [1, N] with no pads, plus the flash-attention
  varlen arguments `cu_seq_lens_q/k` and `max_length_q/k` (flash_attention_2/3 and the torch
  varlen attention of llava.model.varlen_attention use them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

FLAT_ATTENTION = ("flash_attention_2", "flash_attention_3", "torch_varlen")


def sample_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """True where a new sample starts: the first position, and wherever a position is not the
    previous one plus 1 (the rule transformers uses to detect packed sequences)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def is_packed_batch(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> bool:
    """Whether some row holds more than one sample: a restart of `position_ids` between two real
    tokens (a restart after left padding does not count)."""
    if position_ids is None or position_ids.ndim != 2 or position_ids.shape[1] < 2:
        return False
    restart = sample_starts(position_ids)[:, 1:]
    if attention_mask is not None:
        real = attention_mask.bool()
        restart = restart & real[:, 1:] & real[:, :-1]
    return bool(restart.any())


def layout_for(attn_implementation: str | None) -> str:
    name = attn_implementation or ""
    return "flat" if name in FLAT_ATTENTION or name.endswith("flash-attn2") else "rows"


def _splice_row(ids, embeds, labels, starts, features, next_image):
    """One row: (embeds, labels, starts) with every image placeholder replaced by its features."""
    where = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
    if not where:
        return embeds, labels, starts, next_image
    e_parts, l_parts, s_parts, prev = [], [], [], 0
    for p in where:
        feats = features[next_image].to(dtype=embeds.dtype, device=embeds.device)
        next_image += 1
        n = feats.shape[0]
        e_parts += [embeds[prev:p], feats]
        l_parts += [labels[prev:p], labels.new_full((n,), IGNORE_INDEX)]
        image_starts = starts.new_zeros(n)
        image_starts[0] = starts[p]  # an image that opens a sample opens it with its first row
        s_parts += [starts[prev:p], image_starts]
        prev = p + 1
    e_parts.append(embeds[prev:])
    l_parts.append(labels[prev:])
    s_parts.append(starts[prev:])
    return torch.cat(e_parts), torch.cat(l_parts), torch.cat(s_parts), next_image


def positions_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... counting again at every True of `starts` (1-D)."""
    idx = torch.arange(starts.shape[0], device=starts.device)
    return idx - torch.where(starts, idx, 0).cummax(0).values


def splice_packed(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    image_features: Sequence[torch.Tensor] | None,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    layout: str = "rows",
) -> dict:
    """Inputs for the LLM's forward from a packed batch: `inputs_embeds`, `position_ids`, `labels`
    (None when `labels` is None) and, for the "flat" layout, the varlen kwargs.

    `image_features`: one [n_i, D] tensor per image placeholder, in row-major order; or a single
    dummy image's features when the batch has no placeholder (kept in the graph, contributing
    nothing, so the vision modules get gradients on every rank as in unpacked training).
    """
    if layout not in ("rows", "flat"):
        raise ValueError(f"packed layout must be 'rows' or 'flat', got {layout!r}")
    keep = (
        attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    )
    n_placeholders = int(((input_ids == IMAGE_TOKEN_INDEX) & keep).sum())
    features = list(image_features or [])
    dummy = None
    if n_placeholders == 0 and len(features) == 1:
        dummy = features.pop()
    if len(features) != n_placeholders:
        raise ValueError(
            f"the packed batch holds {n_placeholders} image placeholders (IMAGE_TOKEN_INDEX {IMAGE_TOKEN_INDEX}) "
            f"but {len(features)} images were given; a packed batch carries exactly one image per "
            "placeholder (or one dummy image when it has none)"
        )
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
    text_embeds = embed_tokens(input_ids.clamp(min=0))
    starts = sample_starts(position_ids)
    rows, next_image = [], 0
    for r in range(input_ids.shape[0]):
        k = keep[r]
        row_starts = starts[r][k].clone()
        if row_starts.numel():
            row_starts[0] = True
        e, lab, s, next_image = _splice_row(
            input_ids[r][k], text_embeds[r][k], labels[r][k].clone(), row_starts, features, next_image
        )
        lab = lab.masked_fill(s, IGNORE_INDEX)
        rows.append((e, lab, s))
    if dummy is not None:
        e0 = rows[0][0]
        rows[0] = (torch.cat([e0, dummy[0:0].to(dtype=e0.dtype, device=e0.device)]), rows[0][1], rows[0][2])
    return _flat(rows) if layout == "flat" else _rows(rows)


def _flat(rows) -> dict:
    embeds = torch.cat([e for e, _, _ in rows])
    labels = torch.cat([lab for _, lab, _ in rows])
    starts = torch.cat([s for _, _, s in rows])
    cu = torch.cat(
        [torch.nonzero(starts).flatten(), torch.tensor([starts.shape[0]], device=starts.device)]
    ).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    return dict(
        inputs_embeds=embeds[None],
        position_ids=positions_from_starts(starts)[None],
        labels=labels[None],
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=max_len,
        max_length_k=max_len,
    )


def _rows(rows) -> dict:
    width = max(e.shape[0] for e, _, _ in rows)
    dim, ref = rows[0][0].shape[1], rows[0][0]
    embeds = ref.new_zeros((len(rows), width, dim))
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=rows[0][1].dtype, device=ref.device)
    positions = torch.zeros((len(rows), width), dtype=torch.long, device=ref.device)
    for r, (e, lab, s) in enumerate(rows):
        n = e.shape[0]
        embeds[r, :n] = e
        labels[r, :n] = lab
        positions[r, :n] = positions_from_starts(s)
        positions[r, n:] = torch.arange(width - n, device=ref.device)  # pads: a segment of their own
    return dict(inputs_embeds=embeds, position_ids=positions, labels=labels)
