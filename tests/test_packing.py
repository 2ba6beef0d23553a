"""Padding-free packing (`--packing True`): exactness against unpacked training, isolation of the
samples of a row, the packed sampler, the token cache and the fast image path.

The model checks run the tiny LLaVA in float32 on the CPU with three attention implementations:
sdpa and eager (rows [R, W]; transformers builds the block-diagonal mask from the restarting
position ids) and torch_varlen (samples end to end; its per-sample SDPA reference path on CPU).
"""

import json

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.packing import collate_packed, first_fit_decreasing, llm_length, next_fit
from llava.model.packed_inputs import is_packed_batch
from llava.model.varlen_attention import register_varlen_attention
from llava.train.packed_sampler import PackedBatchSampler
from llava.train.sampler import LengthGroupedSampler
from tests.model_helpers import build_tiny_llava, images

N_IMG = 16  # tiny CLIP: 32 px, patch 8
IMPLEMENTATIONS = ("sdpa", "eager", "torch_varlen")
# FlexAttention has no backward on a CPU: only the forward-only isolation test runs it here.
FORWARD_ONLY = (pytest.param("flex_attention", marks=pytest.mark.slow),)


@pytest.fixture(scope="module")
def model(tiny_kit):
    register_varlen_attention()
    return build_tiny_llava(tiny_kit)


