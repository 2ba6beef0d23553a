"""Original import path: ``from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM, LlavaConfig``."""

from .llava_llm import LlavaLlamaConfig, LlavaLlamaForCausalLM

LlavaConfig = LlavaLlamaConfig

__all__ = ["LlavaConfig", "LlavaLlamaConfig", "LlavaLlamaForCausalLM"]
