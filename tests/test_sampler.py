"""Length-grouped samplers: coverage, modality purity, seeding, grouping within megabatches."""

import random

import pytest
import torch
from torch.utils.data import BatchSampler

from llava.train.sampler import LengthGroupedSampler, length_grouped_indices, split_balanced


def _modality_lengths(n_img, n_txt, seed=0):
    rng = random.Random(seed)
    lengths = [rng.randint(20, 900) for _ in range(n_img)] + [-rng.randint(5, 900) for _ in range(n_txt)]
    rng.shuffle(lengths)
    return lengths


def _batches(order, batch_size):
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@pytest.mark.parametrize("group_by_modality", [False, True])
@pytest.mark.parametrize(
    ("n_img", "n_txt", "bs", "ws"), [(37, 23, 4, 2), (64, 0, 8, 1), (5, 90, 3, 4), (1, 1, 2, 2)]
)
def test_every_index_exactly_once_per_epoch(group_by_modality, n_img, n_txt, bs, ws):
    lengths = _modality_lengths(n_img, n_txt)
    if not group_by_modality:
        lengths = [abs(x) for x in lengths]
    sampler = LengthGroupedSampler(bs, ws, lengths=lengths, group_by_modality=group_by_modality, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(lengths)))
        assert len(sampler) == len(lengths)


@pytest.mark.parametrize(
    ("n_img", "n_txt", "bs", "ws"), [(37, 23, 4, 2), (101, 57, 5, 3), (9, 7, 4, 1), (30, 2, 4, 2)]
)
def test_no_mixed_modality_batch_except_at_the_end(n_img, n_txt, bs, ws):
    lengths = _modality_lengths(n_img, n_txt, seed=n_img)
    for seed in range(5):
        order = list(LengthGroupedSampler(bs, ws, lengths=lengths, group_by_modality=True, seed=seed))
        batches = _batches(order, bs)
        mixed = [k for k, b in enumerate(batches) if len({lengths[i] > 0 for i in b}) > 1]
        assert len(mixed) <= 1
        if mixed:  # only possible when neither modality fills whole batches
            assert mixed[0] >= len(batches) - 2
            assert n_img % bs and n_txt % bs


def test_modality_purity_seen_by_each_rank_through_accelerate_sharding():
    from accelerate.data_loader import BatchSamplerShard

    lengths = _modality_lengths(64, 40, seed=1)
    bs, ws = 4, 2
    sampler = LengthGroupedSampler(bs, ws, lengths=lengths, group_by_modality=True, seed=7)
    seen = []
    for rank in range(ws):
        shard = BatchSamplerShard(
            BatchSampler(sampler, bs, drop_last=False), num_processes=ws, process_index=rank
        )
        for batch in shard:
            assert len({lengths[i] > 0 for i in batch}) == 1, f"rank {rank} got a mixed batch {batch}"
            seen.extend(batch)
    assert sorted(set(seen)) == list(range(len(lengths)))


def test_same_order_for_same_seed_on_every_rank_independent_of_global_rng():
    lengths = _modality_lengths(50, 30)
    orders = []
    for rank in range(3):
        torch.manual_seed(1000 + rank)  # ranks' global RNG differ; the order must not
        random.seed(rank)
        s = LengthGroupedSampler(4, 3, lengths=lengths, group_by_modality=True, seed=42)
        s.set_epoch(1)
        orders.append(list(s))
    assert orders[0] == orders[1] == orders[2]
    s = LengthGroupedSampler(4, 3, lengths=lengths, group_by_modality=True, seed=42)
    s.set_epoch(1)
    assert list(s) == list(s) == orders[0]  # replayable (resume skips batches of the same order)
    s.set_epoch(2)
    assert list(s) != orders[0]
    other = LengthGroupedSampler(4, 3, lengths=lengths, group_by_modality=True, seed=43)
    other.set_epoch(1)
    assert list(other) != orders[0]
    gen = torch.Generator().manual_seed(42)  # the original's `generator=` argument still works
    from_gen = LengthGroupedSampler(4, 3, lengths=lengths, group_by_modality=True, generator=gen)
    from_gen.set_epoch(1)
    assert list(from_gen) == orders[0]


def test_split_balanced_hand_checked():
    lengths = [10, 1, 8, 3]
    # sorted longest first: 0(10), 2(8), 3(3), 1(1) -> 10 to chunk 0, 8 to chunk 1, 3 to the lighter
    # chunk 1 (now full), 1 to chunk 0.
    assert split_balanced([0, 2, 3, 1], lengths, 2) == [[0, 1], [2, 3]]
    assert split_balanced([0, 2, 3], lengths, 2) == [[0, 2], [3]]  # uneven: consecutive cut


def test_single_megabatch_order_is_independent_of_the_shuffle():
    lengths = [3, 10, 1, 8]
    for seed in range(6):
        out = length_grouped_indices(
            lengths, batch_size=2, num_chunks=2, generator=torch.Generator().manual_seed(seed)
        )
        assert out == [1, 2, 3, 0]  # chunks {10, 1} and {8, 3}: totals 11 and 11


def test_length_grouping_within_megabatches():
    rng = random.Random(0)
    lengths = [rng.randint(1, 1000) for _ in range(96)]
    bs, ws, seed = 4, 3, 11
    order = list(LengthGroupedSampler(bs, ws, lengths=lengths, seed=seed))
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    mega = bs * ws
    for start in range(0, len(order), mega):
        block = order[start : start + mega]
        assert sorted(block) == sorted(perm[start : start + mega])  # megabatches are the shuffled slices
        chunks = _batches(block, bs)
        for chunk in chunks:  # each per-device batch sorted longest first
            assert [lengths[i] for i in chunk] == sorted((lengths[i] for i in chunk), reverse=True)
        totals = [sum(lengths[i] for i in c) for c in chunks]
        assert max(totals) - min(totals) <= max(lengths[i] for i in block)
        assert chunks[0][0] == max(block, key=lambda i: lengths[i])  # the longest leads the megabatch


def test_rejects_zero_length_and_missing_lengths():
    with pytest.raises(ValueError, match="non-zero"):
        list(LengthGroupedSampler(2, 1, lengths=[3, 0, -2], group_by_modality=True))
    with pytest.raises(ValueError, match="lengths"):
        LengthGroupedSampler(2, 1, lengths=None)
