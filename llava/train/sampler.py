"""Length-grouped samplers: plain, and by modality (image samples and text-only samples apart).

A sampler yields the GLOBAL order of one epoch; accelerate then deals consecutive per-device
batches of `batch_size` to the ranks in turn (batch k goes to rank k % world_size). The order is
built from megabatches of `batch_size * num_chunks` samples (`num_chunks` = world size x gradient
accumulation steps, i.e. every micro-batch of one optimizer step): each megabatch is sorted by
length and split into `num_chunks` per-device batches of equal size whose token totals are
balanced, so no rank waits on another's long samples.

Randomness comes only from a private generator seeded with `seed + epoch`: every rank computes
the same order without communicating, the order does not depend on the global RNG, and resuming
at step N (which replays the epoch's order and skips N batches) lands on the same samples.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def split_balanced(megabatch: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Split `megabatch` (sorted longest first) into `num_chunks` chunks of equal size, balancing totals.

    Each index goes to the chunk with the smallest total length that still has room. A megabatch
    that does not divide evenly (only the last of an epoch) is cut into consecutive chunks instead.
    """
    if len(megabatch) % num_chunks != 0:
        size = -(-len(megabatch) // num_chunks)
        return [list(megabatch[i : i + size]) for i in range(0, len(megabatch), size)]
    per_chunk = len(megabatch) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    heap = [(0, c) for c in range(num_chunks)]  # (total length, chunk); full chunks leave the heap
    for index in megabatch:
        total, c = heapq.heappop(heap)
        chunks[c].append(index)
        if len(chunks[c]) < per_chunk:
            heapq.heappush(heap, (total + lengths[index], c))
    return chunks


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, num_chunks: int, generator: torch.Generator
) -> list[int]:
    """A random permutation cut into megabatches, each sorted by length and split balanced."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = batch_size * num_chunks
    out: list[int] = []
    for start in range(0, len(perm), megabatch_size):
        mega = sorted(perm[start : start + megabatch_size], key=lambda i: lengths[i], reverse=True)
        for chunk in split_balanced(mega, lengths, num_chunks):
            out.extend(chunk)
    return out


def _tail_batches(mm_left: list[int], lang_left: list[int], batch_size: int) -> list[int]:
    """Order the leftovers so at most one per-device batch mixes modalities, and it is among the last two."""
    mm_full = len(mm_left) - len(mm_left) % batch_size
    lang_full = len(lang_left) - len(lang_left) % batch_size
    return lang_left[:lang_full] + mm_left[:mm_full] + mm_left[mm_full:] + lang_left[lang_full:]


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, num_chunks: int, generator: torch.Generator
) -> list[int]:
    """Like `length_grouped_indices`, but image (length > 0) and text-only (length < 0) samples apart.

    Both modalities are grouped separately into full megabatches, which are then shuffled together;
    what is left of each modality forms the tail of the epoch.
    """
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero: > 0 for image samples, < 0 for text-only ones")
    mm = [i for i, length in enumerate(lengths) if length > 0]
    lang = [i for i, length in enumerate(lengths) if length < 0]
    abs_lengths = [abs(length) for length in lengths]
    megabatch_size = batch_size * num_chunks

    def grouped(indices: list[int]) -> tuple[list[list[int]], list[int]]:
        if not indices:
            return [], []
        sub_lengths = [abs_lengths[i] for i in indices]
        order = [indices[j] for j in length_grouped_indices(sub_lengths, batch_size, num_chunks, generator)]
        n_full = len(order) - len(order) % megabatch_size
        megas = [order[s : s + megabatch_size] for s in range(0, n_full, megabatch_size)]
        return megas, order[n_full:]

    mm_megas, mm_left = grouped(mm)
    lang_megas, lang_left = grouped(lang)
    megas = mm_megas + lang_megas
    shuffled = [megas[i] for i in torch.randperm(len(megas), generator=generator).tolist()]
    out = [i for mega in shuffled for i in mega]
    out.extend(_tail_batches(mm_left, lang_left, batch_size))
    return out


class LengthGroupedSampler(Sampler[int]):
    """Seeded, distributed-aware length-grouped sampler (see the module docstring).

    `lengths`: per-sample token counts; with `group_by_modality=True`, signed modality lengths
    (positive for samples with an image, negative for text-only ones). `world_size` is the number
    of per-device batches in one optimizer step (world size x gradient accumulation steps), as in
    the original LLaVA.
    """

    def __init__(
        self,
        batch_size: int,
        world_size: int,
        lengths: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        group_by_modality: bool = False,
        seed: int = 0,
    ):
        if lengths is None:
            raise ValueError("LengthGroupedSampler needs the per-sample lengths")
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size ({batch_size}) and world_size ({world_size}) must be >= 1")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = list(lengths)
        self.group_by_modality = group_by_modality
        self.seed = int(seed) if generator is None else int(generator.initial_seed())
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def indices(self) -> list[int]:
        g = _generator(self.seed + self.epoch)
        if self.group_by_modality:
            return modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, g)
        return length_grouped_indices(self.lengths, self.batch_size, self.world_size, g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())
