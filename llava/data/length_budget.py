"""The length budget: how many tokens a training sample costs, and how it is cut at model_max_length.

Everything that counts a sample's tokens or compares them with `--model_max_length` asks this
module: the dataset (which applies `LengthBudget.cut` once, when a sample is tokenised; the token
cache stores the cut ids), the length cache's lengths and the samplers built on them, packing
(its row capacity is `max_length`), `python -m llava.data.validate` (its too-long check) and
serving's context check. The collator and packing only assert (`check`): they never cut.

What a sample costs: its text tokens plus, per visual (an image or a video, one `<image>`
placeholder each), the tokens the model splices in for it. Those are exact in every mode: the
caller passes them per placeholder (`visual_tokens`, from `SampleFormat.visual_tokens`, which
counts with llava.images.grid exactly as the model merges features: anyres tiles, anyres_max
downscaling, image_newline rows, a video's pooled frames and newline tokens). Where a caller
gives a count instead of a list, each placeholder costs `image_tokens` (the cost of one
single-crop image: the tower's `num_image_tokens`, plus the image_newline under spatial_unpad).
The cut keeps text + visual tokens <= max_length, so the spliced sequence the LLM sees fits.

A cut that would drop a placeholder (a whole image or video), or leave no target token, is an
error (`CutError`, which the data code reports with the sample's id), never a silently useless
sample: a video with too many frames for --model_max_length says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

FIXED_COST_MODES = (None, "square", "pad")  # image_aspect_ratio values whose image cost is exact


class CutError(ValueError):
    """A sample that cannot be cut to the budget (the message says why)."""


@dataclass(frozen=True)
class LengthBudget:
    """`max_length` tokens per sample (None: unlimited); `image_tokens` per placeholder when a caller
    gives no per-visual costs; `fixed_image_cost`: whether that default is exact for every sample
    (False when single images are anyres or videos are sampled: then pass `visual_tokens`)."""

    max_length: int | None
    image_tokens: int = 1
    fixed_image_cost: bool = True

    @classmethod
    def for_images(cls, max_length: int | None, image_tokens: int, image_aspect_ratio: str | None):
        """The budget of a model whose single-crop image costs `image_tokens` under `image_aspect_ratio`."""
        return cls(
            None if max_length is None else int(max_length),
            int(image_tokens or 0),
            image_aspect_ratio in FIXED_COST_MODES,
        )

    # ------------------------------------------------------------------ what a sample costs
    def visual_costs(self, visuals: int | Sequence[int]) -> list[int]:
        """Tokens per placeholder: `visuals` as given (a list), or `visuals` x `image_tokens`."""
        if isinstance(visuals, (int, np.integer)):
            return [self.image_tokens] * int(visuals)
        return [int(x) for x in visuals]

    def cost(self, text_tokens: int, images: int | Sequence[int]) -> int:
        """Tokens the LLM sees for `text_tokens` text tokens and `images` (a placeholder count, or
        each placeholder's tokens)."""
        return int(text_tokens) + sum(self.visual_costs(images))

    @staticmethod
    def split(ids: Sequence[int]) -> tuple[int, int]:
        """(text tokens, image placeholders) of a sequence of ids (a list or a 1-d tensor)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        images = sum(1 for x in ids if x == IMAGE_TOKEN_INDEX)
        return len(ids) - images, images

    def sequence_length(self, ids: Sequence[int], visual_tokens: Sequence[int] | None = None) -> int:
        """`cost` of the sample whose ids (image placeholders included) are `ids`."""
        text, images = self.split(ids)
        return self.cost(text, images if visual_tokens is None else self._matched(visual_tokens, images))

    @staticmethod
    def _matched(visual_tokens: Sequence[int], placeholders: int) -> list[int]:
        costs = [int(x) for x in visual_tokens]
        if len(costs) != placeholders:
            raise ValueError(
                f"{placeholders} image placeholder(s) in the ids but {len(costs)} visual cost(s) given"
            )
        return costs

    # ------------------------------------------------------------------ the cut
    def _placeholder_costs(self, images: int | Sequence[int]) -> list[int]:
        # What each placeholder takes from the budget: its tokens, at least its own place.
        return [max(c, 1) for c in self.visual_costs(images)]

    def width(self, images: int | Sequence[int]) -> int | None:
        """How many ids (text tokens + placeholders) a sample with these visuals keeps."""
        if self.max_length is None:
            return None
        costs = self._placeholder_costs(images)
        return self.max_length - sum(costs) + len(costs)

    def too_long(self, text_tokens: int, images: int | Sequence[int]) -> bool:
        """Whether the sample is cut (the validator's "too_long" and the dataset's cut agree here)."""
        width = self.width(images)
        return width is not None and text_tokens + len(self.visual_costs(images)) > width

    def trained_length(self, text_tokens: int, images: int | Sequence[int]) -> int:
        """`cost` of the sample after the cut (when the cut succeeds)."""
        if self.too_long(text_tokens, images):
            text_tokens = self.width(images) - len(self.visual_costs(images))
        return self.cost(text_tokens, images)

    def cut(
        self, ids: list[int], labels: list[int], visual_tokens: Sequence[int] | None = None
    ) -> tuple[list[int], list[int]]:
        """`ids` and `labels` cut to the budget (`visual_tokens`: each placeholder's tokens, default
        `image_tokens` each); raises CutError when that drops a visual or every target."""
        text, placeholders = self.split(ids)
        images = placeholders if visual_tokens is None else self._matched(visual_tokens, placeholders)
        if not self.too_long(text, images):
            return ids, labels
        width = self.width(images)
        costs = self.visual_costs(images)
        if width < placeholders or IMAGE_TOKEN_INDEX in ids[max(width, 0) :]:
            raise CutError(
                f"the sample's {len(costs)} visual(s) take {sum(costs)} tokens{self._why(costs)}; with its text it "
                f"does not fit --model_max_length {self.max_length}, and truncating would cut off an image or "
                "video: raise --model_max_length (or for a video lower --frames_upbound)"
            )
        ids, labels = ids[:width], labels[:width]
        if all(x == IGNORE_INDEX for x in labels):
            if placeholders and max(costs) > 1:
                raise CutError(
                    f"no target token fits in --model_max_length {self.max_length} next to the "
                    f"{sum(costs)} tokens of the sample's visual(s){self._why(costs)}; raise --model_max_length"
                )
            raise CutError(f"no target token left after truncation at model_max_length={self.max_length}")
        return ids, labels

    @staticmethod
    def _why(costs: list[int]) -> str:
        if not costs or max(costs) <= 1:
            return ""
        return f" ({' + '.join(map(str, costs[:8]))}{' + ...' if len(costs) > 8 else ''})"

    def check(self, ids: Sequence[int], what: str = "a sample", visual_tokens: Sequence[int] | None = None) -> None:
        """Raise ValueError when `ids` exceed the budget: code after the dataset asserts, never cuts."""
        text, placeholders = self.split(ids)
        images = placeholders if visual_tokens is None else self._matched(visual_tokens, placeholders)
        if self.too_long(text, images):
            raise ValueError(
                f"{what} is {self.cost(text, images)} tokens ({text} text + {placeholders} visual(s): "
                f"{sum(self.visual_costs(images))}) but the length budget is {self.max_length} (--model_max_length); "
                "the dataset cuts samples to the budget, so this one came from elsewhere or was built "
                "with another SampleFormat"
            )