def _sample(g, n_text, image=None):
    """An instance as the dataset gives it: BOS, [image], text; the second half are targets."""
    ids = torch.randint(300, 3000, (n_text,), generator=g)
    ids[0] = 1
    if image is not None:
        ids = torch.cat([ids[:2], torch.tensor([IMAGE_TOKEN_INDEX]), ids[2:]])
    labels = torch.where(torch.arange(len(ids)) >= len(ids) // 2, ids, IGNORE_INDEX)
    labels[ids == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    return dict(input_ids=ids, labels=labels, image=image if image is not None else torch.zeros(3, 32, 32))


@pytest.fixture(scope="module")
def instances():
    g = torch.Generator().manual_seed(0)
    img = images(3, seed=1)
    every_token = _sample(g, 7)
    every_token["labels"] = every_token["input_ids"].clone()  # label 0 a target too: unused unpacked
    return [
        _sample(g, 9, img[0]),
        every_token,
        _sample(g, 20),
        _sample(g, 6, img[1]),
        _sample(g, 5),
        _sample(g, 12, img[2]),
    ]


CAPACITY = 48  # rows [0, 1] [2, 3, 4] [5]: 25+7 | 20+22+5 | 28 tokens the LLM sees


def _alone(model, inst):
    has_image = (inst["input_ids"] == IMAGE_TOKEN_INDEX).any()
    return model(
        input_ids=inst["input_ids"][None],
        labels=inst["labels"][None],
        images=inst["image"][None] if has_image else None,
    )


def _targets(labels):
    return int((labels[1:] != IGNORE_INDEX).sum())


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _sample_logits(logits, batch, instances, flat):
    """Per instance, its slice of the packed logits (rows laid out as next_fit made them)."""
    rows = next_fit([llm_length(x["input_ids"], N_IMG) for x in instances], CAPACITY)
    out, at_flat = {}, 0
    for r, row in enumerate(rows):
        at = 0
        for k in row:
            n = llm_length(instances[k]["input_ids"], N_IMG)
            out[k] = logits[0, at_flat : at_flat + n] if flat else logits[r, at : at + n]
            at, at_flat = at + n, at_flat + n
    return out


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_packed_batch_equals_samples_one_by_one(model, instances, impl):
    """Same loss (per target token over the batch), same gradients, same logits per sample."""
    model.set_attn_implementation(impl)
    batch = collate_packed(instances, pad_id=0, capacity=CAPACITY, num_image_tokens=N_IMG)
    assert batch["input_ids"].shape[0] >= 2 and is_packed_batch(
        batch["position_ids"], batch["attention_mask"]
    )
    counts = [_targets(x["labels"]) for x in instances]
    total = sum(counts)
    # What the HF Trainer counts for num_items_in_batch is the same packed as unpacked.
    assert int(batch["labels"][..., 1:].ne(IGNORE_INDEX).sum()) == total

    model.zero_grad()
    loss_sum, logits_alone = 0.0, []
    for inst, n in zip(instances, counts):
        out = _alone(model, inst)
        (out.loss * n / total).backward()
        loss_sum += out.loss.item() * n
        logits_alone.append(out.logits[0].detach())
    expected_grads = _grads(model)

    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    assert abs(out.loss.item() - loss_sum / total) < 1e-5
    grads = _grads(model)
    assert grads.keys() == expected_grads.keys() and any("mm_projector" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=0, msg=name)
    with torch.no_grad():
        same = model(**batch, num_items_in_batch=torch.tensor(total)).loss  # the Trainer's normalisation
    assert abs(same.item() - loss_sum / total) < 1e-5
    flat = impl == "torch_varlen"
    assert out.logits.shape[0] == (1 if flat else batch["input_ids"].shape[0])
    for k, logits in _sample_logits(out.logits.detach(), batch, instances, flat).items():
        torch.testing.assert_close(logits, logits_alone[k], atol=1e-5, rtol=0)
    model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS + FORWARD_ONLY)
@pytest.mark.parametrize("victim", [0, 2, 3])  # opening a row (image / text-only), inside a row
def test_no_token_attends_across_samples(model, instances, impl, victim):
    model.set_attn_implementation(impl)
    flat = impl == "torch_varlen"
    batch = collate_packed(instances, pad_id=0, capacity=CAPACITY, num_image_tokens=N_IMG)
    changed = [dict(x) for x in instances]
    ids = changed[victim]["input_ids"].clone()
    ids[ids != IMAGE_TOKEN_INDEX] = (ids[ids != IMAGE_TOKEN_INDEX] * 7) % 3000 + 5
    changed[victim] = dict(changed[victim], input_ids=ids, image=-changed[victim]["image"])
    other = collate_packed(changed, pad_id=0, capacity=CAPACITY, num_image_tokens=N_IMG)
    with torch.no_grad():
        before = _sample_logits(model(**batch).logits, batch, instances, flat)
        after = _sample_logits(model(**other).logits, other, changed, flat)
    model.set_attn_implementation("sdpa")
    for k in before:
        if k == victim:
            assert not torch.allclose(before[k], after[k], atol=1e-3)
        else:
            torch.testing.assert_close(after[k], before[k], atol=1e-6, rtol=0)


def test_collate_packed_rows_positions_labels_and_images(instances):
    batch = collate_packed(instances, pad_id=0, capacity=CAPACITY, num_image_tokens=N_IMG)
    rows = next_fit([llm_length(x["input_ids"], N_IMG) for x in instances], CAPACITY)
    assert rows == [[0, 1], [2, 3, 4], [5]]
    ids, labels, pos, mask = (batch[k] for k in ("input_ids", "labels", "position_ids", "attention_mask"))
    assert pos[0, :10].tolist() == list(range(10)) and pos[0, 10:17].tolist() == list(range(7))
    assert instances[1]["labels"][0] != IGNORE_INDEX and labels[0, 10] == IGNORE_INDEX
    assert labels[0, 11:17].tolist() == instances[1]["labels"][1:].tolist()
    assert mask[0, :17].all() and not mask[0, 17:].any() and (ids[0, 17:] == 0).all()
    assert pos[0, 17:].tolist() == list(range(ids.shape[1] - 17))  # pads: a segment of their own
    # only the real images, in placeholder order (row by row)
    assert batch["images"].shape == (3, 3, 32, 32)
    for got, k in zip(batch["images"], (0, 3, 5)):
        assert torch.equal(got, instances[k]["image"])


def test_text_only_packed_batch_keeps_one_dummy_image_in_the_graph(model, instances):
    text_only = [instances[1], instances[2], instances[4]]
    batch = collate_packed(text_only, pad_id=0, capacity=CAPACITY, num_image_tokens=N_IMG)
    assert batch["images"].shape == (1, 3, 32, 32) and not batch["images"].any()
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    assert torch.count_nonzero(model.get_model().mm_projector[0].weight.grad) == 0
    total = sum(_targets(x["labels"]) for x in text_only)
    expected = sum(_alone(model, x).loss.item() * _targets(x["labels"]) for x in text_only) / total
    assert abs(out.loss.item() - expected) < 1e-5


def test_left_padded_batch_is_not_taken_for_packed():
    pos = torch.tensor([[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert not is_packed_batch(pos, mask)
    assert is_packed_batch(torch.tensor([[0, 1, 0, 1, 2]]), torch.ones(1, 5))


def test_torch_varlen_kernel_called_as_each_pytorch_version_expects():
    """The CUDA kernel cannot run here: fakes with the 2.10 and the 2.11+ signatures check the call."""
    from llava.model.varlen_attention import _segment_attention, call_kernel

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(9, 2, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, 4, 9])
    expected = _segment_attention(q, k, v, cu, 0.3, causal=True)

    def new_style(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):
        assert cu_q.dtype == torch.int32 and max_q == 5 and window_size == (-1, 0)
        return _segment_attention(q, k, v, cu_q, scale, causal=window_size == (-1, 0))

    def old_style(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):
        return _segment_attention(q, k, v, cu_q, q.shape[-1] ** -0.5, causal=is_causal)

    for kernel in (new_style, old_style):
        torch.testing.assert_close(call_kernel(kernel, q, k, v, cu, 5, 0.3, True), expected)


# ------------------------------------------------------------------ bin packing and the sampler
def test_first_fit_decreasing_hand_checked_and_next_fit_recovers_its_rows():
    lengths = [5, 9, 3, 7, 2, 6]
    rows = first_fit_decreasing(list(range(6)), lengths, 10)
    assert rows == [[1], [3, 2], [5, 4], [0]]  # 9 | 7+3 | 6+2 | 5
    laid_out = [i for row in rows for i in row]
    assert next_fit([lengths[i] for i in laid_out], 10) == [[0], [1, 2], [3, 4], [5]]


def test_deal_rows_balances_tokens_or_keeps_similar_rows_together():
    from llava.train.packed_sampler import deal_rows

    rows, lengths = [[0], [1], [2], [3]], [10, 40, 30, 20]
    assert deal_rows(rows, lengths, 2, 100, layout="flat") == [[0, 1], [2, 3]]  # 50 and 50 tokens
    assert deal_rows(rows, lengths, 2, 100, layout="rows") == [[1, 2], [0, 3]]  # widest 40, then 20


def test_packed_sampler_steps_hold_the_unpacked_steps_samples():
    g = torch.Generator().manual_seed(3)
    signed = [
        int(n) * (1 if i % 5 else -1) for i, n in enumerate(torch.randint(20, 400, (203,), generator=g))
    ]
    bs, chunks, cap = 4, 3, 512
    sampler = PackedBatchSampler(signed, bs, chunks, cap, group_by_modality=True, seed=7)
    sampler.set_epoch(2)
    batches = sampler.batches()
    unpacked = LengthGroupedSampler(bs, world_size=chunks, lengths=signed, group_by_modality=True, seed=7)
    unpacked.set_epoch(2)
    order = unpacked.indices()
    assert len(batches) == len(sampler) == -(-203 // (bs * chunks)) * chunks
    mega = bs * chunks
    for step in range(len(batches) // chunks):
        packed_step = sorted(i for b in batches[step * chunks : (step + 1) * chunks] for i in b)
        assert packed_step == sorted(order[step * mega : (step + 1) * mega])
    sizes = [abs(n) for n in signed]
    for b in batches:
        assert b and all(sum(sizes[b[k]] for k in row) <= cap for row in next_fit([sizes[i] for i in b], cap))
    # the collator's next-fit finds the sampler's rows: as many rows as first-fit-decreasing made
    for step in range(len(batches) // chunks - 1):
        mega_idx = order[step * mega : (step + 1) * mega]
        planned = len(first_fit_decreasing(mega_idx, sizes, cap))
        found = sum(
            len(next_fit([sizes[i] for i in b], cap)) for b in batches[step * chunks : (step + 1) * chunks]
        )
        assert found == planned
    assert sampler.batches() == batches  # seeded: every rank computes the same plan
    sampler.set_epoch(3)
    assert sampler.batches() != batches


def test_packed_sampler_fills_every_micro_batch_of_a_small_tail():
    sampler = PackedBatchSampler([100] * 5, batch_size=1, num_chunks=4, capacity=1000)
    order, batches = sampler.order(), sampler.batches()
    assert len(batches) == len(sampler) == 8 and all(len(b) == 1 for b in batches)
    assert sorted(b[0] for b in batches[:4]) == sorted(order[:4])  # one row split into single samples
    # the last sample, then samples from the epoch's start so every micro-batch of the step has one
    assert sorted(b[0] for b in batches[4:]) == sorted([order[4]] + order[:3])


# ------------------------------------------------------------------ token cache and image path
def _dataset(data, tokenizer, processor, version, **kw):
    from llava.data.dataset import LazySupervisedDataset
    from llava.data.sample_format import SampleFormat
    from llava.train.arguments import DataArguments

    args = DataArguments(data_path=str(data["finetune"]), image_folder=str(data["images"]), **kw)
    fmt = SampleFormat(version, tokenizer.model_max_length, is_multimodal=True, image_processor=processor,
                       image_aspect_ratio=args.image_aspect_ratio, num_image_tokens=N_IMG)  # fmt: skip
    dataset = LazySupervisedDataset(str(data["finetune"]), tokenizer, args, fmt)
    dataset.args = args  # for a second dataset of the same flags
    return dataset


@pytest.fixture()
def data(tmp_path):
    from llava.data.tools.synthetic import generate

    return generate(tmp_path / "data", n_train=8, n_eval=0, text_only_fraction=0.3, seed=2, progress=False)


@pytest.fixture(scope="module")
def tokenizer(tiny_kit):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer, model_max_length=256)
    tok.pad_token = tok.unk_token
    return tok


@pytest.fixture(scope="module")
def processor(tiny_kit):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_kit.vision)


def test_cached_tokens_equal_tokenising_each_sample(data, tokenizer, processor):
    from llava.data.dataset import LazySupervisedDataset

    cached = _dataset(data, tokenizer, processor, "v1", image_aspect_ratio="pad")
    cached.prepare()
    lazy = LazySupervisedDataset(cached.data_path, tokenizer, cached.args, cached.sample_format)
    assert lazy._tokens is None  # not prepared: the per-sample path
    for i in range(len(cached)):
        a, b = cached[i], lazy[i]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert all(torch.equal(x, y) for x, y in zip(a["images"], b["images"])) and a["length"] == b["length"]


def test_token_cache_reused_and_invalidated_by_tokenizer_or_template(data, tokenizer, processor, monkeypatch):
    from llava.data import length_cache

    folder = data["finetune"].parent / ".llava_cache"
    first = _dataset(data, tokenizer, processor, "v1")
    first.prepare()
    assert len(list(folder.glob("*.tokens.npy"))) == 1
    ids_v1 = first[0]["input_ids"]

    def no_tokenising(*a, **k):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(length_cache, "count_all", no_tokenising)
        again = _dataset(data, tokenizer, processor, "v1")
        again.prepare()
        assert torch.equal(again[0]["input_ids"], ids_v1)
        with pytest.raises(AssertionError, match="cache should have been used"):
            _dataset(data, tokenizer, processor, "llava_llama_2").prepare()
        changed = type(tokenizer).from_pretrained(tokenizer.name_or_path, model_max_length=256)
        changed.pad_token = changed.unk_token
        changed.add_tokens(["<new_token>"])
        with pytest.raises(AssertionError, match="cache should have been used"):
            _dataset(data, changed, processor, "v1").prepare()
    other = _dataset(data, tokenizer, processor, "llava_llama_2")
    other.prepare()
    assert not torch.equal(other[0]["input_ids"], ids_v1)
    assert len(list(folder.glob("*.tokens.npy"))) == 2
    # a changed data file is a new key as well
    samples = json.loads(data["finetune"].read_text())
    data["finetune"].write_text(json.dumps(samples[:-1]))
    shorter = _dataset(data, tokenizer, processor, "v1")
    shorter.prepare()
    assert len(shorter) == len(first) - 1 and len(list(folder.glob("*.tokens.npy"))) == 3


def test_fast_image_path_equals_process_images(processor):
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from llava.images.transform import ImageTransform
    from llava.mm_utils import process_images

    rng = np.random.default_rng(0)
    for mode in ("pad", "square", None):
        transform = ImageTransform.from_processor(processor, mode)
        for w, h in ((64, 48), (31, 70), (40, 40)):
            image = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
            expected = process_images([image], processor, SimpleNamespace(image_aspect_ratio=mode))[0]
            assert torch.equal(transform(image), expected)
    assert ImageTransform.from_processor(processor, "anyres") is None


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_train_with_packing_both_stages_loss_goes_down(tmp_path_factory, tmp_path):
    from tests.test_train import Probe, run, stage1_args, stage2_args, train_kit

    kit = train_kit(tmp_path_factory)
    packed = "--packing True --model_max_length 1024"
    probes = Probe(), Probe()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(stage1_args(kit, tmp_path / "s1", extra=f"--num_train_epochs 2 {packed}"), [probes[0]])
        adapter = tmp_path / "s1" / "mm_projector.bin"
        trainer = run(
            stage2_args(kit, tmp_path / "s2", adapter, extra=f"--num_train_epochs 3 {packed}"), [probes[1]]
        )
    finally:
        torch.set_num_threads(before)
    for probe in probes:
        assert probe.losses[1] < probe.losses[0] - 0.05, probe.losses
    batch = next(iter(trainer.get_train_dataloader()))
    assert "position_ids" in batch and batch["input_ids"].shape[0] < 4  # 4 samples in fewer rows
    assert is_packed_batch(batch["position_ids"], batch["attention_mask"])


@pytest.mark.slow
def test_trainer_step_packed_equals_unpacked(tmp_path_factory, tmp_path):
    """Through LLaVATrainer (2 micro-batches accumulated, num_items_in_batch): one SGD step on the
    same samples gives the same weights packed and unpacked."""
    from tests.test_train import run, stage2_args, train_kit

    kit = train_kit(tmp_path_factory)
    common = (
        "--max_steps 1 --optim sgd --learning_rate 0.5 --per_device_train_batch_size 2 "
        "--gradient_accumulation_steps 2 --model_max_length 1024 --save_strategy no"
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = run(stage2_args(kit, tmp_path / "plain", extra=common)).model
        packed = run(stage2_args(kit, tmp_path / "packed", extra=common + " --packing True")).model
    finally:
        torch.set_num_threads(before)
    from safetensors.torch import load_file

    initial = load_file(str(kit.llm / "model.safetensors"))["lm_head.weight"]
    assert (plain.lm_head.weight - initial).abs().max() > 1e-3  # the step did move the weights
    plain_state, packed_state = plain.state_dict(), packed.state_dict()
    assert any("mm_projector" in name for name in plain_state)
    for name, value in plain_state.items():
        torch.testing.assert_close(packed_state[name], value, atol=1e-6, rtol=0, msg=name)
