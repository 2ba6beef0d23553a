"""Convert between the original LLaVA-NeXT / OneVision format and transformers'
``LlavaNextForConditionalGeneration`` and ``LlavaOnevisionForConditionalGeneration`` (the llava-hf
layouts vLLM and transformers serve).

    hf_format_for(model.config)                        # "llava" | "llava_next" | "llava_onevision"
    export_to_llava_next(model, tokenizer, out_dir)    # anyres + spatial_unpad model -> llava-hf NeXT folder
    export_to_onevision(model, tokenizer, out_dir)     # the same, or anyres_max_N -> llava-hf OneVision folder
    model, tok = llava_from_hf_next(hf_dir)            # either folder -> our model, in memory
    import_from_hf_next(hf_dir, out_dir)               # either folder -> original-format folder

What corresponds to what (ours -> transformers):
    image_aspect_ratio anyres                      LlavaNext (always anyres); LlavaOnevision anyres_max_<all tiles>
    image_aspect_ratio anyres_max_N                LlavaOnevision vision_aspect_ratio anyres_max_N
    image_grid_pinpoints [(width, height), ...]    image_grid_pinpoints [(height, width), ...]
    image_sizes (width, height)                    image_sizes (height, width)
    mm_vision_select_layer                         vision_feature_layer
    select_feature patch on a tower with CLS       vision_feature_select_strategy default (else full)
    model.image_newline                            model.image_newline
    several images in one sample (each one crop,   LlavaOnevision with batch_num_images: an image of a sample with
    its features + one newline)                    more than one is encoded base-only, plus one newline
    a video: frames pooled bilinearly with stride  LlavaOnevision pixel_values_videos (transformers fixes these
    2, one newline after the whole video           three settings; other values are refused on export)
    (mm_newline_position one_token)
Each pinpoint pair is swapped in place and the list order kept, so ties between candidate grids (small
images) resolve as in the original; a transformers folder read back is swapped the same way.
LlavaNext has no video and encodes every image as anyres, so a sample with several images (one crop each
here) has no LlavaNext equivalent: export such models as OneVision.

Unpadding: LLaVA-NeXT (and llava.model.image_features) keeps ``int(h * (w' / w))`` rows (or columns) of
the tile map; transformers keeps ``int(round(h * (w' / w), 7))``. They differ only when the product falls a
rounding error below a whole number, e.g. LLaVA-1.6 at 336 px with its default pinpoints and an image
110 wide, 352 high: 110 * (48 / 352) = 14.999999999999998, so LLaVA-NeXT keeps 14 of the 24 feature
columns and transformers 16; for such sizes the two models see different features (and transformers'
processor counts its own). tests/test_hf_next_format.py checks that its parity sizes are not such sizes.

Weights move module by module through transformers' own classes (the vision tower saved under the legacy
``vision_tower.vision_model.*`` names, as llava.model.hf_format does); ``conv_template`` travels in both
directions. The OneVision processor is written as ``processor_config.json`` directly, because transformers
builds its video processor only where torchvision is installed.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import transformers

from llava.constants import DEFAULT_IMAGE_TOKEN, LLAVA_HF_MODEL_TYPES
from llava.images.grid import anyres_max_crops, is_anyres, parse_grid_pinpoints

from .checkpoint import to_original_tower_layout
from .hf_format import (
    _hf_mm_fields,
    _llava_from_loaded,
    _llm_model_type,
    _refuse_quantization,
    copy_weights_to_hf,
    llava_from_hf,
    save_original_format,
)
from .multimodal_encoder.vision_tower import TOWER_BACKENDS, processor_class

DEFAULT_VIDEO_TOKEN = "<video>"
HF_FORMATS = LLAVA_HF_MODEL_TYPES
# transformers' LlavaOnevision pools a video's frames in one fixed way; the original config fields for it
# and their defaults when a config lacks them (llava.model.video_features).
_OV_VIDEO = {
    "mm_newline_position": "one_token",
    "mm_spatial_pool_stride": 2,
    "mm_spatial_pool_mode": "bilinear",
}


def hf_format_for(config) -> str:
    """The transformers class family that reproduces a model with this (original-format) config:
    ``llava`` for LLaVA-1.5 (merge type flat), ``llava_onevision`` for ``anyres_max_N``, else ``llava_next``."""
    if (getattr(config, "mm_patch_merge_type", None) or "flat") == "flat":
        return "llava"
    if anyres_max_crops(getattr(config, "image_aspect_ratio", None)) is not None:
        return "llava_onevision"
    return "llava_next"


# ------------------------------------------------------------------------------------------- export
def _pinpoints(model) -> list[tuple[int, int]]:
    """The model's grid pinpoints as (width, height) pixels."""
    return parse_grid_pinpoints(model.config.image_grid_pinpoints, model.get_vision_tower().image_size)


