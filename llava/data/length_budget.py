"""The length budget: how many tokens a training sample costs, and how it is cut at model_max_length.

Everything that counts a sample's tokens or compares them with `--model_max_length` asks this
module: the dataset (which applies `LengthBudget.cut` once, when a sample is tokenised; the token
cache stores the cut ids), the length cache's lengths and the samplers built on them, packing
(its row capacity is `max_length`), `python -m llava.data.validate` (its too-long check) and
serving's context check. The collator and packing only assert (`check`): they never cut.

What a sample costs: its text tokens plus, per image, the tokens the projector gives the LLM:

- `--image_aspect_ratio` square / pad (and unset): `image_tokens` per image (the tower's
  `num_image_tokens`, 576 for CLIP ViT-L/14-336). The cost is exact, and the cut keeps
  text + images x image_tokens <= max_length, so the spliced sequence the LLM sees fits.
- anyres (and anyres_max_N): an image costs as many tokens as its tiles, known only once the
  image is loaded. The cost counts `image_tokens` per image (the base image: a lower bound, which
  is what the samplers group by), and the cut counts each image as its one placeholder, so only
  the ids are kept within max_length (the behaviour before this module existed). What the image
  features add beyond max_length is cut by the model when it splices them in
  (`llava.model.multimodal_inputs.splice_image_features` at `tokenizer_model_max_length`; the
  model layer cannot import this module, and at inference that cut is the original's behaviour).

A cut that would drop an image placeholder, or leave no target token, is an error (`CutError`,
which the data code reports with the sample's id), never a silently useless sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

FIXED_COST_MODES = (None, "square", "pad")  # image_aspect_ratio values whose image cost is exact


class CutError(ValueError):
    """A sample that cannot be cut to the budget (the message says why)."""


@dataclass(frozen=True)
class LengthBudget:
    """`max_length` tokens per sample (None: unlimited), `image_tokens` per image, and whether that
    per-image cost is exact (`fixed_image_cost`; False for anyres). See the module docstring."""

    max_length: int | None
    image_tokens: int = 1
    fixed_image_cost: bool = True

    @classmethod
    def for_images(cls, max_length: int | None, image_tokens: int, image_aspect_ratio: str | None):
        """The budget of a model whose tower gives `image_tokens` per image under `image_aspect_ratio`."""
        return cls(
            None if max_length is None else int(max_length),
            int(image_tokens or 0),
            image_aspect_ratio in FIXED_COST_MODES,
        )

    # ------------------------------------------------------------------ what a sample costs
    def cost(self, text_tokens: int, images: int) -> int:
        """Tokens the LLM sees for `text_tokens` text tokens and `images` images."""
        return int(text_tokens) + int(images) * self.image_tokens

    @staticmethod
    def split(ids: Sequence[int]) -> tuple[int, int]:
        """(text tokens, image placeholders) of a sequence of ids (a list or a 1-d tensor)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        images = sum(1 for x in ids if x == IMAGE_TOKEN_INDEX)
        return len(ids) - images, images

    def sequence_length(self, ids: Sequence[int]) -> int:
        """`cost` of the sample whose ids (image placeholders included) are `ids`."""
        return self.cost(*self.split(ids))

    # ------------------------------------------------------------------ the cut
    @property
    def _cut_image_tokens(self) -> int:
        # What one image takes from the budget when cutting: its features when their count is
        # exact, else (anyres) its placeholder; a placeholder always takes at least its own place.
        return max(self.image_tokens, 1) if self.fixed_image_cost else 1

    def width(self, images: int) -> int | None:
        """How many ids (text tokens + placeholders) a sample with `images` images keeps."""
        if self.max_length is None:
            return None
        return self.max_length - images * (self._cut_image_tokens - 1)

    def too_long(self, text_tokens: int, images: int) -> bool:
        """Whether the sample is cut (the validator's "too_long" and the dataset's cut agree here)."""
        width = self.width(images)
        return width is not None and text_tokens + images > width

    def trained_length(self, text_tokens: int, images: int) -> int:
        """`cost` of the sample after the cut (when the cut succeeds)."""
        if self.too_long(text_tokens, images):
            text_tokens = self.width(images) - images
        return self.cost(text_tokens, images)

    def cut(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """`ids` and `labels` cut to the budget; raises CutError when that drops an image or every target."""
        text, images = self.split(ids)
        if not self.too_long(text, images):
            return ids, labels
        width = self.width(images)
        if IMAGE_TOKEN_INDEX in ids[max(width, 0) :]:
            raise CutError(
                f"truncation at model_max_length={self.max_length} would cut off an image{self._why()}"
            )
        ids, labels = ids[:width], labels[:width]
        if all(x == IGNORE_INDEX for x in labels):
            if images and self._cut_image_tokens > 1:
                raise CutError(
                    f"no target token fits in --model_max_length {self.max_length} next to the "
                    f"image's {self._cut_image_tokens} tokens; raise --model_max_length"
                )
            raise CutError(f"no target token left after truncation at model_max_length={self.max_length}")
        return ids, labels

    def _why(self) -> str:
        n = self._cut_image_tokens
        return f" (each image counts {n} tokens)" if n > 1 else ""

    def check(self, ids: Sequence[int], what: str = "a sample") -> None:
        """Raise ValueError when `ids` exceed the budget: code after the dataset asserts, never cuts."""
        text, images = self.split(ids)
        if self.too_long(text, images):
            raise ValueError(
                f"{what} is {self.cost(text, images)} tokens ({text} text + {images} image(s) x "
                f"{self.image_tokens}) but the length budget is {self.max_length} (--model_max_length); "
                "the dataset cuts samples to the budget, so this one came from elsewhere or was built "
                "with another SampleFormat"
            )
