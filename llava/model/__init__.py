"""The LLaVA model: vision tower + projector + any causal LM (see llava_arch.py); its parts (parts.py).

Importing this package changes nothing outside it. ``register_auto_classes()`` makes ``AutoConfig`` /
``AutoModelForCausalLM`` know the ``llava_*`` model types (the original did that at import time); the
loaders that need it call it (``llava.model.builder.load_pretrained_model``, training's ``load_llm``,
the weight tools).
"""

from .checkpoint import load_mm_projector_state, read_checkpoint_tensors
from .language_model.llava_llm import (
    LLAVA_MODEL_TYPES,
    LlavaLlamaConfig,
    LlavaLlamaForCausalLM,
    LlavaMistralConfig,
    LlavaMistralForCausalLM,
    LlavaQwen2Config,
    LlavaQwen2ForCausalLM,
    llava_class_for_config,
    llava_model_type,
    register_auto_classes,
)
from .llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from .parts import LlavaParts, llava_parts, parameter_parts

LlavaConfig = LlavaLlamaConfig

__all__ = [
    "LLAVA_MODEL_TYPES",
    "LlavaConfig",
    "LlavaLlamaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaMetaForCausalLM",
    "LlavaMetaModel",
    "LlavaMistralConfig",
    "LlavaMistralForCausalLM",
    "LlavaParts",
    "LlavaQwen2Config",
    "LlavaQwen2ForCausalLM",
    "llava_class_for_config",
    "llava_model_type",
    "llava_parts",
    "load_mm_projector_state",
    "parameter_parts",
    "read_checkpoint_tensors",
    "register_auto_classes",
]
