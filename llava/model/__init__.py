"""The LLaVA model: vision tower + projector + any causal LM (see llava_arch.py).

Importing this package registers the ``llava_*`` model types with ``AutoConfig`` and
``AutoModelForCausalLM`` (idempotent), as the original package does.
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

LlavaConfig = LlavaLlamaConfig

register_auto_classes()

__all__ = [
    "LLAVA_MODEL_TYPES",
    "LlavaConfig",
    "LlavaLlamaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaMetaForCausalLM",
    "LlavaMetaModel",
    "LlavaMistralConfig",
    "LlavaMistralForCausalLM",
    "LlavaQwen2Config",
    "LlavaQwen2ForCausalLM",
    "llava_class_for_config",
    "llava_model_type",
    "load_mm_projector_state",
    "read_checkpoint_tensors",
    "register_auto_classes",
]
