"""`--loss_chunk_tokens N` (llava/model/chunked_loss.py): the loss from the labelled positions only, N
at a time under activation checkpointing. In float32 on the CPU its value and every gradient equal
transformers' loss on the whole logits: padded and packed batches (sdpa, torch_varlen), with and without
the Trainer's num_items_in_batch, chunk sizes that do and do not divide the labelled tokens; and the
Trainer passes the flag to the model's forward."""

import pytest
import torch

from llava.constants import IGNORE_INDEX
from llava.data.packing import collate_packed
from llava.model.chunked_loss import chunked_causal_lm_loss
from llava.model.varlen_attention import register_varlen_attention
from tests.model_helpers import build_tiny_llava
from tests.test_packing import CAPACITY, N_IMG, _grads, instances  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model(tiny_kit):
    register_varlen_attention()
    return build_tiny_llava(tiny_kit).train()


def _padded_batch(samples):
    n = max(len(x["input_ids"]) for x in samples)
    ids = torch.zeros(len(samples), n, dtype=torch.long)
    labels = torch.full((len(samples), n), IGNORE_INDEX)
    mask = torch.zeros(len(samples), n, dtype=torch.long)
    for i, x in enumerate(samples):
        k = len(x["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = x["input_ids"], x["labels"], 1
    has = [bool((x["input_ids"] < 0).any()) for x in samples]
    images = torch.stack([x["image"] for x, h in zip(samples, has) if h])
    return dict(input_ids=ids, labels=labels, attention_mask=mask, images=images)


def _loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    out = model(**batch, **kwargs)
    out.loss.backward()
    return out, _grads(model)


@pytest.mark.parametrize("form", ["padded", "packed-sdpa", "packed-varlen"])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_loss_equals_the_whole_logits_loss(model, instances, form, chunk):  # noqa: F811
    if form == "padded":
        batch = _padded_batch(instances)
    else:
        model.set_attn_implementation("torch_varlen" if form == "packed-varlen" else "sdpa")
        batch = collate_packed(instances, pad_id=0, capacity=CAPACITY, num_image_tokens=N_IMG)
    try:
        for extra in ({}, {"num_items_in_batch": torch.tensor(57)}):
            whole, expected = _loss_and_grads(model, batch, **extra)
            chunked, grads = _loss_and_grads(model, batch, loss_chunk_tokens=chunk, **extra)
            assert chunked.logits is None
            assert abs(chunked.loss.item() - whole.loss.item()) < 1e-6, (chunked.loss, whole.loss)
            assert grads.keys() == expected.keys() and any("mm_projector" in n for n in grads)
            for name, grad in grads.items():
                torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5, msg=name)
    finally:
        model.set_attn_implementation("sdpa")


def test_only_labelled_positions_reach_the_head_one_chunk_at_a_time():
    calls = []
    head = torch.nn.Linear(8, 11)
    head.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    labels = torch.full((2, 9), IGNORE_INDEX)
    labels[0, 3:8] = torch.arange(5)  # 5 targets after the shift: positions 2..6
    labels[1, 1:4] = torch.arange(3)  # 3: positions 0..2
    loss = chunked_causal_lm_loss(hidden, head, labels, chunk_tokens=3)
    assert calls == [3, 3, 2]
    with torch.no_grad():
        logits = torch.nn.functional.linear(hidden, head.weight, head.bias)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    assert abs(loss.item() - ref.item()) < 1e-6
    loss.backward()
    assert sorted(calls[3:]) == [2, 3, 3]  # each chunk's logits recomputed in the backward, not kept
    with pytest.raises(ValueError, match="--loss_chunk_tokens must be >= 1"):
        chunked_causal_lm_loss(hidden, head, labels, chunk_tokens=0)


def test_trainer_passes_loss_chunk_tokens_to_the_forward(tmp_path):
    from llava.train.arguments import TrainingArguments
    from llava.train.llava_trainer import LLaVATrainer

    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, input_ids=None, labels=None, loss_chunk_tokens=0, **kwargs):
            seen["chunk"] = loss_chunk_tokens
            return {"loss": self.w * 1.0}

    args = TrainingArguments(output_dir=str(tmp_path), loss_chunk_tokens=512, report_to=[], use_cpu=True)
    trainer = LLaVATrainer(model=Probe(), args=args)
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "labels": torch.ones(1, 3, dtype=torch.long)}
    trainer.compute_loss(trainer.model.train(), batch)
    assert seen["chunk"] == 512
    trainer.compute_loss(trainer.model.eval(), batch)  # evaluation keeps the logits path
    assert seen["chunk"] == 0
