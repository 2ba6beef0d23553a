"""The conversation templates, as data: registry name -> the fields of a `llava.conversation.Conversation`.

`llava.conversation` builds `conv_templates` from `TEMPLATES` (names that map to equal specs share one
Conversation object, e.g. `v1` and `vicuna_v1`). The names and strings are haotian-liu/LLaVA's, then
LLaVA-NeXT's (LLaVA-1.6 and OneVision checkpoints are trained with those: `qwen_1_5`, `chatml_direct`,
`mistral_instruct`, `llava_llama_3`, ...), then two of this project's own (`qwen_2`, `llama_3`, rendered
as the official Qwen2 / LLaMA-3 chat templates; NeXT's `qwen_2` renders the same string as `qwen_2` here).
The rendering of each style is in `Conversation`; `tests/test_conversation.py` and
`tests/test_next_templates.py` hold the golden prompt of every name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TemplateSpec:
    """The fields of one template (`style`: a `SeparatorStyle` member name)."""

    system: str
    roles: tuple[str, str]
    style: str
    sep: str
    sep2: str | None = None
    version: str = "Unknown"
    messages: tuple[tuple[str, str], ...] = ()
    offset: int = 0


VICUNA_V0_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while "
    "being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, "
    "or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
LLAVA_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
# LLaVA-NeXT's LLaMA-2 variants (no space between the two sentences of the mmtag one, as there).
LLAMA_2_SIMPLE_SYSTEM = "Answer the questions about the visual content that the user provides."
LLAMA_2_MMTAG_SYSTEM = (
    LLAMA_2_SIMPLE_SYSTEM
    + "The visual content will be provided with the following format: <Image>visual content</Image>."
)
MISTRAL_ORCA_SYSTEM = (
    "You are MistralOrca, a large language model trained by Alignment Lab AI. "
    "Write out your reasoning step-by-step to be sure you get the right answers!"
)
V0_EXAMPLE = (
    ("Human", "What are the key differences between renewable and non-renewable energy sources?"),
    (
        "Assistant",
        "Renewable energy sources are those that can be replenished naturally in a relatively "
        "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
        "Non-renewable energy sources, on the other hand, are finite and will eventually be "
        "depleted, such as coal, oil, and natural gas. Here are some key differences between "
        "renewable and non-renewable energy sources:\n"
        "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
        "energy sources are finite and will eventually run out.\n"
        "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
        "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
        "and other negative effects.\n"
        "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
        "have lower operational costs than non-renewable sources.\n"
        "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
        "locations than non-renewable sources.\n"
        "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
        "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
        "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
        "non-renewable sources are not, and their depletion can lead to economic and social instability.\n",
    ),
)
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
_IM_END = "<|im_end|>"
_UA = ("USER", "ASSISTANT")
_HA = ("Human", "Assistant")

_vicuna_v0 = TemplateSpec(VICUNA_V0_SYSTEM, _HA, "SINGLE", "###", messages=V0_EXAMPLE, offset=2)
_vicuna_v1 = TemplateSpec(VICUNA_V1_SYSTEM, _UA, "TWO", " ", "</s>", "v1")
_llava_v0 = TemplateSpec(VICUNA_V0_SYSTEM, _HA, "SINGLE", "###")
_llava_v0_mmtag = TemplateSpec(MMTAG_SYSTEM, _HA, "SINGLE", "###", version="v0_mmtag")
_llava_v1 = TemplateSpec(VICUNA_V0_SYSTEM, _UA, "TWO", " ", "</s>", "v1")
_llava_v1_mmtag = TemplateSpec(MMTAG_SYSTEM, _UA, "TWO", " ", "</s>", "v1_mmtag")
_llava_plain = TemplateSpec("", ("", ""), "PLAIN", "\n")
_llama_2 = TemplateSpec(LLAMA_2_SYSTEM, _UA, "LLAMA_2", "<s>", "</s>", "llama_v2")
_llava_llama_2 = TemplateSpec(LLAVA_SYSTEM, _UA, "LLAMA_2", "<s>", "</s>", "llama_v2")
_llava_llama_2_simple = TemplateSpec(LLAMA_2_SIMPLE_SYSTEM, _UA, "LLAMA_2", "<s>", "</s>", "llama_v2")
_llava_llama_2_mmtag = TemplateSpec(LLAMA_2_MMTAG_SYSTEM, _UA, "LLAMA_2", "<s>", "</s>", "llama_v2_mmtag")
_mistral_instruct = TemplateSpec("", _UA, "LLAMA_2", "", "</s>", "llama_v2")
_mpt = TemplateSpec(
    "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.",
    _CHATML_ROLES,
    "MPT",
    _IM_END,
    version="mpt",
)
_chatml_direct = TemplateSpec(
    "<|im_start|>system\nAnswer the questions.", _CHATML_ROLES, "MPT", _IM_END, version="mpt"
)
_mistral_orca = TemplateSpec(
    f"<|im_start|>system\n{MISTRAL_ORCA_SYSTEM}", _CHATML_ROLES, "MPT", _IM_END, version="mpt"
)
_mistral_zephyr = TemplateSpec(
    "<|system|>\nYou are a helpful AI assistant.",
    ("<|user|>\n", "<|assistant|>\n"),
    "MPT",
    "</s>",
    version="mpt",
)
# ChatML as Qwen ships it (NeXT's qwen_1_5 / qwen_2 render exactly this; qwen_2_5 has Qwen2.5's system).
_qwen_2 = TemplateSpec(
    "You are a helpful assistant.", ("user", "assistant"), "CHATML", _IM_END, _IM_END, "qwen_2"
)
_qwen_2_5 = TemplateSpec(
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    ("user", "assistant"),
    "CHATML",
    _IM_END,
    _IM_END,
    "qwen",
)
# LLaMA-3-Instruct's chat template written out (no tokenizer or network needed); BOS comes from the tokenizer.
_llama_3 = TemplateSpec(LLAVA_SYSTEM, ("user", "assistant"), "LLAMA_3", "<|eot_id|>", "<|eot_id|>", "llama_3")
# Gemma: "<start_of_turn>{role}\n{text}<end_of_turn>\n", no system turn.
_gemma = TemplateSpec(
    "",
    ("<start_of_turn>user\n", "<start_of_turn>model\n"),
    "GEMMA",
    "<end_of_turn>",
    "<end_of_turn>",
    "gemma",
)
_chat_template = TemplateSpec("", ("user", "assistant"), "CHAT_TEMPLATE", "", version="chat_template")

DEFAULT_TEMPLATE = "v1"
TEMPLATES: dict[str, TemplateSpec] = {
    # haotian-liu/LLaVA's names
    "default": _vicuna_v0,
    "v0": _vicuna_v0,
    "v1": _vicuna_v1,
    "vicuna_v1": _vicuna_v1,
    "llama_2": _llama_2,
    "mistral_instruct": _mistral_instruct,
    "chatml_direct": _chatml_direct,
    "mistral_direct": _chatml_direct,
    "plain": _llava_plain,
    "v0_plain": _llava_plain,
    "llava_v0": _llava_v0,
    "v0_mmtag": _llava_v0_mmtag,
    "llava_v1": _llava_v1,
    "v1_mmtag": _llava_v1_mmtag,
    "llava_llama_2": _llava_llama_2,
    "mpt": _mpt,
    # this project's
    "qwen_2": _qwen_2,
    "llama_3": _llama_3,
    "chat_template": _chat_template,
    # LLaVA-NeXT's
    "qwen_1_5": _qwen_2,
    "qwen_2_5": _qwen_2_5,
    "llava_llama_3": _llama_3,
    "mistral_orca": _mistral_orca,
    "mistral_zephyr": _mistral_zephyr,
    "llava_mistral_instruct": _mistral_instruct,
    "gemma_instruct": _gemma,
    "llava_llama_2_simple": _llava_llama_2_simple,
    "llava_llama_2_mmtag": _llava_llama_2_mmtag,
    "llava_v0_mmtag": _llava_v0_mmtag,
    "llava_v1_mmtag": _llava_v1_mmtag,
}
