"""The sample format: everything the data side needs to turn a sample into ids, labels and pixels.

One frozen `SampleFormat` is built once, after the model is set up (`SampleFormat.for_model`), or
from explicit values (the validator, from its command-line flags, without a model), and handed as
an argument to every step that needs it: the dataset, the collator, the token/length cache, the
validator and the eval runner. Nothing is written onto a shared arguments object for a later step
to read back.

    fmt = SampleFormat.for_model(model, tokenizer, template, uint8_images=True)
    ids, labels, was_cut = fmt.tokenize(sample, tokenizer)   # rendered, tokenised, cut once
    fmt.budget.cost(text_tokens, images)                     # what a sample costs (length_budget)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from llava.data.length_budget import LengthBudget

# `--version` values that train with the default template, as the original train() does.
DEFAULT_TEMPLATE_VERSIONS = (None, "v0", "v0.5")


def default_template_name() -> str:
    """The registry name of `llava.conversation.default_conversation` (v1)."""
    from llava import conversation

    for name, conv in conversation.conv_templates.items():
        if conv is conversation.default_conversation:
            return name
    raise ValueError("llava.conversation.default_conversation is not a registered template")


def template_for_version(version: str | None) -> str:
    """The template name training renders with for `--version` (v0 / v0.5 / None: the default, v1)."""
    return default_template_name() if version in DEFAULT_TEMPLATE_VERSIONS else version


@dataclass(frozen=True)
class SampleFormat:
    """How samples become ids, labels and pixels (see the module docstring).

    `template`: a registered conversation template name (use `template_for_version` for a
    `--version` flag; None means the default template). `model_max_length`: the length budget's
    limit (None: no limit). `is_multimodal`: the model has a vision tower (image markers are
    placed and wrapped, text-only samples get a zero image). `image_aspect_ratio`,
    `image_grid_pinpoints`, `image_processor`: how pixels are made (`process_images` reads the
    first two off this object). `num_image_tokens`: features per image (the tower's). `uint8_images`:
    the dataset gives 8-bit pixels that the tower normalises on its device.
    """

    template: str | None
    model_max_length: int | None
    is_multimodal: bool = False
    mm_use_im_start_end: bool = False
    image_aspect_ratio: str | None = "square"
    image_grid_pinpoints: Any = None
    num_image_tokens: int = 0
    image_processor: Any = field(default=None, compare=False, repr=False)
    uint8_images: bool = False

    def __post_init__(self):
        from llava.conversation import get_conv_template

        template = default_template_name() if self.template is None else self.template
        get_conv_template(template)  # an unknown name: an error listing the valid ones
        object.__setattr__(self, "template", template)
        if self.model_max_length is not None:
            object.__setattr__(self, "model_max_length", int(self.model_max_length))
        object.__setattr__(self, "num_image_tokens", int(self.num_image_tokens or 0))

    @classmethod
    def for_model(
        cls,
        model,
        tokenizer,
        template: str | None,
        *,
        vision: bool = True,
        image_processor: Any = None,
        uint8_images: bool = False,
    ) -> SampleFormat:
        """The format of a set-up (or loaded) model: its tower's processor and token count, and the
        image settings and im_start/im_end use its config holds (training's setup writes the flags
        there). `vision=False` (training without --vision_tower) or a model without a tower gives a
        text-only format. `image_processor` overrides the tower's (the one the loader returned)."""
        get_tower = getattr(model, "get_vision_tower", None)
        tower = get_tower() if vision and get_tower is not None else None
        max_len = int(tokenizer.model_max_length)
        if tower is None:
            return cls(template, max_len)
        cfg = model.config
        return cls(
            template,
            max_len,
            is_multimodal=True,
            mm_use_im_start_end=bool(getattr(cfg, "mm_use_im_start_end", False)),
            image_aspect_ratio=getattr(cfg, "image_aspect_ratio", None),
            image_grid_pinpoints=getattr(cfg, "image_grid_pinpoints", None),
            num_image_tokens=int(getattr(tower, "num_image_tokens", 0) or tower.num_patches),
            image_processor=image_processor if image_processor is not None else tower.image_processor,
            uint8_images=uint8_images,
        )

    @property
    def budget(self) -> LengthBudget:
        """The length budget of this format (llava.data.length_budget)."""
        return LengthBudget.for_images(self.model_max_length, self.num_image_tokens, self.image_aspect_ratio)

    def token_key(self) -> dict:
        """Everything of the format that changes ids or labels (the token cache's key)."""
        budget = self.budget
        return {
            "template": self.template,
            "is_multimodal": self.is_multimodal,
            "mm_use_im_start_end": self.mm_use_im_start_end,
            "budget": [budget.max_length, budget.image_tokens, budget.fixed_image_cost],
        }

    def for_tokens(self) -> SampleFormat:
        """This format without the image processor (what tokenising workers need)."""
        from dataclasses import replace

        return replace(self, image_processor=None)

    def tokenize(self, sample: dict, tokenizer) -> tuple[list[int], list[int], bool]:
        """(input_ids, labels, whether the budget cut it) of a training sample, as the dataset
        trains on it: markers placed (`preprocess_multimodal`), rendered with the template,
        tokenised, then cut once by `budget`. Raises SampleError naming the sample."""
        from llava.data.preprocess import SampleError, preprocess_multimodal, tokenize_sample

        images = 1 if "image" in sample else 0
        source = copy.deepcopy(sample["conversations"])
        if images:
            source = preprocess_multimodal([source], self, conv=self.template)[0]
        ids, labels = tokenize_sample(
            source, tokenizer, self.template, images, sample.get("id"), budget=LengthBudget(None)
        )
        was_cut = self.budget.too_long(*LengthBudget.split(ids))
        try:
            ids, labels = self.budget.cut(ids, labels)
        except ValueError as err:
            raise SampleError(sample.get("id"), str(err)) from err
        return ids, labels, was_cut
