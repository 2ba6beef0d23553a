"""Which conversation template a served model uses, when the user does not say (`--conv-mode`).

The original picks it from words in the model name (`llava-v1.5-7b` -> `llava_v1`); served models are
only known by name, so the same rule is kept here, in one place, for the CLI, the web server and the
OpenAI-compatible API. An explicit `--conv-mode` always wins.
"""

from __future__ import annotations


def infer_conv_mode(model_name: str, multimodal: bool | None = None) -> str:
    """Template name for `model_name`; `multimodal` (when known) says whether it is a LLaVA model."""
    name = model_name.lower()
    if multimodal if multimodal is not None else "llava" in name:
        if "llama-2" in name:
            return "llava_llama_2"
        if "mistral" in name or "mixtral" in name:
            if "orca" in name:
                return "mistral_orca"
            if "hermes" in name:
                return "chatml_direct"
            return "mistral_instruct"
        if "v1.6-34b" in name:
            return "chatml_direct"
        if "gemma" in name:
            return "gemma_instruct"
        plain_tag = "mmtag" in name or ("plain" in name and "finetune" not in name)
        if "v1" in name:
            return "v1_mmtag" if plain_tag else "llava_v1"
        if "mpt" in name:
            return "mpt"
        return "v0_mmtag" if plain_tag else "llava_v0"
    if "mpt" in name:
        return "mpt_text"
    if "llama-2" in name:
        return "llama_2"
    return "vicuna_v1"


def stop_string(conv) -> str:
    """The stop string for a conversation (the original: `sep` for SINGLE/MPT styles, else `sep2`)."""
    from llava.conversation import SeparatorStyle

    single = {getattr(SeparatorStyle, n) for n in ("SINGLE", "MPT") if hasattr(SeparatorStyle, n)}
    return conv.sep if conv.sep_style in single else conv.sep2


def get_template(conv_mode: str, tokenizer=None):
    """A fresh copy of the named template (ValueError listing the valid names when unknown)."""
    from llava.conversation import get_conv_template

    return get_conv_template(conv_mode, tokenizer)
