"""Padding-free packing: samples concatenated into rows of at most `capacity` tokens.

Lengths here are what the LLM sees (image tokens counted: llava.data.length_budget). The dataset
has cut every sample to the budget, so a sample longer than `capacity` is an error here, never
cut or clamped. Two greedy rules, used together:

- `first_fit_decreasing` (the sampler, on a whole megabatch): longest sample first, each into the
  first row with room. A sample that ended in row j did not fit the final slack of any row
  i < j (it did not fit when it was placed, and rows only fill up afterwards).
- `next_fit` (the collator, on one micro-batch in the order the sampler gave): start a new row when
  the next sample does not fit. Because of the property above, next-fit over rows laid out one
  after the other gives back exactly the rows first-fit-decreasing made, so the row plan needs
  no side channel from the sampler to the collator.

`collate_packed` builds the batch the model's packed path (llava.model.packed_inputs) expects:
rows of token ids with `position_ids` restarting at 0 for every sample, `attention_mask` marking
real tokens (pads at the end of a row), and each sample's first label set to IGNORE_INDEX so the
last token of one sample never learns to predict the first token of the next (unpacked, that
label is never a target either: causal-LM losses drop label 0 of every row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.batch_visuals import batch_visuals, instance_visuals
from llava.data.length_budget import LengthBudget


def checked_size(length: int, capacity: int, what: str = "a sample") -> int:
    """`length` (signed modality lengths allowed) as a size, or ValueError when it exceeds `capacity`."""
    size = abs(int(length))
    if size > capacity:
        raise ValueError(
            f"{what} is {size} tokens (image tokens included), over the packing capacity {capacity} "
            "(--model_max_length): the dataset cuts samples to the length budget, so these lengths "
            "were not made by it"
        )
    return size


def first_fit_decreasing(indices: Sequence[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of `indices` (each row's total length <= capacity), longest sample first, each into the
    first row with room. Ties keep the order of `indices`. Rows come out in creation order."""
    if capacity < 1:
        raise ValueError(f"packing capacity must be >= 1, got {capacity}")
    sizes = [checked_size(lengths[i], capacity, f"sample {i}") for i in indices]
    order = sorted(range(len(indices)), key=lambda k: -sizes[k])
    room = np.empty(len(indices), dtype=np.int64)
    rows: list[list[int]] = []
    for k in order:
        size = sizes[k]
        fits = np.flatnonzero(room[: len(rows)] >= size)
        if fits.size:
            r = int(fits[0])
        else:
            r = len(rows)
            rows.append([])
            room[r] = capacity
        rows[r].append(indices[k])
        room[r] -= size
    return rows


def next_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Positions 0..n-1 cut into consecutive rows: a new row when the next one does not fit."""
    rows: list[list[int]] = []
    used = capacity + 1
    for k, n in enumerate(lengths):
        n = checked_size(n, capacity, f"instance {k}")
        if used + n > capacity:
            rows.append([])
            used = 0
        rows[-1].append(k)
        used += n
    return rows


def llm_length(input_ids: torch.Tensor, num_image_tokens: int) -> int:
    """Tokens the LLM sees for one sample: each image placeholder becomes `num_image_tokens`
    (`LengthBudget.sequence_length`; a placeholder takes at least its own place)."""
    return LengthBudget(None, max(int(num_image_tokens), 1)).sequence_length(input_ids)


def collate_packed(
    instances: Sequence[dict], pad_id: int, capacity: int, num_image_tokens: int = 0
) -> dict[str, torch.Tensor | list]:
    """Pack `instances` (dataset items, already cut to fit `capacity`) into rows by `next_fit`;
    an instance over `capacity` is a ValueError naming it. An instance's size is its `length`
    (the tokens the LLM sees, exact for every visual: the dataset gives it), else its ids with each
    placeholder counted as `num_image_tokens`.

    Returns `input_ids`, `labels`, `attention_mask`, `position_ids` (all [rows, width]) and, when
    the instances carry visuals, `images` / `image_sizes` / `modalities` (llava.data.batch_visuals)
    holding only the real visuals in the order their placeholders appear (row by row), or one dummy
    image when no sample of the batch has one, so the vision modules stay in the graph (as the
    unpacked collator's zero images do).
    """
    ids = [torch.as_tensor(inst["input_ids"]) for inst in instances]
    labels = [torch.as_tensor(inst["labels"]).clone() for inst in instances]
    for n, (a, b) in enumerate(zip(ids, labels)):
        if a.shape != b.shape:
            raise ValueError(f"instance {n}: input_ids {tuple(a.shape)} and labels {tuple(b.shape)} differ")
        if a.numel() == 0:
            raise ValueError(f"instance {n} has no tokens")
        b[0] = IGNORE_INDEX  # never predicted from the previous sample's last token
    sizes = [
        int(inst["length"]) if inst.get("length") is not None else llm_length(x, num_image_tokens)
        for inst, x in zip(instances, ids)
    ]
    rows = next_fit(sizes, capacity)
    width = max(sum(len(ids[k]) for k in row) for row in rows)
    shape = (len(rows), width)
    batch_ids = torch.full(shape, pad_id, dtype=torch.long)
    batch_labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.bool)
    positions = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for k in row:
            n = len(ids[k])
            batch_ids[r, at : at + n] = ids[k]
            batch_labels[r, at : at + n] = labels[k]
            positions[r, at : at + n] = torch.arange(n)
            mask[r, at : at + n] = True
            at += n
        positions[r, at:] = torch.arange(width - at)  # pads: a segment of their own
    batch = dict(input_ids=batch_ids, labels=batch_labels, attention_mask=mask, position_ids=positions)

    visuals = [instance_visuals(inst) for inst in instances]
    if any(v is not None for v in visuals):
        order = [k for row in rows for k in row]
        real = [k for k in order if (ids[k] == IMAGE_TOKEN_INDEX).any()]
        for k in real:
            if visuals[k] is None:
                raise ValueError(f"instance {k} has an <image> placeholder but carries no image")
        if real:
            chosen = [visuals[k] for k in real]
        else:  # one stand-in keeps the vision modules in the graph
            first = next(v for v in visuals if v is not None)
            chosen = [([first[0][0]], None if first[1] is None else [first[1][0]], [first[2][0]])]
        batch.update(batch_visuals(chosen))
    return batch


def row_fill(lengths: Sequence[int], capacity: int) -> float:
    """Real tokens / (rows x widest row) when `lengths` are packed by `next_fit` in this order."""
    rows = next_fit(lengths, capacity)
    totals = [sum(checked_size(lengths[k], capacity) for k in row) for row in rows]
    return sum(totals) / (len(rows) * max(totals))
