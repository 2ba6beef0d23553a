"""LLaVA on top of any Hugging Face causal LM, by composition through ``inputs_embeds``.

``LlavaMetaForCausalLM`` is mixed in front of a concrete causal-LM class (``LlamaForCausalLM``, ...).
It adds no copy of the LLM: its ``forward`` splices image features into the token embeddings and
calls the LLM's own ``forward`` with ``inputs_embeds``. The vision tower and projector live on the
LLM's inner model (``model.get_model()``), which gets the ``LlavaMetaModel`` methods, so the
state-dict keys are the original LLaVA ones: ``model.layers.*``, ``model.mm_projector.*``,
``model.vision_tower.vision_tower.*``, ``lm_head.*``. Loading and saving: llava.model.llava_loading;
``<im_start>``/``<im_end>`` tokens: llava.model.vision_tokens. ``get_parts()`` names the parts (vision tower,
projector, LLM, head: llava.model.parts). The model never sets ``requires_grad``: which parts train is
the trainer's policy (llava.train.freeze).
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
from torch import nn

from llava.constants import IMAGE_TOKEN_INDEX
from llava.images.grid import VIDEO_CONFIG_DEFAULTS, video_settings

from .image_features import merge_image_features
from .llava_loading import LlavaLoading
from .multimodal_encoder.builder import build_vision_tower
from .multimodal_inputs import check_modalities, splice_image_features, visual_batch
from .multimodal_projector.builder import build_vision_projector
from .packed_inputs import is_packed_batch, layout_for, splice_packed
from .parts import IMAGE_NEWLINE, PROJECTOR, VISION_TOWER, LlavaParts
from .video_features import video_features
from .vision_tokens import VisionTokens

logger = logging.getLogger(__name__)


def _newline_parameter(hidden_size: int, like: torch.Tensor | None = None) -> nn.Parameter:
    dtype = like.dtype if like is not None and like.is_floating_point() else None
    device = like.device if like is not None and like.device.type != "meta" else None
    return nn.Parameter(torch.randn(hidden_size, dtype=dtype, device=device) * hidden_size**-0.5)


class LlavaMetaModel:
    """Methods given to the LLM's inner model: owns ``vision_tower``, ``mm_projector``, ``image_newline``."""

    def init_llava_modules(self, config) -> None:
        """Build (without loading) the modules a config with ``mm_vision_tower`` describes."""
        if not getattr(config, "mm_vision_tower", None):
            return
        self.vision_tower = build_vision_tower(config, delay_load=True)
        self.mm_projector = build_vision_projector(config)
        if "unpad" in (getattr(config, "mm_patch_merge_type", None) or ""):
            self.image_newline = _newline_parameter(config.hidden_size)

    def get_vision_tower(self):
        tower = getattr(self, "vision_tower", None)
        return tower[0] if isinstance(tower, list) else tower

    def initialize_vision_modules(self, model_args, fsdp=None) -> tuple[str, ...]:
        """Load the tower and build the projector from training args; record the ``mm_*`` config fields.

        Returns the names of the parts it created (llava.model.parts: ``vision_tower``, ``projector``,
        ``image_newline``): new, randomly initialised ones, where the model had none.
        Does not read ``pretrain_mm_mlp_adapter``: use ``llava.model.load_mm_projector_state``.
        """
        cfg = self.config
        cfg.mm_vision_tower = model_args.vision_tower
        tower = self.get_vision_tower()
        created = []
        if tower is None:
            tower = build_vision_tower(model_args)
            self.vision_tower = [tower] if fsdp else tower
            created.append(VISION_TOWER)
        else:
            tower.load_model()
        cfg.use_mm_proj = True
        cfg.mm_projector_type = getattr(model_args, "mm_projector_type", None) or "linear"
        cfg.mm_hidden_size = tower.hidden_size
        cfg.mm_vision_select_layer = getattr(model_args, "mm_vision_select_layer", -2)
        cfg.mm_vision_select_feature = getattr(model_args, "mm_vision_select_feature", None) or "patch"
        cfg.mm_patch_merge_type = getattr(model_args, "mm_patch_merge_type", None) or "flat"
        for name, default in VIDEO_CONFIG_DEFAULTS.items():  # videos: pooling and newlines (LLaVA-NeXT)
            setattr(cfg, name, _first_set(getattr(model_args, name, None), getattr(cfg, name, None), default))
        video_settings(cfg)  # a bad value fails here, naming the field and the valid ones
        ref = self.get_input_embeddings().weight
        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(cfg)
            if ref.is_floating_point():
                self.mm_projector.to(dtype=ref.dtype)
            if ref.device.type != "meta":
                self.mm_projector.to(device=ref.device)
            created.append(PROJECTOR)
            if "unpad" in cfg.mm_patch_merge_type:
                self.image_newline = _newline_parameter(cfg.hidden_size, ref)
                created.append(IMAGE_NEWLINE)
        return tuple(created)