def _most_tiles(model) -> int:
    crop = model.get_vision_tower().image_size
    return max((w // crop) * (h // crop) for w, h in _pinpoints(model))


def _check_exportable(model, kind: str, any_video: bool = False) -> None:
    cfg, tower = model.config, model.get_vision_tower()
    name = f"export to {kind}"
    if tower is None or not tower.is_loaded:
        raise ValueError(f"{name} needs a LLaVA model with a loaded vision tower")
    if getattr(cfg, "mm_projector_type", "linear") != "mlp2x_gelu":
        raise ValueError(
            f"{name}: transformers has a 2-layer GELU projector only; mm_projector_type "
            f"{getattr(cfg, 'mm_projector_type', 'linear')!r} cannot be exported (supported: mlp2x_gelu)"
        )
    if getattr(cfg, "mm_use_im_start_end", False):
        raise ValueError(
            f"{name}: models with <im_start>/<im_end> tokens (mm_use_im_start_end) have no equivalent"
        )
    merge = getattr(cfg, "mm_patch_merge_type", None) or "flat"
    aspect = getattr(cfg, "image_aspect_ratio", None)
    if merge != "spatial_unpad" or not is_anyres(aspect):
        raise ValueError(
            f"{name} needs mm_patch_merge_type spatial_unpad with image_aspect_ratio anyres or anyres_max_N "
            f"(got {merge!r}, {aspect!r}); LLaVA-1.5 models (flat) export with llava.model.hf_format.export_to_hf"
        )
    if getattr(model.get_model(), "image_newline", None) is None:
        raise ValueError(
            f"{name}: the model has no image_newline (mm_patch_merge_type spatial_unpad needs it)"
        )
    if tower.num_image_tokens != tower.num_patches:
        raise ValueError(f"{name}: spatial merge needs mm_vision_select_feature 'patch' (square patch grids)")
    max_crops = anyres_max_crops(aspect)
    if kind == "llava_next" and max_crops is not None and math.sqrt(_most_tiles(model) / max_crops) > 1.1:
        raise ValueError(
            f"{name}: image_aspect_ratio {aspect!r} shrinks the feature maps of large tile grids (its pinpoints "
            f"reach {_most_tiles(model)} tiles) and LlavaNext never does; export with --hf-format llava_onevision"
        )
    if kind == "llava_onevision" and not any_video:
        for field, want in _OV_VIDEO.items():
            have = getattr(cfg, field, None)
            if have is not None and have != want:
                raise ValueError(
                    f"{name}: transformers' LlavaOnevision turns a video into frames pooled bilinearly with stride "
                    f"2 and one newline at the end; this model's {field} is {have!r} (needs {want!r}). For a "
                    "model that never saw videos, pass any_video=True (--any-video-pooling)"
                )


def _text_config(model, vocab_size: int):
    """The LLM's own config: only the fields its transformers config class knows (no mm_* or LLaVA fields)."""
    model_type = _llm_model_type(model)
    known = set(transformers.AutoConfig.for_model(model_type).to_dict())
    fields = {k: v for k, v in model.config.to_dict().items() if k in known}
    fields.pop("model_type", None)
    fields.pop("architectures", None)
    fields["vocab_size"] = vocab_size
    return transformers.AutoConfig.for_model(model_type, **fields)


def _with_tokens(tokenizer, tokens):
    tok = copy.deepcopy(tokenizer)
    missing = [t for t in tokens if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    return tok, [tok.convert_tokens_to_ids(t) for t in tokens]


def _plain_dict(value):
    """A SizeDict (or dict) as a plain dict of its set entries."""
    items = value.items() if isinstance(value, dict) else vars(value).items()
    return {k: v for k, v in items if v is not None}


def _processor_settings(tower) -> dict:
    src = tower.image_processor
    return {
        k: copy.deepcopy(getattr(src, k))
        for k in ("image_mean", "image_std", "resample", "do_convert_rgb")
        if getattr(src, k, None) is not None
    }


def _export(model, tokenizer, out_dir, kind: str, any_video: bool = False) -> tuple:
    """Build, fill and save the transformers model; returns (hf model, tokenizer with the new tokens, out)."""
    _check_exportable(model, kind, any_video)
    out = Path(out_dir)
    cfg, tower = model.config, model.get_vision_tower()
    tokens = [DEFAULT_IMAGE_TOKEN] + ([DEFAULT_VIDEO_TOKEN] if kind == "llava_onevision" else [])
    tok, ids = _with_tokens(tokenizer, tokens)
    vocab = max(len(tok), model.get_input_embeddings().weight.shape[0], max(ids) + 1)
    drop_cls = tower.select_feature == "patch" and tower.backend.has_cls_token
    common = dict(
        vision_config=tower.vision_tower.config.to_dict(),
        text_config=_text_config(model, vocab).to_dict(),
        image_token_index=ids[0],
        projector_hidden_act="gelu",
        vision_feature_layer=tower.select_layer,
        vision_feature_select_strategy="default" if drop_cls else "full",
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        image_grid_pinpoints=[[h, w] for w, h in _pinpoints(model)],  # transformers: (height, width)
    )
    if kind == "llava_next":
        hf_cfg = transformers.LlavaNextConfig(**common, image_seq_length=tower.num_image_tokens)
        hf_cls = transformers.LlavaNextForConditionalGeneration
    else:
        # plain anyres: N = the most tiles, so transformers never shrinks
        max_crops = anyres_max_crops(cfg.image_aspect_ratio) or _most_tiles(model)
        hf_cfg = transformers.LlavaOnevisionConfig(
            **common, video_token_index=ids[1], vision_aspect_ratio=f"anyres_max_{max_crops}"
        )
        hf_cls = transformers.LlavaOnevisionForConditionalGeneration
    if getattr(cfg, "conv_template", None):  # the template it was trained with travels along
        hf_cfg.conv_template = cfg.conv_template
    hf = hf_cls._from_config(hf_cfg, dtype=model.get_input_embeddings().weight.dtype)
    copy_weights_to_hf(model, hf, vocab)
    hf.save_pretrained(out, state_dict=to_original_tower_layout(hf.state_dict(), "model.vision_tower."))
    return hf, tok, out


def export_to_llava_next(model, tokenizer, out_dir, chat_template: str | None = None) -> Path:
    """Write ``model`` (anyres, spatial_unpad) as a ``LlavaNextForConditionalGeneration`` folder with its
    processor (``LlavaNextImageProcessor`` + tokenizer with ``<image>``); returns the path."""
    hf, tok, out = _export(model, tokenizer, out_dir, "llava_next")
    tower, crop = model.get_vision_tower(), model.get_vision_tower().image_size
    src = tower.image_processor
    size = _plain_dict(getattr(src, "size", None) or {"shortest_edge": crop})
    image_processor = transformers.LlavaNextImageProcessorPil(
        size=size,
        crop_size={"height": crop, "width": crop},
        do_center_crop=bool(getattr(src, "do_center_crop", False)),
        image_grid_pinpoints=hf.config.image_grid_pinpoints,
        do_pad=True,
        **_processor_settings(tower),
    )
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy=hf.config.vision_feature_select_strategy,
        image_token=DEFAULT_IMAGE_TOKEN,
        num_additional_image_tokens=1 if tower.backend.has_cls_token else 0,
        chat_template=chat_template,
    )
    processor.save_pretrained(out)
    return out


def export_to_onevision(
    model, tokenizer, out_dir, chat_template: str | None = None, any_video: bool = False
) -> Path:
    """Write ``model`` (anyres or anyres_max_N, spatial_unpad) as a ``LlavaOnevisionForConditionalGeneration``
    folder with its processor (image and video processors, tokenizer with ``<image>`` and ``<video>``).

    Refuses a model whose video settings (mm_newline_position, mm_spatial_pool_stride / _mode) differ from
    transformers' fixed ones, unless ``any_video``: then videos in transformers get its pooling, not the
    model's (for models trained on images only, whose config still records the training defaults)."""
    hf, tok, out = _export(model, tokenizer, out_dir, "llava_onevision", any_video)
    tower, crop = model.get_vision_tower(), model.get_vision_tower().image_size
    settings = _processor_settings(tower)
    image_processor = transformers.LlavaOnevisionImageProcessorPil(
        size={"height": crop, "width": crop},
        # unused by OneVision (no centre crop); there so a CLIP processor reading this folder crops alike
        crop_size={"height": crop, "width": crop},
        do_center_crop=False,
        image_grid_pinpoints=hf.config.image_grid_pinpoints,
        **settings,
    )
    video_processor = {  # LlavaOnevisionVideoProcessor's fields: frames resized to the tower's input size
        "video_processor_type": "LlavaOnevisionVideoProcessor",
        "size": {"height": crop, "width": crop},
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "default_to_square": False,
        "do_sample_frames": False,
        **settings,
    }
    video_processor["resample"] = int(video_processor.get("resample", 3))
    tok.save_pretrained(out)
    processor_cfg = {
        "image_processor": image_processor.to_dict(),
        "video_processor": video_processor,
        "num_image_tokens": tower.num_patches + int(tower.backend.has_cls_token),
        "vision_feature_select_strategy": hf.config.vision_feature_select_strategy,
        "image_token": DEFAULT_IMAGE_TOKEN,
        "video_token": DEFAULT_VIDEO_TOKEN,
        "vision_aspect_ratio": hf.config.vision_aspect_ratio,
        "processor_class": "LlavaOnevisionProcessor",
    }
    (out / "processor_config.json").write_text(json.dumps(processor_cfg, indent=2, sort_keys=True) + "\n")
    if chat_template:
        (out / "chat_template.jinja").write_text(chat_template)
    return out


# ------------------------------------------------------------------------------------------- import
_HF_CLASSES = {
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}


def _tower_processor(backend, hf_processor, crop: int):
    """The tower's own (CLIP / SigLIP) image processor with the llava-hf processor's settings: the data
    side tiles and pads images itself and calls it per crop."""
    settings = {
        k: copy.deepcopy(getattr(hf_processor, k))
        for k in ("image_mean", "image_std", "resample", "do_convert_rgb", "do_rescale", "rescale_factor")
        if getattr(hf_processor, k, None) is not None
    }
    settings["size"] = _plain_dict(getattr(hf_processor, "size", None) or {"height": crop, "width": crop})
    if backend.has_cls_token:
        crop_size = getattr(hf_processor, "crop_size", None)
        settings["crop_size"] = _plain_dict(crop_size) if crop_size else {"height": crop, "width": crop}
        settings["do_center_crop"] = bool(getattr(hf_processor, "do_center_crop", False))
    return processor_class(backend)(**settings)


def read_hf_format(hf_path) -> str:
    """``model_type`` of a llava-hf folder (llava, llava_next or llava_onevision); ValueError otherwise."""
    cfg_file = Path(hf_path) / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    if cfg.get("model_type") not in HF_FORMATS or "text_config" not in cfg:
        raise ValueError(
            f"{hf_path} is not a llava-hf folder (config.json needs model_type one of {list(HF_FORMATS)} and a "
            "text_config)"
        )
    return cfg["model_type"]


def llava_from_hf_next(hf_path, vision_tower_name: str | None = None, **load_kwargs):
    """Load a llava-hf NeXT or OneVision folder into our LLaVA class (original layout, in memory);
    returns ``(model, tokenizer)``. ``vision_tower_name`` becomes ``mm_vision_tower`` (default: the folder)."""
    _refuse_quantization(load_kwargs)
    kind = read_hf_format(hf_path)
    if kind not in _HF_CLASSES:
        raise ValueError(f"{hf_path}: model_type {kind!r}; use llava.model.hf_format.llava_from_hf for it")
    hf = getattr(transformers, _HF_CLASSES[kind]).from_pretrained(hf_path, **load_kwargs)
    hcfg = hf.config
    fields = _hf_mm_fields(hcfg, hf_path, vision_tower_name)
    fields.update(
        mm_patch_merge_type="spatial_unpad",
        image_aspect_ratio="anyres" if kind == "llava_next" else hcfg.vision_aspect_ratio,
        image_grid_pinpoints=[[w, h] for h, w in hcfg.image_grid_pinpoints],  # ours: (width, height)
    )
    if kind == "llava_onevision":
        fields.update(_OV_VIDEO)
    # AutoProcessor would build the OneVision video processor, which needs torchvision; only these two are used.
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_path)
    hf_image_processor = transformers.AutoImageProcessor.from_pretrained(hf_path)
    vision = hf.model.vision_tower
    backend = TOWER_BACKENDS[vision.config.model_type]
    image_processor = _tower_processor(backend, hf_image_processor, vision.config.image_size)
    return _llava_from_loaded(hf, hf_path, fields, image_processor), tokenizer


def import_from_hf_next(hf_path, out_dir, vision_tower_name: str | None = None, **load_kwargs):
    """Write a llava-hf NeXT or OneVision folder as an original-format LLaVA folder; returns the model.
    Without ``vision_tower_name`` the tower is written to ``out_dir/vision_tower`` and named there."""
    model, tokenizer = llava_from_hf_next(hf_path, vision_tower_name, **load_kwargs)
    save_original_format(model, tokenizer, out_dir, vision_tower_name)
    return model


def load_llava_hf(hf_path, vision_tower_name: str | None = None, **load_kwargs):
    """Any llava-hf folder (model_type llava, llava_next or llava_onevision) -> ``(model, tokenizer)``."""
    if read_hf_format(hf_path) == "llava":
        return llava_from_hf(hf_path, vision_tower_name, **load_kwargs)
    return llava_from_hf_next(hf_path, vision_tower_name, **load_kwargs)
