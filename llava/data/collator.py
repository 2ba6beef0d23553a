"""Batching for supervised training: right padding, truncation to model_max_length, images batched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX


@dataclass
class DataCollatorForSupervisedDataset:
    """Collate examples for supervised fine-tuning.

    `input_ids` are right-padded with the tokenizer's pad id, `labels` with IGNORE_INDEX, both cut
    to `tokenizer.model_max_length`. The attention mask comes from the lengths, not from the pad id,
    so a pad token that also occurs in text (e.g. pad = eos) is still attended to. `images` is one
    tensor [B, 3, H, W] when all images share a shape, else a list; `image_sizes` lists (w, h).

    With `packing=True` the instances are packed into rows of at most `model_max_length` tokens
    the LLM sees (`num_image_tokens` per image placeholder): see llava.data.packing.collate_packed.
    """

    tokenizer: object
    packing: bool = False
    num_image_tokens: int = 0

    def __call__(self, instances: Sequence[dict]) -> dict:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError(
                f"tokenizer {type(self.tokenizer).__name__} has no pad token; set tokenizer.pad_token "
                "(train() uses the unk token, as the original LLaVA)"
            )
        max_len = self.tokenizer.model_max_length
        if self.packing:
            from llava.data.packing import collate_packed

            cut = [
                dict(inst, input_ids=inst["input_ids"][:max_len], labels=inst["labels"][:max_len])
                for inst in instances
            ]
            return collate_packed(cut, pad_id, max_len, self.num_image_tokens)
        ids = [torch.as_tensor(inst["input_ids"])[:max_len] for inst in instances]
        labels = [torch.as_tensor(inst["labels"])[:max_len] for inst in instances]
        for n, (a, b) in enumerate(zip(ids, labels)):
            if a.shape != b.shape:
                raise ValueError(
                    f"instance {n}: input_ids {tuple(a.shape)} and labels {tuple(b.shape)} differ"
                )
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
        batch_labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        lengths = torch.tensor([len(x) for x in ids])
        attention_mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        batch = dict(input_ids=input_ids, labels=batch_labels, attention_mask=attention_mask)

        with_image = [inst for inst in instances if inst.get("image") is not None]
        if with_image:
            if len(with_image) != len(instances):
                raise ValueError(
                    "some samples of the batch carry an image and some do not; a multimodal dataset gives "
                    "text-only samples a zero image (data_args.is_multimodal)"
                )
            images = [inst["image"] for inst in instances]
            if all(x.shape == images[0].shape for x in images):
                batch["images"] = torch.stack(images)
            else:
                batch["images"] = images
            if all("image_size" in inst for inst in instances):
                batch["image_sizes"] = [tuple(inst["image_size"]) for inst in instances]
        return batch
