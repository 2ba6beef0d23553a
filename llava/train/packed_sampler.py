"""The batch sampler of `--packing True`: every optimizer step packs the same samples as unpacked.

The epoch order is the one `LengthGroupedSampler` would give (modality-grouped, length-grouped
or a plain seeded permutation), cut into the same megabatches of `batch_size x num_chunks`
samples (`num_chunks` = world size x gradient accumulation steps). Each megabatch is packed into
rows of at most `capacity` tokens by first-fit-decreasing, and the rows are dealt to the
`num_chunks` micro-batches of the step, balancing rows and tokens. So a step sees exactly the
samples it would see unpacked, and with the loss normalised by the step's target-token count
(the HF Trainer's `num_items_in_batch`) packed and unpacked training take the same steps.

Yields lists of dataset indices, one list per micro-batch, row after row; the collator's
`next_fit` recovers the rows (see llava.data.packing). Accelerate deals the micro-batches to the
ranks in turn, as it does the per-device batches of the unpacked sampler.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import torch

from llava.data.packing import checked_size, first_fit_decreasing
from llava.train.sampler import _generator, length_grouped_indices, modality_length_grouped_indices


def deal_rows(
    rows: list[list[int]], lengths: Sequence[int], num_chunks: int, capacity: int, layout: str = "flat"
) -> list[list[int]]:
    """Split `rows` (in creation order) into `num_chunks` micro-batches of ⌊R/C⌋ or ⌈R/C⌉ rows each.

    layout "flat" (samples end to end, compute follows tokens): largest row first to the
    micro-batch with the fewest tokens. layout "rows" ([rows, widest row], compute follows the
    widest row): rows of similar length together, so little is padded. Rows keep creation order
    inside a micro-batch (what `next_fit` needs to recover them).
    """
    if layout not in ("flat", "rows"):
        raise ValueError(f"layout must be 'flat' or 'rows', got {layout!r}")
    totals = [sum(checked_size(lengths[i], capacity, f"sample {i}") for i in row) for row in rows]
    per_chunk, extra = divmod(len(rows), num_chunks)
    limit = [per_chunk + (1 if c < extra else 0) for c in range(num_chunks)]
    by_size = sorted(range(len(rows)), key=lambda r: -totals[r])
    chosen: list[list[int]] = [[] for _ in range(num_chunks)]
    if layout == "rows":
        start = 0
        for c in range(num_chunks):
            chosen[c], start = by_size[start : start + limit[c]], start + limit[c]
    else:
        heap = [(0, c) for c in range(num_chunks) if limit[c] > 0]
        for r in by_size:
            total, c = heapq.heappop(heap)
            chosen[c].append(r)
            if len(chosen[c]) < limit[c]:
                heapq.heappush(heap, (total + totals[r], c))
    return [[i for r in sorted(rs) for i in rows[r]] for rs in chosen]


class PackedBatchSampler:
    """Micro-batches of packed rows; see the module docstring.

    `lengths`: tokens the LLM sees per sample (image tokens counted, already cut to the length
    budget: one longer than `capacity` is a ValueError); with `group_by_modality=True` signed
    (> 0 image samples, < 0 text-only), as for LengthGroupedSampler.
    `layout`: how the model lays packed rows out (llava.model.packed_inputs.layout_for), which
    decides how rows are dealt to micro-batches (see `deal_rows`).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        num_chunks: int,
        capacity: int,
        group_by_modality: bool = False,
        group_by_length: bool = False,
        seed: int = 0,
        layout: str = "flat",
    ):
        if batch_size < 1 or num_chunks < 1:
            raise ValueError(f"batch_size ({batch_size}) and num_chunks ({num_chunks}) must be >= 1")
        if capacity < 1:
            raise ValueError(f"packing capacity (--model_max_length) must be >= 1, got {capacity}")
        if not lengths:
            raise ValueError("PackedBatchSampler needs the per-sample lengths of a non-empty dataset")
        self.lengths = list(lengths)
        self.sizes = [checked_size(n, capacity, f"sample {i}") for i, n in enumerate(self.lengths)]
        self.batch_size = batch_size
        self.num_chunks = num_chunks
        self.capacity = int(capacity)
        self.group_by_modality = group_by_modality
        self.group_by_length = group_by_length
        self.seed = int(seed)
        self.layout = layout
        self.epoch = 0

    @property
    def sampler(self):
        # accelerate's DataLoaderShard.set_epoch looks for `batch_sampler[.batch_sampler].sampler.set_epoch`.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def megabatch_size(self) -> int:
        return self.batch_size * self.num_chunks

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.megabatch_size) * self.num_chunks

    def order(self) -> list[int]:
        """The epoch's sample order, as the unpacked sampler of the same flags gives it."""
        g = _generator(self.seed + self.epoch)
        if self.group_by_modality:
            return modality_length_grouped_indices(self.lengths, self.batch_size, self.num_chunks, g)
        if self.group_by_length:
            return length_grouped_indices(self.sizes, self.batch_size, self.num_chunks, g)
        return torch.randperm(len(self.lengths), generator=g).tolist()

    def _rows(self, mega: list[int], order: list[int]) -> list[list[int]]:
        rows = first_fit_decreasing(mega, self.sizes, self.capacity)
        if len(rows) >= self.num_chunks:
            return rows
        # Too few rows for every micro-batch of the step: one sample per row, and (only for a
        # tail smaller than the number of micro-batches) samples from the epoch's start again.
        rows = [[i] for i in sorted(mega, key=lambda i: -self.sizes[i])]
        k = 0
        while len(rows) < self.num_chunks:
            rows.append([order[k % len(order)]])
            k += 1
        return rows

    def batches(self) -> list[list[int]]:
        order = self.order()
        out: list[list[int]] = []
        for start in range(0, len(order), self.megabatch_size):
            mega = order[start : start + self.megabatch_size]
            rows = self._rows(mega, order)
            out.extend(deal_rows(rows, self.sizes, self.num_chunks, self.capacity, self.layout))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())
