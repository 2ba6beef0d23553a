"""``load_pretrained_model``: the original entry point for inference, dispatching on folder contents.

What the folder holds decides how it loads (never words in its name):
  ``adapter_config.json``            LoRA: base (``model_base`` or the adapter's own base) +
                                     ``non_lora_trainables.bin`` + adapter, merged
  ``mm_projector.bin`` + model_base  projector only (stage-1 output) on top of the base LLM
  llava-hf ``config.json``           ``LlavaForConditionalGeneration`` format, imported
  ``mm_vision_tower`` in config      a merged LLaVA checkpoint (original format)
  anything else                      a plain causal LM (image_processor is None)

LLaVA-NeXT's checkpoints (LLaVA-1.6, OneVision: ``model_type`` llava / llava_mistral / llava_qwen /
qwen2 with ``mm_vision_tower``) are merged LLaVA checkpoints like any other; the class comes from their
config (``llava_class_for_config``), and LLaVA-NeXT's keywords (``overwrite_config``,
``customized_config``, ``multimodal``, ``torch_dtype`` as a string) are accepted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
    LLAVA_HF_MODEL_TYPES,
)

from .checkpoint import load_mm_projector_state, load_tensor_file, resolve_file
from .language_model.llava_llm import llava_class_for_config, register_auto_classes

logger = logging.getLogger(__name__)
# Kept in full precision under 4/8-bit: plain names (matched as substrings by older transformers)
# and regexes (transformers 5 matches from the start of the module name).
_NOT_QUANTIZED = ["lm_head", "mm_projector", "vision_tower", r".*\.mm_projector", r".*\.vision_tower"]


def _read_json(folder: str, name: str) -> dict | None:
    path = resolve_file(folder, name)
    return json.loads(Path(path).read_text()) if path else None


def _has_file(folder: str, name: str) -> bool:
    return resolve_file(folder, name) is not None


def detect_checkpoint_layout(model_path: str, model_base: str | None = None) -> str:
    """One of ``lora``, ``projector``, ``llava_hf``, ``llava``, ``lm`` (see the module docstring)."""
    if _has_file(model_path, "adapter_config.json"):
        return "lora"
    if model_base is not None and _has_file(model_path, "mm_projector.bin"):
        return "projector"
    if model_base is not None:
        raise ValueError(
            f"model_base {model_base!r} was given but {model_path!r} holds neither adapter_config.json (LoRA) "
            "nor mm_projector.bin (projector-only); drop --model-base for a merged checkpoint"
        )
    cfg = _read_json(model_path, "config.json") or {}
    if cfg.get("model_type") in LLAVA_HF_MODEL_TYPES and "text_config" in cfg:
        return "llava_hf"
    if cfg.get("mm_vision_tower"):
        return "llava"
    return "lm"


def _load_kwargs(load_8bit, load_4bit, device_map, device, use_flash_attn, kwargs) -> dict:
    from transformers import BitsAndBytesConfig

    out = {"device_map": device_map, **kwargs}
    if device != "cuda":
        out["device_map"] = {"": device}
    dtype = out.pop("torch_dtype", None) or out.pop("dtype", None)
    if isinstance(dtype, str) and dtype != "auto":  # LLaVA-NeXT passes "float16" / "bfloat16"
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"torch_dtype {dtype!r} is not a torch dtype (e.g. 'float16', 'bfloat16')")
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = (
            torch.float16 if device in ("cuda", "mps") or str(device).startswith("cuda") else torch.float32
        )
    if load_8bit:
        out["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=_NOT_QUANTIZED
        )
    elif load_4bit:
        out["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            llm_int8_skip_modules=_NOT_QUANTIZED,
        )
    out["dtype"] = dtype
    if use_flash_attn:
        out["attn_implementation"] = "flash_attention_2"
    return out


def _model_class(cfg_dict: dict):
    from transformers import AutoModelForCausalLM

    return llava_class_for_config(cfg_dict) if cfg_dict.get("mm_vision_tower") else AutoModelForCausalLM


def _config_object(folder: str, cls, customized=None, overwrite: dict | None = None):
    """The config to build ``cls`` with: ``customized`` or the folder's, with ``overwrite``'s fields set."""
    from transformers import AutoConfig

    config_cls = getattr(cls, "config_class", None)
    config = customized if customized is not None else (config_cls or AutoConfig).from_pretrained(folder)
    for key, value in (overwrite or {}).items():
        logger.info("Overwriting config field %s = %r", key, value)
        setattr(config, key, value)
    return config


def _load_lora(model_path, model_base, kwargs, config_changes):
    from peft import PeftModel

    adapter_cfg = _read_json(model_path, "adapter_config.json") or {}
    base = model_base or adapter_cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{model_path} is a LoRA adapter: pass model_base (the LLM or LLaVA it was trained on)"
        )
    cfg_dict = _read_json(model_path, "config.json") or _read_json(base, "config.json") or {}
    cls = _model_class(cfg_dict)
    cfg = _config_object(model_path if _has_file(model_path, "config.json") else base, cls, **config_changes)
    base_vocab = (_read_json(base, "config.json") or {}).get("vocab_size", cfg.vocab_size)
    target_vocab, cfg.vocab_size = cfg.vocab_size, base_vocab
    logger.info("Loading LLaVA from base model %s", base)
    model = cls.from_pretrained(base, config=cfg, **kwargs)
    if target_vocab != base_vocab:
        model.resize_token_embeddings(target_vocab)
    extra = resolve_file(model_path, "non_lora_trainables.bin")
    if extra is not None:
        state = {k.removeprefix("base_model."): v for k, v in load_tensor_file(extra).items()}
        if any(k.startswith("model.model.") for k in state):
            state = {k.removeprefix("model."): v for k, v in state.items()}
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"{extra}: keys that fit no parameter of the model: {result.unexpected_keys[:8]}"
            )
    logger.info("Loading LoRA weights from %s and merging", model_path)
    model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    return model, base


def _load_tokenizer(*folders):
    from transformers import AutoTokenizer

    for folder in folders:
        if folder is not None and _has_file(folder, "tokenizer_config.json"):
            return AutoTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folders[-1])


def _context_len(config) -> int:
    for name in ("max_sequence_length", "max_position_embeddings"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    return 2048


def load_pretrained_model(
    model_path,
    model_base,
    model_name=None,
    load_8bit=False,
    load_4bit=False,
    device_map="auto",
    device="cuda",
    use_flash_attn=False,
    *,
    overwrite_config: dict | None = None,
    customized_config=None,
    multimodal: bool | None = None,
    **kwargs,
):
    """Returns ``(tokenizer, model, image_processor, context_len)`` as the original does.

    ``model_name`` is accepted for compatibility and not used to decide anything. As LLaVA-NeXT's:
    ``overwrite_config`` sets config fields before the model is built (e.g. ``{"mm_spatial_pool_stride":
    4}`` for video), ``customized_config`` replaces the folder's config, ``multimodal=True`` asserts
    that the folder holds a LLaVA model (never needed: the folder says so).
    """
    register_auto_classes()  # text-only LLaVA checkpoints (llava_llama) load through the Auto classes
    model_path = os.fspath(model_path)
    model_base = os.fspath(model_base) if model_base is not None else None
    for path in (model_path, model_base):
        if path is not None and path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"model folder {path} does not exist")
    layout = detect_checkpoint_layout(model_path, model_base)
    if multimodal and layout == "lm":
        raise ValueError(
            f"multimodal=True but {model_path} is not a LLaVA checkpoint (its config.json has no "
            "mm_vision_tower, and it holds no adapter_config.json or mm_projector.bin)"
        )
    changes = {"customized": customized_config, "overwrite": overwrite_config}
    if layout == "llava_hf" and (overwrite_config or customized_config is not None):
        raise ValueError(
            f"{model_path} is a llava-hf folder: overwrite_config / customized_config do not apply"
        )
    load_kwargs = _load_kwargs(load_8bit, load_4bit, device_map, device, use_flash_attn, kwargs)
    logger.info("Loading %s as %s", model_path, layout)
    if layout == "lora":
        model, base = _load_lora(model_path, model_base, load_kwargs, changes)
        tokenizer = _load_tokenizer(model_path, base)
    elif layout == "projector":
        cfg_dict = _read_json(model_path, "config.json") or {}
        cls = _model_class(cfg_dict)
        model = cls.from_pretrained(
            model_base, config=_config_object(model_path, cls, **changes), **load_kwargs
        )
        load_mm_projector_state(model, load_tensor_file(resolve_file(model_path, "mm_projector.bin")))
        tokenizer = _load_tokenizer(model_path, model_base)
    elif layout == "llava_hf":
        from .hf_next_format import load_llava_hf

        model, tokenizer = load_llava_hf(model_path, **load_kwargs)
    else:
        cfg_dict = _read_json(model_path, "config.json") or {}
        if customized_config is not None:
            cfg_dict = customized_config.to_dict()
        cls = _model_class(cfg_dict)
        if customized_config is not None or overwrite_config:
            load_kwargs["config"] = _config_object(model_path, cls, **changes)
        model = cls.from_pretrained(model_path, **load_kwargs)
        tokenizer = _load_tokenizer(model_path)

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    image_processor = None
    if hasattr(model, "get_vision_tower") and model.get_vision_tower() is not None:
        cfg = model.config
        added = []
        if getattr(cfg, "mm_use_im_patch_token", True):
            added.append(DEFAULT_IMAGE_PATCH_TOKEN)
        if getattr(cfg, "mm_use_im_start_end", False):
            added += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
        if added:
            tokenizer.add_tokens(added, special_tokens=True)
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
        tower = model.get_vision_tower()
        if not tower.is_loaded:
            model.attach_vision_tower()
        image_processor = tower.image_processor
    return tokenizer, model, image_processor, _context_len(model.config)
