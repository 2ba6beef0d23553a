"""Convert between the original LLaVA format and transformers' ``LlavaForConditionalGeneration``
(the llava-hf layout vLLM and transformers serve).

    export_to_hf(model, tokenizer, out_dir)          # our model -> llava-hf folder
    model, tok = llava_from_hf(hf_dir)                # llava-hf folder -> our model, in memory
    import_from_hf(hf_dir, out_dir)                   # llava-hf folder -> original-format folder

Command line (atomic writes): ``python -m llava.model.convert_hf --to-hf|--from-hf ...``.

The llava-hf prompt holds one ``<image>`` token per image feature (the processor expands it);
``export_to_hf`` adds that token to the tokenizer and the embeddings. The conversation template
the model was trained with (``conv_template``) is kept in both directions.
Weights move module by module through transformers' own classes, so key layouts stay theirs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel

from llava.constants import DEFAULT_IMAGE_TOKEN

from .checkpoint import to_original_tower_layout
from .language_model.llava_llm import llava_class_for_config
from .llava_arch import LlavaMetaForCausalLM

# Config fields of the original format that are not part of the LLM's own config.
_LLAVA_FIELDS = (
    "use_mm_proj",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_padding_side",
    "tokenizer_model_max_length",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower",
    "conv_template",
)


def _llm_model_type(model) -> str:
    base = next(
        c
        for c in type(model).__mro__
        if issubclass(c, PreTrainedModel) and not issubclass(c, LlavaMetaForCausalLM)
    )
    return base.config_class.model_type


def _text_config(model, vocab_size: int):
    fields = {
        k: v
        for k, v in model.config.to_dict().items()
        if not k.startswith("mm_") and k not in _LLAVA_FIELDS and k not in ("architectures", "model_type")
    }
    fields["vocab_size"] = vocab_size
    return transformers.AutoConfig.for_model(_llm_model_type(model), **fields)


def _check_exportable(model) -> None:
    cfg, tower = model.config, model.get_vision_tower()
    if tower is None or not tower.is_loaded:
        raise ValueError("export_to_hf needs a LLaVA model with a loaded vision tower")
    if getattr(cfg, "mm_projector_type", "linear") != "mlp2x_gelu":
        raise ValueError(
            f"llava-hf has a 2-layer GELU projector only; mm_projector_type {cfg.mm_projector_type!r} cannot be "
            "exported (supported: mlp2x_gelu)"
        )
    if (getattr(cfg, "mm_patch_merge_type", None) or "flat") != "flat" or getattr(
        cfg, "mm_use_im_start_end", False
    ):
        raise ValueError(
            "export_to_hf supports LLaVA-1.5 models (mm_patch_merge_type flat, no im_start/end tokens)"
        )


def _image_processor(tower, pad: bool):
    src = tower.image_processor
    settings = {
        k: getattr(src, k)
        for k in ("size", "crop_size", "image_mean", "image_std", "resample", "do_center_crop", "do_resize")
        if getattr(src, k, None) is not None
    }
    if tower.backend.model_class != "CLIPVisionModel":
        return copy.deepcopy(src)
    return transformers.LlavaImageProcessor(do_pad=pad, **settings)


def _grow(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if rows <= weight.shape[0]:
        return weight
    extra = weight.mean(dim=0, keepdim=True).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra], dim=0)


def copy_weights_to_hf(model, hf, vocab: int) -> None:
    """Our model's LLM, tower, projector (and image_newline) and head into a llava-hf model of any of
    transformers' three classes, module by module through their own key layouts; the embeddings and
    head grown to `vocab` rows (the added `<image>` / `<video>` tokens)."""
    inner, tower = model.get_model(), model.get_vision_tower()
    text_state = {
        k: v
        for k, v in inner.state_dict().items()
        if not k.startswith(("vision_tower.", "mm_projector.", "image_newline"))
    }
    text_state["embed_tokens.weight"] = _grow(text_state["embed_tokens.weight"], vocab)
    with torch.no_grad():
        hf.model.language_model.load_state_dict(text_state, strict=True)
        hf.model.vision_tower.load_state_dict(tower.vision_tower.state_dict(), strict=True)
        hf.model.multi_modal_projector.linear_1.load_state_dict(inner.mm_projector[0].state_dict())
        hf.model.multi_modal_projector.linear_2.load_state_dict(inner.mm_projector[2].state_dict())
        if getattr(hf.model, "image_newline", None) is not None:
            hf.model.image_newline.copy_(inner.image_newline)
        hf.lm_head.weight.copy_(_grow(model.get_output_embeddings().weight, vocab))
    hf.generation_config = copy.deepcopy(model.generation_config)


def export_to_hf(model, tokenizer, out_dir, chat_template: str | None = None) -> Path:
    """Write ``model`` as a llava-hf folder (model, tokenizer with ``<image>``, processor); returns the path."""
    _check_exportable(model)
    out = Path(out_dir)
    cfg, tower = model.config, model.get_vision_tower()
    tok = copy.deepcopy(tokenizer)
    if DEFAULT_IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([DEFAULT_IMAGE_TOKEN], special_tokens=True)
    image_token_index = tok.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    vocab = max(len(tok), model.get_input_embeddings().weight.shape[0], image_token_index + 1)
    drop_cls = tower.select_feature == "patch" and tower.backend.has_cls_token
    hf_cfg = transformers.LlavaConfig(
        vision_config=tower.vision_tower.config.to_dict(),
        text_config=_text_config(model, vocab).to_dict(),
        image_token_index=image_token_index,
        projector_hidden_act="gelu",
        vision_feature_layer=tower.select_layer,
        vision_feature_select_strategy="default" if drop_cls else "full",
        image_seq_length=tower.num_image_tokens,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
    )
    if getattr(cfg, "conv_template", None):  # the template it was trained with travels along
        hf_cfg.conv_template = cfg.conv_template
    dtype = model.get_input_embeddings().weight.dtype
    hf = transformers.LlavaForConditionalGeneration._from_config(hf_cfg, dtype=dtype)
    copy_weights_to_hf(model, hf, vocab)
    # Legacy llava-hf names (vision_tower.vision_model.*), which vLLM and transformers 4 and 5 all read.
    hf.save_pretrained(out, state_dict=to_original_tower_layout(hf.state_dict(), "model.vision_tower."))
    processor = transformers.LlavaProcessor(
        image_processor=_image_processor(tower, pad=getattr(cfg, "image_aspect_ratio", None) == "pad"),
        tokenizer=tok,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy=hf_cfg.vision_feature_select_strategy,
        image_token=DEFAULT_IMAGE_TOKEN,
        num_additional_image_tokens=1 if tower.backend.has_cls_token else 0,
        chat_template=chat_template,
    )
    processor.save_pretrained(out)
    return out


def _hf_mm_fields(hcfg, hf_path, vision_tower_name: str | None) -> dict:
    """The ``mm_*`` fields every llava-hf family maps the same way (tower, projector, feature choice)."""
    if isinstance(hcfg.vision_feature_layer, (list, tuple)):
        raise ValueError(
            f"{hf_path}: llava-hf models with several vision_feature_layer values have no original-format "
            "equivalent"
        )
    fields = dict(
        mm_vision_tower=vision_tower_name or str(Path(hf_path).resolve()),
        mm_hidden_size=hcfg.vision_config.hidden_size,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=hcfg.vision_feature_layer,
        mm_vision_select_feature="patch" if hcfg.vision_feature_select_strategy == "default" else "cls_patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        use_mm_proj=True,
        tokenizer_padding_side="right",
    )
    if getattr(hcfg, "conv_template", None):  # written by our exporters; llava-hf's own folders lack it
        fields["conv_template"] = hcfg.conv_template
    return fields


def _llava_from_loaded(hf, hf_path, mm_fields: dict, image_processor):
    """Our LLaVA class (original layout) holding the weights of a loaded llava-hf model ``hf``."""
    text = hf.config.text_config.to_dict()
    cls = llava_class_for_config({"model_type": text["model_type"]})
    text.pop("model_type", None)
    text.pop("architectures", None)
    model = cls._from_config(cls.config_class(**text, **mm_fields), dtype=hf.lm_head.weight.dtype)
    inner, hproj = model.get_model(), hf.model.multi_modal_projector
    with torch.no_grad():
        missing = inner.load_state_dict(hf.model.language_model.state_dict(), strict=False).missing_keys
        if [k for k in missing if not k.startswith(("mm_projector.", "vision_tower.", "image_newline"))]:
            raise ValueError(f"{hf_path}: language model weights missing for {missing[:5]}")
        inner.mm_projector[0].load_state_dict(hproj.linear_1.state_dict())
        inner.mm_projector[2].load_state_dict(hproj.linear_2.state_dict())
        if getattr(inner, "image_newline", None) is not None:
            inner.image_newline.copy_(hf.model.image_newline)
        model.lm_head.load_state_dict(hf.lm_head.state_dict())
    inner.get_vision_tower().adopt(hf.model.vision_tower, image_processor)
    model.generation_config = copy.deepcopy(hf.generation_config)
    return model.eval()


def _refuse_quantization(load_kwargs: dict) -> None:
    if "quantization_config" in load_kwargs:
        raise ValueError(
            "a llava-hf checkpoint cannot be quantized while importing; convert it first with "
            "import_from_hf(hf_path, out_dir) and load out_dir with load_4bit / load_8bit"
        )


def llava_from_hf(hf_path, vision_tower_name: str | None = None, **load_kwargs):
    """Load a llava-hf folder into our LLaVA class (original layout in memory); returns ``(model, tokenizer)``.

    ``vision_tower_name`` becomes ``mm_vision_tower``; by default the llava-hf folder itself,
    which the vision tower loader understands.
    """
    _refuse_quantization(load_kwargs)
    hf_path = os.fspath(hf_path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(hf_path, **load_kwargs)
    mm_fields = _hf_mm_fields(hf.config, hf_path, vision_tower_name)
    mm_fields.update(mm_patch_merge_type="flat", image_aspect_ratio="pad")
    processor = transformers.AutoProcessor.from_pretrained(hf_path)
    return _llava_from_loaded(hf, hf_path, mm_fields, processor.image_processor), processor.tokenizer


def save_original_format(model, tokenizer, out_dir, vision_tower_name: str | None = None) -> None:
    """Save an imported model as an original-format folder; without ``vision_tower_name`` the tower
    goes to ``out_dir/vision_tower`` and ``mm_vision_tower`` points there (absolute path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vision_tower_name is None:
        tower = model.get_vision_tower()
        tower.vision_tower.save_pretrained(out / "vision_tower")
        tower.image_processor.save_pretrained(out / "vision_tower")
        model.config.mm_vision_tower = str((out / "vision_tower").resolve())
        tower.vision_tower_name = model.config.mm_vision_tower
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def import_from_hf(hf_path, out_dir, vision_tower_name: str | None = None, **load_kwargs):
    """Write a llava-hf folder as an original-format LLaVA folder; returns the loaded model.

    Without ``vision_tower_name`` the tower is also written to ``out_dir/vision_tower`` and
    ``mm_vision_tower`` points there (absolute path).
    """
    model, tokenizer = llava_from_hf(hf_path, vision_tower_name, **load_kwargs)
    save_original_format(model, tokenizer, out_dir, vision_tower_name)
    return model
