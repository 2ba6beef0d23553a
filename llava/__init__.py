"""LLaVA: large language-and-vision assistants (train, serve, evaluate).

Importing the package is cheap: the model classes load on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "LlavaLlamaForCausalLM": "llava.model",
    "LlavaMistralForCausalLM": "llava.model",
    "LlavaQwen2ForCausalLM": "llava.model",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llava' has no attribute {name!r}")
