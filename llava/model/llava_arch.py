"""LLaVA on top of any Hugging Face causal LM, by composition through ``inputs_embeds``.

``LlavaMetaForCausalLM`` is mixed in front of a concrete causal-LM class (``LlamaForCausalLM``, ...).
It adds no copy of the LLM: its ``forward`` splices image features into the token embeddings and
calls the LLM's own ``forward`` with ``inputs_embeds``. The vision tower and projector live on the
LLM's inner model (``model.get_model()``), which gets the ``LlavaMetaModel`` methods, so the
state-dict keys are the original LLaVA ones: ``model.layers.*``, ``model.mm_projector.*``,
``model.vision_tower.vision_tower.*``, ``lm_head.*``. ``get_parts()`` names the parts (vision tower,
projector, LLM, head: llava.model.parts). The model never sets ``requires_grad``: which parts train is
the trainer's policy (llava.train.freeze).
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
from torch import nn

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
    IMAGE_TOKEN_INDEX,
)

from .checkpoint import fit_tower_keys, load_tensor_file, read_checkpoint_tensors, to_original_tower_layout
from .image_features import merge_crop_features
from .multimodal_encoder.builder import build_vision_tower
from .multimodal_inputs import splice_image_features
from .multimodal_projector.builder import build_vision_projector
from .packed_inputs import is_packed_batch, layout_for, splice_packed
from .parts import IMAGE_NEWLINE, PROJECTOR, VISION_TOWER, LlavaParts

logger = logging.getLogger(__name__)

_HUB_KWARGS = ("revision", "cache_dir", "token", "subfolder")


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


@functools.cache
def llava_inner_class(base_cls: type) -> type:
    """The LLM's inner-model class with the ``LlavaMetaModel`` methods added (no new state)."""
    return type(f"Llava{base_cls.__name__}", (LlavaMetaModel, base_cls), {"__module__": __name__})


@functools.cache
def _llm_forward_params(cls: type) -> frozenset:
    return frozenset(inspect.signature(super(LlavaMetaForCausalLM, cls).forward).parameters)


