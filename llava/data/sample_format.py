"""The sample format: everything the data side needs to turn a sample into ids, labels and pixels.

One frozen `SampleFormat` is built once, after the model is set up (`SampleFormat.for_model`), or
from explicit values (the validator, from its command-line flags, without a model), and handed as
an argument to every step that needs it: the dataset, the collator, the token/length cache, the
validator and the eval runner. Nothing is written onto a shared arguments object for a later step
to read back.

    fmt = SampleFormat.for_model(model, tokenizer, template, uint8_images=True)
    costs = fmt.visual_tokens(infos)                         # each visual's tokens (llava.data.visuals)
    ids, labels, was_cut = fmt.tokenize(sample, tokenizer, costs)   # rendered, tokenised, cut once
    fmt.budget.cost(text_tokens, costs)                      # what a sample costs (length_budget)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from llava.data.length_budget import LengthBudget
from llava.images.inputs import DEFAULT_FRAMES_UPBOUND  # a config without frames_upbound: as serving

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
    # How the model turns a visual into tokens (llava.images.grid counts them the same way).
    mm_patch_merge_type: str = "flat"
    patches_per_side: int = 0  # the tower's patch grid side (num_patches_per_side)
    crop_size: int = 0  # the tower's input size (image_size)
    mm_newline_position: str = "one_token"
    mm_spatial_pool_stride: int = 2
    mm_spatial_pool_mode: str = "bilinear"
    # How frames are taken from a video (LLaVA-NeXT's --frames_upbound, --video_fps, --force_sample).
    frames_upbound: int = 0
    video_fps: int = 1
    force_sample: bool = False

    def __post_init__(self):
        from llava.conversation import get_conv_template

        template = default_template_name() if self.template is None else self.template
        get_conv_template(template)  # an unknown name: an error listing the valid ones
        object.__setattr__(self, "template", template)
        if self.model_max_length is not None:
            object.__setattr__(self, "model_max_length", int(self.model_max_length))
        object.__setattr__(self, "num_image_tokens", int(self.num_image_tokens or 0))
        object.__setattr__(self, "mm_patch_merge_type", self.mm_patch_merge_type or "flat")
        if not self.patches_per_side and self.num_image_tokens:
            side = int(round(self.num_image_tokens**0.5))  # a square patch grid (select feature "patch")
            object.__setattr__(self, "patches_per_side", side if side * side == self.num_image_tokens else 0)

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

        def read(name, default):
            value = getattr(cfg, name, None)
            return default if value is None else value

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
            mm_patch_merge_type=read("mm_patch_merge_type", "flat"),
            patches_per_side=int(getattr(tower, "num_patches_per_side", 0) or 0),
            crop_size=int(getattr(tower, "image_size", 0) or 0),
            mm_newline_position=read("mm_newline_position", "one_token"),
            mm_spatial_pool_stride=int(read("mm_spatial_pool_stride", 2)),
            mm_spatial_pool_mode=read("mm_spatial_pool_mode", "bilinear"),
            frames_upbound=int(read("frames_upbound", DEFAULT_FRAMES_UPBOUND)),
            video_fps=int(read("video_fps", 1)),
            force_sample=bool(read("force_sample", False)),
        )

    @property
    def budget(self) -> LengthBudget:
        """The length budget of this format (llava.data.length_budget); a placeholder without a
        given cost counts as one single-crop image (`single_image_tokens`)."""
        return LengthBudget.for_images(self.model_max_length, self.single_image_tokens, self.image_aspect_ratio)

    # ------------------------------------------------------------------ visuals -> tokens
    @property
    def single_image_tokens(self) -> int:
        """Tokens of one image given as a single crop (square, pad, and each image of a multi-image
        sample): the tower's tokens, plus the image_newline that spatial_unpad appends."""
        if not self.is_multimodal or not self.num_image_tokens:
            return self.num_image_tokens
        from llava.images.grid import image_feature_tokens

        return image_feature_tokens((self.crop_size, self.crop_size), crops=1, **self._merge_settings())

    def _merge_settings(self) -> dict:
        return dict(
            merge_type=self.mm_patch_merge_type,
            image_aspect_ratio=self.image_aspect_ratio,
            grid_pinpoints=self.image_grid_pinpoints,
            side=self.patches_per_side,
            crop_size=self.crop_size,
            tokens_per_crop=self.num_image_tokens,
        )

    def image_mode(self, num_images: int) -> str | None:
        """How the pixels of an image are made: `image_aspect_ratio` for a sample's only image,
        "pad" at base resolution for each of several (LLaVA-NeXT / OneVision)."""
        return self.image_aspect_ratio if num_images <= 1 else "pad"

    def needs_visual_info(self, sample: dict) -> bool:
        """Whether counting the sample's visual tokens needs its files (a video's frame count, the
        size of an anyres image); otherwise `fixed_visual_tokens` knows them."""
        from llava.data.visuals import VIDEO, visual_names
        from llava.images.grid import is_anyres

        kind, names = visual_names(sample)
        return kind == VIDEO or (len(names) == 1 and is_anyres(self.image_aspect_ratio))

    def fixed_visual_tokens(self, sample: dict) -> list[int] | None:
        """Each placeholder's tokens when they do not depend on the files, else None."""
        from llava.data.visuals import num_visuals

        if self.needs_visual_info(sample):
            return None
        return [self.single_image_tokens] * num_visuals(sample)

    def frame_indices(self, info) -> list[int]:
        """The frames taken from a video of `info` (llava.data.visuals.VisualInfo)."""
        from llava.images.video import sample_frame_indices

        return sample_frame_indices(
            int(info.frames),
            info.fps,
            frames_upbound=self.frames_upbound,
            video_fps=self.video_fps,
            force_sample=self.force_sample,
        )

    def visual_tokens(self, infos) -> list[int]:
        """Each visual's tokens as the model splices them in, from `infos` (VisualInfo per visual, in
        placeholder order): what the length budget, the samplers, packing and validate count
        (llava.images.grid.sample_visual_tokens, the rule serving counts with too)."""
        from llava.data.visuals import VIDEO
        from llava.images.grid import sample_visual_tokens

        visuals = [
            (VIDEO, len(self.frame_indices(info))) if info.kind == VIDEO else ("image", info.size) for info in infos
        ]
        return sample_visual_tokens(
            visuals,
            **self._merge_settings(),
            stride=self.mm_spatial_pool_stride,
            pool_mode=self.mm_spatial_pool_mode,
            newline_position=self.mm_newline_position,
        )

    def token_key(self) -> dict:
        """Everything of the format that changes ids or labels (the token cache's key; the per-sample
        visual costs, which change the cut, are keyed by the cache itself)."""
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

    def tokenize(
        self, sample: dict, tokenizer, visual_tokens: list[int] | None = None
    ) -> tuple[list[int], list[int], bool]:
        """(input_ids, labels, whether the budget cut it) of a training sample, as the dataset
        trains on it: markers placed (`preprocess_multimodal`), rendered with the template,
        tokenised, then cut once by `budget` with each visual costing `visual_tokens` (default:
        `fixed_visual_tokens`; a video or an anyres image needs its counts given). Raises
        SampleError naming the sample."""
        from llava.data.preprocess import SampleError, preprocess_multimodal, tokenize_sample
        from llava.data.visuals import num_visuals

        images = num_visuals(sample)
        if visual_tokens is None and images:
            visual_tokens = self.fixed_visual_tokens(sample)
            if visual_tokens is None:
                raise ValueError(
                    f"sample {sample.get('id')!r}: its visual token counts depend on its files (a video, or an "
                    "anyres image): pass visual_tokens (SampleFormat.visual_tokens of the probed visuals)"
                )
        source = copy.deepcopy(sample["conversations"])
        if images:
            source = preprocess_multimodal([source], self, conv=self.template)[0]
        ids, labels = tokenize_sample(
            source, tokenizer, self.template, images, sample.get("id"), budget=LengthBudget(None)
        )
        costs = visual_tokens if images else []
        budget = self.budget
        was_cut = budget.too_long(LengthBudget.split(ids)[0], costs)
        try:
            ids, labels = budget.cut(ids, labels, costs)
        except ValueError as err:
            raise SampleError(sample.get("id"), str(err)) from err
        return ids, labels, was_cut
