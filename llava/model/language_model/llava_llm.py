"""The named LLaVA classes (original names) and ``llava_class_for_config`` for any causal LM.

Each class is ``LlavaMetaForCausalLM`` in front of the transformers class; the config classes only
change ``model_type`` so that ``config.json`` reads ``llava_llama`` etc. as the original writes it.
"""

from __future__ import annotations

import functools

import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ..llava_arch import LlavaMetaForCausalLM


class LlavaLlamaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaMistralConfig(MistralConfig):
    model_type = "llava_mistral"


class LlavaQwen2Config(Qwen2Config):
    model_type = "llava_qwen2"


class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaLlamaConfig


class LlavaMistralForCausalLM(LlavaMetaForCausalLM, MistralForCausalLM):
    config_class = LlavaMistralConfig


class LlavaQwen2ForCausalLM(LlavaMetaForCausalLM, Qwen2ForCausalLM):
    config_class = LlavaQwen2Config


LLAVA_MODEL_TYPES = {
    "llava_llama": (LlavaLlamaConfig, LlavaLlamaForCausalLM),
    "llava_mistral": (LlavaMistralConfig, LlavaMistralForCausalLM),
    "llava_qwen2": (LlavaQwen2Config, LlavaQwen2ForCausalLM),
}
# Other spellings seen in the wild: the model type of the LLM itself, LLaVA-NeXT's "llava_qwen".
_ALIASES = {
    "llama": "llava_llama",
    "mistral": "llava_mistral",
    "qwen2": "llava_qwen2",
    "llava_qwen": "llava_qwen2",
}
# Original checkpoints of LLaVA <= 1.5 say model_type "llava" and name the class in "architectures".
_BY_ARCHITECTURE = {
    "LlavaLlamaForCausalLM": "llava_llama",
    "LlavaMistralForCausalLM": "llava_mistral",
    "LlavaQwen2ForCausalLM": "llava_qwen2",
    "LlavaQwenForCausalLM": "llava_qwen2",
}


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know the ``llava_*`` model types (idempotent)."""
    for model_type, (config_cls, model_cls) in LLAVA_MODEL_TYPES.items():
        transformers.AutoConfig.register(model_type, config_cls, exist_ok=True)
        transformers.AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)


@functools.cache
def _generic_llava_class(llm_class_name: str) -> type:
    base = getattr(transformers, llm_class_name)
    return type(f"Llava{llm_class_name}", (LlavaMetaForCausalLM, base), {"__module__": __name__})


def llava_model_type(config) -> str | None:
    """The ``llava_*`` type of a config (object or dict), or None for a model without a known mapping.

    Original checkpoints of LLaVA <= 1.5 say ``model_type: llava`` (which ``AutoConfig`` reads as
    transformers' llava-hf ``LlavaConfig``); their ``architectures`` name the class.
    """
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    model_type = get("model_type")
    if model_type in LLAVA_MODEL_TYPES:
        return model_type
    if model_type == "llava":
        for arch in get("architectures") or []:
            if arch in _BY_ARCHITECTURE:
                return _BY_ARCHITECTURE[arch]
        if get("mm_vision_tower") is not None:
            return "llava_llama"
        raise ValueError(
            "this is a llava-hf (LlavaForConditionalGeneration) checkpoint; convert it to the original format "
            "with `python -m llava.model.convert_hf --from-hf --model-path ... --output ...` or load it with "
            "llava.model.builder.load_pretrained_model"
        )
    return _ALIASES.get(model_type)


def llava_class_for_config(config) -> type:
    """The LLaVA class for a config (object or ``config.json`` dict): the named classes for LLaMA /
    Mistral / Qwen2, otherwise ``LlavaMetaForCausalLM`` over the LLM's own causal-LM class."""
    llava_type = llava_model_type(config)
    if llava_type is not None:
        return LLAVA_MODEL_TYPES[llava_type][1]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if name is None or isinstance(name, (list, tuple)) or not hasattr(transformers, name):
        raise ValueError(
            f"no causal LM class for model_type {model_type!r}; supported: {sorted(LLAVA_MODEL_TYPES)} and the "
            "model types of transformers' AutoModelForCausalLM"
        )
    return _generic_llava_class(name)
