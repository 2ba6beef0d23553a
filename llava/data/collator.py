"""Batching for supervised training: right padding, visuals batched; the length budget is asserted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX
from llava.data.batch_visuals import batch_visuals, instance_visuals
from llava.data.length_budget import LengthBudget
from llava.data.sample_format import SampleFormat


@dataclass
class DataCollatorForSupervisedDataset:
    """Collate examples for supervised fine-tuning.

    `input_ids` are right-padded with the tokenizer's pad id, `labels` with IGNORE_INDEX. The
    dataset has cut every sample to the length budget of `sample_format` (llava.data.length_budget);
    an instance over it is an error naming its length and the budget, never cut here. Without a
    `sample_format` the budget is `tokenizer.model_max_length`, an image placeholder counted as
    one token. The attention mask comes from the lengths, not from the pad id, so a pad token that
    also occurs in text (e.g. pad = eos) is still attended to.

    Visuals: every instance's `images` (one tensor per visual: llava.data.visual_loader) in batch
    order: one tensor [N, 3, H, W] when all are single-crop images of one shape (LLaVA-1.5), else a
    list; `image_sizes` lists (w, h) per visual; `modalities` ("image" / "video" per visual) is
    given when the batch holds a video. Items of the original form (`image`, `image_size`) work too.

    With `packing=True` the instances are packed into rows of at most the budget's `max_length`
    tokens the LLM sees (its `image_tokens` per image placeholder): see llava.data.packing.collate_packed.
    """

    tokenizer: object
    sample_format: SampleFormat | None = None
    packing: bool = False

    @property
    def budget(self) -> LengthBudget:
        if self.sample_format is not None:
            return self.sample_format.budget
        return LengthBudget(self.tokenizer.model_max_length)

    def __call__(self, instances: Sequence[dict]) -> dict:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError(
                f"tokenizer {type(self.tokenizer).__name__} has no pad token; set tokenizer.pad_token "
                "(train() uses the unk token, as the original LLaVA)"
            )
        budget = self.budget
        if self.packing:
            from llava.data.packing import collate_packed

            return collate_packed(instances, pad_id, budget.max_length, budget.image_tokens)
        ids = [torch.as_tensor(inst["input_ids"]) for inst in instances]
        labels = [torch.as_tensor(inst["labels"]) for inst in instances]
        for n, (a, b) in enumerate(zip(ids, labels)):
            check_fits(budget, instances[n], a, f"instance {n} of the batch")
            if a.shape != b.shape:
                raise ValueError(
                    f"instance {n}: input_ids {tuple(a.shape)} and labels {tuple(b.shape)} differ"
                )
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
        batch_labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        lengths = torch.tensor([len(x) for x in ids])
        attention_mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        batch = dict(input_ids=input_ids, labels=batch_labels, attention_mask=attention_mask)

        carrying = [instance_visuals(inst) is not None for inst in instances]
        if any(carrying):
            if not all(carrying):
                raise ValueError(
                    "some samples of the batch carry an image and some do not; a multimodal dataset gives "
                    "text-only samples a zero image (data_args.is_multimodal)"
                )
            batch.update(batch_visuals([instance_visuals(inst) for inst in instances]))
        return batch


def check_fits(budget: LengthBudget, instance: dict, ids: torch.Tensor, what: str) -> None:
    """The instance fits the budget: by its `length` (exact, given by the dataset) when it has one."""
    length = instance.get("length")
    if length is None:
        budget.check(ids, what)
    elif budget.max_length is not None and int(length) > budget.max_length:
        raise ValueError(
            f"{what} is {int(length)} tokens (visual tokens included) but the length budget is "
            f"{budget.max_length} (--model_max_length); the dataset cuts samples to the budget, so this one "
            "came from elsewhere or was built with another SampleFormat"
        )
