"""Original import path: ``from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM``."""

from .llava_llm import LlavaMistralConfig, LlavaMistralForCausalLM

__all__ = ["LlavaMistralConfig", "LlavaMistralForCausalLM"]