def _first_set(*values):
    return next(v for v in values if v is not None and v != "")


@functools.cache
def llava_inner_class(base_cls: type) -> type:
    """The LLM's inner-model class with the ``LlavaMetaModel`` methods added (no new state)."""
    return type(f"Llava{base_cls.__name__}", (LlavaMetaModel, base_cls), {"__module__": __name__})


@functools.cache
def _llm_forward_params(cls: type) -> frozenset:
    return frozenset(inspect.signature(super(LlavaMetaForCausalLM, cls).forward).parameters)


class LlavaMetaForCausalLM(LlavaLoading, VisionTokens):
    """Put in front of a causal-LM class: ``class X(LlavaMetaForCausalLM, LlamaForCausalLM)``."""

    # The tower's weights are loaded by ``from_pretrained`` below, after the LLM (see DESIGN.md).
    _keys_to_ignore_on_load_unexpected = [r"vision_tower\.vision_tower\."]

    def __init__(self, config, *args, **kwargs):
        # A plain LLM's config.json (stage 2 starts from Vicuna) leaves model_type 'llama' on the
        # LlavaLlamaConfig; code that dispatches on it (transformers' Liger integration) would then
        # treat this model as a plain LLaMA and replace its forward.
        if getattr(type(config), "model_type", None) and config.model_type != type(config).model_type:
            config.model_type = type(config).model_type
        super().__init__(config, *args, **kwargs)
        inner = self.get_model()
        inner.__class__ = llava_inner_class(type(inner))
        inner.init_llava_modules(config)
        self.post_init()  # initialises only the modules added above

    # ----- structure -----
    def get_model(self):
        return getattr(self, self.base_model_prefix)

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def get_parts(self) -> LlavaParts:
        """The vision tower, projector, image_newline, LLM (decoder stack) and head, as modules."""
        inner = self.get_model()
        return LlavaParts(
            vision_tower=self.get_vision_tower(),
            projector=getattr(inner, "mm_projector", None),
            llm=inner,
            head=self.get_output_embeddings(),
            image_newline=getattr(inner, "image_newline", None),
        )

    @classmethod
    def multimodal_module_names(cls) -> tuple[str, ...]:
        """Module paths of the parts this class adds to the LLM (``model.vision_tower``,
        ``model.mm_projector``), known before a model exists: e.g. to keep them out of 4/8-bit quantisation."""
        return (f"{cls.base_model_prefix}.vision_tower", f"{cls.base_model_prefix}.mm_projector")

    # ----- images -> features -----
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.get_vision_tower()(images)
        projector = self.get_model().mm_projector
        param = next(projector.parameters(), None)
        return projector(feats.to(param.dtype) if param is not None else feats)

    def image_features(self, images, image_sizes=None, modalities=None) -> list[torch.Tensor]:
        """One ``[n_i, hidden]`` tensor per visual, in order (``n_i``: llava.images.grid's counts).

        ``images``: ``[N,3,H,W]``, ``[N,K,3,H,W]`` or a list of ``[3,H,W]`` / ``[K,3,H,W]``; a ``[K,3,H,W]``
        entry is K anyres crops of one image (merged by ``mm_patch_merge_type``), or K frames of a video when
        its ``modalities`` entry is "video" (pooled, newlines by ``mm_newline_position``). ``image_sizes``:
        one (width, height) per visual. Every crop and frame goes through the tower in one call.
        """
        batch, counts = visual_batch(images)
        modalities = check_modalities(modalities, len(counts))
        if image_sizes is not None and len(image_sizes) != len(counts):
            raise ValueError(
                f"{len(image_sizes)} image_sizes were given for {len(counts)} visuals (entries of images); "
                "give one (width, height) per entry"
            )
        per_visual = torch.split(self.encode_images(batch), counts, dim=0)
        tower, cfg = self.get_vision_tower(), self.config
        newline = getattr(self.get_model(), "image_newline", None)
        video = video_settings(cfg) if "video" in modalities else None
        out = []
        for i, (feats, modality) in enumerate(zip(per_visual, modalities)):
            if modality == "video":
                side = tower.num_patches_per_side
                out.append(video_features(feats, side=side, image_newline=newline, **video))
                continue
            out.append(
                merge_image_features(
                    feats,
                    getattr(cfg, "mm_patch_merge_type", None),
                    image_size=image_sizes[i] if image_sizes is not None else None,
                    image_aspect_ratio=getattr(cfg, "image_aspect_ratio", None),
                    grid_pinpoints=getattr(cfg, "image_grid_pinpoints", None),
                    patches_per_side=tower.num_patches_per_side,
                    crop_size=tower.image_size,
                    image_newline=newline,
                )
            )
        return out

    def _check_no_image_tokens(self, input_ids) -> None:
        if input_ids is None:
            return
        n = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if n:
            why = (
                "no images were given"
                if self.get_vision_tower() is not None
                else "the model has no vision tower"
            )
            raise ValueError(
                f"input_ids hold {n} image tokens (IMAGE_TOKEN_INDEX {IMAGE_TOKEN_INDEX}) but {why}"
            )

    def prepare_inputs_labels_for_multimodal(
        self,
        input_ids,
        position_ids,
        attention_mask,
        past_key_values,
        labels,
        images,
        image_sizes=None,
        modalities=None,
        padding_side: str | None = None,
    ):
        """As the original: returns ``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``
        (or the inputs unchanged when there is nothing to splice)."""
        tower = self.get_vision_tower()
        decoding = input_ids is not None and input_ids.shape[1] == 1 and past_key_values is not None
        if images is None or tower is None or decoding:
            if not decoding:
                self._check_no_image_tokens(input_ids)
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        side = padding_side or getattr(self.config, "tokenizer_padding_side", None) or "right"
        embeds, mask, positions, new_labels = splice_image_features(
            input_ids,
            self.image_features(images, image_sizes, modalities),
            self.get_input_embeddings(),
            attention_mask=attention_mask,
            labels=labels,
            max_length=getattr(self.config, "tokenizer_model_max_length", None),
            padding_side=side,
        )
        if attention_mask is not None:
            mask = mask.to(attention_mask.dtype)
        elif bool(mask.all()):
            mask = None
        if position_ids is None and side == "right":
            positions = None
        return None, positions, mask, past_key_values, embeds, (new_labels if labels is not None else None)

    def prepare_packed_inputs(
        self, input_ids, position_ids, attention_mask, labels, images, image_sizes=None, modalities=None
    ):
        """The LLM's inputs for a packed batch (several samples per row, ``position_ids`` restarting at
        each): a dict of ``inputs_embeds``, ``position_ids``, ``labels`` and, for flash-style attention,
        the varlen kwargs. See llava.model.packed_inputs."""
        features = None
        if images is not None and self.get_vision_tower() is not None:
            features = self.image_features(images, image_sizes, modalities)
        out = splice_packed(
            input_ids,
            position_ids,
            attention_mask,
            labels,
            features,
            self.get_input_embeddings(),
            layout=layout_for(getattr(self.config, "_attn_implementation", None)),
        )
        if labels is None:
            out["labels"] = None
        return out

    # ----- forward / generate -----
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        images=None,
        image_sizes=None,
        return_dict=None,
        cache=None,
        logits_to_keep=0,
        modalities=None,
        loss_chunk_tokens=0,
        **kwargs,
    ):
        """LLaVA's forward; `loss_chunk_tokens` N > 0 (with labels): the loss from N labelled positions'
        logits at a time, no logits returned (llava.model.chunked_loss; --loss_chunk_tokens)."""
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None and cache is None and is_packed_batch(position_ids, attention_mask):
            packed = self.prepare_packed_inputs(
                input_ids, position_ids, attention_mask, labels, images, image_sizes, modalities
            )
            inputs_embeds, position_ids, labels = (
                packed.pop(k) for k in ("inputs_embeds", "position_ids", "labels")
            )
            input_ids = attention_mask = None
            use_cache = False  # a cache would hide the packing from transformers' mask
            kwargs.update(packed)
        elif inputs_embeds is None:
            input_ids, position_ids, attention_mask, cache, inputs_embeds, labels = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, cache, labels, images, image_sizes, modalities
                )
            )
        params = _llm_forward_params(type(self))
        if cache is not None:
            kwargs["cache" if "cache" in params else "past_key_values"] = cache
        if return_dict is not None:
            kwargs["return_dict"] = return_dict
        if loss_chunk_tokens and labels is not None:
            return self._chunked_loss_forward(
                inputs_embeds, attention_mask, position_ids, labels, loss_chunk_tokens, use_cache, kwargs
            )
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )

    def _chunked_loss_forward(
        self, inputs_embeds, attention_mask, position_ids, labels, chunk, use_cache, kwargs
    ):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        from llava.model.chunked_loss import chunked_causal_lm_loss

        num_items = kwargs.pop("num_items_in_batch", None)
        kwargs.pop("return_dict", None)
        out = self.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False if use_cache is None else use_cache,
            **kwargs,
        )
        loss = chunked_causal_lm_loss(
            out.last_hidden_state, self.get_output_embeddings(), labels, chunk, num_items
        )
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=out.past_key_values)

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, modalities=None, **kwargs):
        """Generate from ids holding IMAGE_TOKEN_INDEX placeholders; returns only the new token ids.

        ``images``, ``image_sizes`` and ``modalities`` (one "image" | "video" per visual) as in ``forward``.

        Batches are left-padded (pass the ``attention_mask``); all ``generate`` options of
        transformers apply (greedy, sampling, ``stop_strings`` with ``tokenizer=``, stopping criteria).
        """
        if "inputs_embeds" in kwargs:
            raise ValueError(
                "LLaVA generate takes input ids (with image placeholders) and images, not inputs_embeds"
            )
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if inputs is None:
            raise ValueError("generate needs input ids")
        attention_mask = kwargs.pop("attention_mask", None)
        kwargs.pop("position_ids", None)  # recomputed from the attention mask by transformers
        if images is not None and self.get_vision_tower() is not None:
            _, _, mask, _, embeds, _ = self.prepare_inputs_labels_for_multimodal(
                inputs, None, attention_mask, None, None, images, image_sizes, modalities, padding_side="left"
            )
            attention_mask = mask if mask is not None else torch.ones(embeds.shape[:2], dtype=torch.long)
        else:
            self._check_no_image_tokens(inputs)
            embeds = self.get_input_embeddings()(inputs)
            if attention_mask is None:
                attention_mask = torch.ones_like(inputs)
        attention_mask = attention_mask.to(device=embeds.device, dtype=torch.long)
        return super().generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