class LlavaMetaForCausalLM:
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

    # ----- loading -----
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, load_vision_tower: bool = True, **kwargs):
        """``transformers`` loading, then the vision tower from ``mm_vision_tower``.

        Tower weights stored in the checkpoint (``model.vision_tower.vision_tower.*``) win over
        the tower folder's. ``load_vision_tower=False`` leaves the tower unloaded.
        """
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if load_vision_tower:
            model.attach_vision_tower(pretrained_model_name_or_path, **hub_kwargs)
        return loaded

    def attach_vision_tower(self, checkpoint=None, **hub_kwargs) -> None:
        """Load the tower (if the config has one), place it beside the embeddings, apply checkpoint weights."""
        tower = self.get_vision_tower()
        if tower is None:
            return
        if not tower.is_loaded:
            tower.load_model()
        ref = self.get_input_embeddings().weight
        tower.to(device=ref.device if ref.device.type != "meta" else None)
        if ref.is_floating_point():
            tower.to(dtype=ref.dtype)
        if checkpoint is None:
            return
        prefix = f"{self.base_model_prefix}.vision_tower.vision_tower."
        stored = read_checkpoint_tensors(checkpoint, prefix, **hub_kwargs)
        if not stored:
            return
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            logger.warning("ZeRO-3: vision tower weights stored in %s were not applied", checkpoint)
            return
        stored = fit_tower_keys(stored, tower.vision_tower.state_dict().keys())
        result = tower.vision_tower.load_state_dict(stored, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"vision tower weights in {checkpoint} do not fit the tower {tower.vision_tower_name!r} "
                f"(mm_vision_tower): missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """``transformers`` saving, with the tower's weights under their original names
        (``model.vision_tower.vision_tower.vision_model.*``)."""
        tower = self.get_vision_tower()
        if tower is not None and tower.is_loaded:
            state_dict = self.state_dict() if state_dict is None else state_dict
            state_dict = to_original_tower_layout(
                state_dict, f"{self.base_model_prefix}.vision_tower.vision_tower."
            )
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    # ----- images -> features -----
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.get_vision_tower()(images)
        projector = self.get_model().mm_projector
        param = next(projector.parameters(), None)
        return projector(feats.to(param.dtype) if param is not None else feats)

    def image_features(self, images, image_sizes=None) -> list[torch.Tensor]:
        """One ``[n_i, hidden]`` tensor per image. ``images``: ``[N,3,H,W]``, ``[N,K,3,H,W]`` or a list
        of ``[3,H,W]`` / ``[K,3,H,W]`` (K crops of one image, merged by ``mm_patch_merge_type``)."""
        if not (isinstance(images, (list, tuple)) or images.ndim == 5):
            return list(self.encode_images(images))
        crops = [x.unsqueeze(0) if x.ndim == 3 else x for x in images]
        feats = self.encode_images(torch.cat(crops, dim=0))
        per_image = list(torch.split(feats, [c.shape[0] for c in crops], dim=0))
        tower, cfg = self.get_vision_tower(), self.config
        return merge_crop_features(
            per_image,
            getattr(cfg, "mm_patch_merge_type", None) or "flat",
            image_sizes=image_sizes,
            image_aspect_ratio=getattr(cfg, "image_aspect_ratio", None),
            grid_pinpoints=getattr(cfg, "image_grid_pinpoints", None),
            patches_per_side=tower.num_patches_per_side,
            crop_size=tower.image_size,
            image_newline=getattr(self.get_model(), "image_newline", None),
        )

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
            self.image_features(images, image_sizes),
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
        self, input_ids, position_ids, attention_mask, labels, images, image_sizes=None
    ):
        """The LLM's inputs for a packed batch (several samples per row, ``position_ids`` restarting at
        each): a dict of ``inputs_embeds``, ``position_ids``, ``labels`` and, for flash-style attention,
        the varlen kwargs. See llava.model.packed_inputs."""
        features = None
        if images is not None and self.get_vision_tower() is not None:
            features = self.image_features(images, image_sizes)
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
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None and cache is None and is_packed_batch(position_ids, attention_mask):
            packed = self.prepare_packed_inputs(
                input_ids, position_ids, attention_mask, labels, images, image_sizes
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
                    input_ids, position_ids, attention_mask, cache, labels, images, image_sizes
                )
            )
        params = _llm_forward_params(type(self))
        if cache is not None:
            kwargs["cache" if "cache" in params else "past_key_values"] = cache
        if return_dict is not None:
            kwargs["return_dict"] = return_dict
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

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
        """Generate from ids holding IMAGE_TOKEN_INDEX placeholders; returns only the new token ids.

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
                inputs, None, attention_mask, None, None, images, image_sizes, padding_side="left"
            )
            attention_mask = mask if mask is not None else torch.ones(embeds.shape[:2], dtype=torch.long)
        else:
            self._check_no_image_tokens(inputs)
            embeds = self.get_input_embeddings()(inputs)
            if attention_mask is None:
                attention_mask = torch.ones_like(inputs)
        attention_mask = attention_mask.to(device=embeds.device, dtype=torch.long)
        return super().generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    # ----- tokenizer -----
    def initialize_vision_tokenizer(
        self,
        tokenizer,
        *,
        mm_use_im_start_end: bool = False,
        mm_use_im_patch_token: bool = False,
        pretrained_adapter: str | None = None,
    ) -> bool:
        """Add ``<im_patch>`` / ``<im_start>`` ``<im_end>`` as the original does and size the embeddings.

        The new ``<im_start>``/``<im_end>`` rows start at the mean of the others, then from stage 1's
        ``model.embed_tokens.weight`` when ``pretrained_adapter`` (its mm_projector.bin) is given.
        Returns True when it added ``<im_start>``/``<im_end>``: then their input embeddings must learn
        (the projector stage trains the input embeddings; the caller sets that, see llava.train.freeze).
        """
        if mm_use_im_patch_token:
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
            self._fit_embeddings(len(tokenizer))
        if not mm_use_im_start_end:
            return False
        added = tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        self._fit_embeddings(len(tokenizer))
        new_ids = tokenizer.convert_tokens_to_ids([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN])
        inp, out = self.get_input_embeddings().weight.data, self.get_output_embeddings().weight.data
        if added:
            first = min(new_ids)  # the rows before the added tokens
            inp[new_ids] = inp[:first].mean(dim=0, keepdim=True)
            out[new_ids] = out[:first].mean(dim=0, keepdim=True)
        if pretrained_adapter:
            stored = load_tensor_file(pretrained_adapter).get("model.embed_tokens.weight")
            if stored is None:
                raise ValueError(
                    f"{pretrained_adapter} has no model.embed_tokens.weight for the <im_start>/<im_end> "
                    "tokens"
                )
            if stored.shape == inp.shape:
                inp[new_ids] = stored[new_ids].to(inp)
            elif stored.shape[0] == len(new_ids):
                inp[new_ids] = stored.to(inp)
            else:
                raise ValueError(
                    f"embed_tokens in {pretrained_adapter} has shape {tuple(stored.shape)}; expected "
                    f"{tuple(inp.shape)} or {len(new_ids)} rows (the added tokens)"
                )
        return True

    def _fit_embeddings(self, vocab: int) -> None:
        if vocab > self.get_input_embeddings().weight.shape[0]:
            self.resize_token_embeddings(vocab)
