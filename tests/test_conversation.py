"""Golden prompt strings for every template (written out by hand from the original LLaVA templates)."""

from pathlib import Path

import pytest
from PIL import Image

from llava import conversation as conversation_lib
from llava.conversation import SeparatorStyle, conv_templates, get_conv_template

Q1, A1, Q2, A2 = "<image>\nWhat is in the picture?", "A red circle.", "What colour is it?", "It is red."

VICUNA_V1_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
HUMAN_SYS = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
MMTAG_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant is able to "
    "understand the visual content that the user provides, and assist the user with a variety of tasks "
    "using natural language.The visual content will be provided with the following format: "
    "<Image>visual content</Image>."
)
LLAMA2_SYS = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
    "safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or "
    "illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
LLAVA_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
MPT_SYS = (
    "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.<|im_end|>"
)

V1_BODY = (
    " USER: <image>\nWhat is in the picture? ASSISTANT: A red circle.</s>"
    "USER: What colour is it? ASSISTANT: It is red.</s>"
)
V0_BODY = "###Human: <image>\nWhat is in the picture?###Assistant: A red circle.###Human: What colour is it?###Assistant: It is red.###"
LLAMA2_BODY = "<image>\nWhat is in the picture? [/INST] A red circle. </s><s>[INST] What colour is it? [/INST] It is red. </s>"
CHATML_BODY = (
    "<|im_start|>user\n<image>\nWhat is in the picture?<|im_end|><|im_start|>assistant\nA red circle.<|im_end|>"
    "<|im_start|>user\nWhat colour is it?<|im_end|><|im_start|>assistant\nIt is red.<|im_end|>"
)

GOLDEN = {
    "v1": VICUNA_V1_SYS + V1_BODY,
    "vicuna_v1": VICUNA_V1_SYS + V1_BODY,
    "llava_v1": HUMAN_SYS + V1_BODY,
    "v1_mmtag": MMTAG_SYS + V1_BODY,
    "v0": HUMAN_SYS + V0_BODY,
    "default": HUMAN_SYS + V0_BODY,
    "llava_v0": HUMAN_SYS + V0_BODY,
    "v0_mmtag": MMTAG_SYS + V0_BODY,
    "llama_2": "[INST] <<SYS>>\n" + LLAMA2_SYS + "\n<</SYS>>\n\n" + LLAMA2_BODY,
    "llava_llama_2": "[INST] <<SYS>>\n" + LLAVA_SYS + "\n<</SYS>>\n\n" + LLAMA2_BODY,
    "mistral_instruct": (
        "[INST] <image>\nWhat is in the picture? [/INST] A red circle. </s>"
        "[INST] What colour is it? [/INST] It is red. </s>"
    ),
    "mpt": MPT_SYS + CHATML_BODY,
    "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|>" + CHATML_BODY,
    "mistral_direct": "<|im_start|>system\nAnswer the questions.<|im_end|>" + CHATML_BODY,
    # plain: human text with no separator, then reply + "\n" (what preprocess_plain trained on).
    "plain": "<image>\nWhat is in the picture?A red circle.\nWhat colour is it?It is red.\n",
    "v0_plain": "<image>\nWhat is in the picture?A red circle.\nWhat colour is it?It is red.\n",
    "qwen_2": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is in the picture?<|im_end|>\n"
        "<|im_start|>assistant\nA red circle.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is it?<|im_end|>\n"
        "<|im_start|>assistant\nIt is red.<|im_end|>\n"
    ),
    "llama_3": (
        "<|start_header_id|>system<|end_header_id|>\n\n" + LLAVA_SYS + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is in the picture?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red circle.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat colour is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nIt is red.<|eot_id|>"
    ),
}

# Text the model must produce for each assistant turn: from the end of the generation prompt to
# the end of the turn's end-of-turn marker.
TARGETS = {
    "TWO": [" A red circle.</s>", " It is red.</s>"],
    "SINGLE": [" A red circle.###", " It is red.###"],
    "LLAMA_2": [" A red circle. </s>", " It is red. </s>"],
    "MPT": ["A red circle.<|im_end|>", "It is red.<|im_end|>"],
    "CHATML": ["A red circle.<|im_end|>", "It is red.<|im_end|>"],
    "PLAIN": ["A red circle.\n", "It is red.\n"],
    "LLAMA_3": ["A red circle.<|eot_id|>", "It is red.<|eot_id|>"],
}


def _two_rounds(name, last=A2):
    conv = get_conv_template(name)
    conv.messages = []  # v0/default carry an example exchange; start empty
    for role, msg in zip(conv.roles * 2, (Q1, A1, Q2, last)):
        conv.append_message(role, msg)
    return conv


def test_every_template_has_a_golden_string():
    from tests.test_next_templates import NEXT_GOLDEN  # LLaVA-NeXT's names, golden strings there

    assert set(GOLDEN) | set(NEXT_GOLDEN) | {"chat_template"} == set(conv_templates)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_prompt(name):
    assert _two_rounds(name).get_prompt() == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_target_spans_follow_the_generation_prompt(name):
    conv = _two_rounds(name)
    prompt, spans = conv.get_prompt_with_target_spans()
    assert [prompt[a:b] for a, b in spans] == TARGETS[conv.sep_style.name]
    # Each target starts exactly where the inference prompt for that turn ends.
    gen = _two_rounds(name, last=None).get_prompt()
    assert prompt.startswith(gen) and spans[1][0] == len(gen)
    first = get_conv_template(name)
    first.messages = []
    first.append_message(first.roles[0], Q1)
    first.append_message(first.roles[1], None)
    assert spans[0][0] == len(first.get_prompt())


def test_generation_prompts_end_like_the_original():
    ends = {
        "v1": "What colour is it? ASSISTANT:",
        "llava_v0": "What colour is it?###Assistant:",
        "llama_2": "[INST] What colour is it? [/INST]",
        "mistral_instruct": "</s>[INST] What colour is it? [/INST]",
        "mpt": "<|im_start|>user\nWhat colour is it?<|im_end|><|im_start|>assistant\n",
        "qwen_2": "<|im_start|>user\nWhat colour is it?<|im_end|>\n<|im_start|>assistant\n",
        "llama_3": "What colour is it?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    }
    for name, end in ends.items():
        assert _two_rounds(name, last=None).get_prompt().endswith(end), name


def test_serving_tuple_message_moves_image_to_front_and_mmtag_inserts_a_turn():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    conv = get_conv_template("llava_v1")
    conv.append_message(conv.roles[0], ("What is this?\n<image>", img, "Pad"))
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == HUMAN_SYS + " USER: <image>\nWhat is this? ASSISTANT:"

    conv = get_conv_template("v1_mmtag")
    conv.append_message(conv.roles[0], ("<image>\nWhat is this?", img, "Default"))
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == (
        MMTAG_SYS + " USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is this? ASSISTANT:"
    )
    assert conv.dict()["messages"][0] == ["USER", "<image>\nWhat is this?"]


def test_get_images_and_gradio_chatbot():
    from llava.serve.chat_display import get_images, to_gradio_chatbot  # moved out of Conversation

    img = Image.new("RGB", (2000, 1000), (0, 255, 0))
    conv = get_conv_template("v1")
    conv.append_message(conv.roles[0], ("<image>\nHi", img, "Pad"))
    conv.append_message(conv.roles[1], "Hello")
    (pil,) = get_images(conv, return_pil=True)
    # padded to 2000x2000, over max_len=1344, so the short side goes to min_len=672 (as the original)
    assert pil.size == (672, 672)
    (b64,) = get_images(conv)
    assert isinstance(b64, str) and len(b64) > 100
    chat = to_gradio_chatbot(conv)
    assert chat[0][0].startswith('<img src="data:image/jpeg;base64,') and chat[0][0].endswith("Hi")
    assert chat[0][1] == "Hello"


def test_v0_default_keeps_its_example_exchange():
    conv = get_conv_template("v0")
    assert conv.offset == 2 and len(conv.messages) == 2
    assert conv.get_prompt().startswith(
        HUMAN_SYS + "###Human: What are the key differences between renewable"
    )


def test_copy_is_independent_and_registry_untouched():
    conv = get_conv_template("v1")
    conv.append_message("USER", "hi")
    assert conv_templates["v1"].messages == [] and conv.messages == [["USER", "hi"]]
    assert conv.copy().messages == conv.messages and conv.copy().messages is not conv.messages
    assert conversation_lib.default_conversation is conv_templates["v1"]


def test_unknown_template_lists_valid_names():
    with pytest.raises(ValueError, match="unknown conversation template 'vicuna_v2'.*llava_v1.*vicuna_v1"):
        get_conv_template("vicuna_v2")


def test_llama_2_must_start_with_user():
    conv = get_conv_template("llama_2")
    conv.append_message("ASSISTANT", "hi")
    with pytest.raises(ValueError, match="start with a non-empty user message"):
        conv.get_prompt()


# Chat templates written in the form Qwen2-Instruct and LLaMA-3-Instruct ship them.
CHAT_TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"
QWEN2_JINJA = (CHAT_TEMPLATES / "qwen2.jinja").read_text()
LLAMA3_JINJA = (CHAT_TEMPLATES / "llama3.jinja").read_text()


@pytest.mark.parametrize(("jinja", "name"), [(QWEN2_JINJA, "qwen_2"), (LLAMA3_JINJA, "llama_3")])
def test_chat_template_mode_matches_the_named_template(llama2_tokenizer, jinja, name):
    import copy

    tok = copy.deepcopy(llama2_tokenizer)
    tok.chat_template = jinja
    named = _two_rounds(name)
    conv = get_conv_template("chat_template", tokenizer=tok)
    conv.system = named.system
    for role, msg in named.messages:
        conv.append_message(role, msg)
    # The tokenizer adds BOS itself, so a leading "<s>" from the template is dropped.
    assert conv.get_prompt_with_target_spans() == named.get_prompt_with_target_spans()
    conv.messages[-1][1], named.messages[-1][1] = None, None
    assert conv.get_prompt() == named.get_prompt()
    assert conv.sep == conv.sep2 == tok.eos_token  # stop string for serving


def test_chat_template_mode_needs_a_tokenizer():
    conv = get_conv_template("chat_template")
    conv.append_message("user", "hi")
    with pytest.raises(ValueError, match="tokenizer's own chat template"):
        conv.get_prompt()


def test_styles_are_the_original_enum_plus_new_ones():
    assert {"SINGLE", "TWO", "MPT", "PLAIN", "LLAMA_2"} <= {s.name for s in SeparatorStyle}


@pytest.mark.parametrize("name", ["v1", "llava_v0", "mpt", "chatml_direct", "qwen_2", "llama_3", "llama_2"])
def test_stop_string_ends_every_reply(name):
    # Serving stops on `sep` for SINGLE/MPT styles and `sep2` otherwise; the new styles set both.
    conv = _two_rounds(name)
    prompt, spans = conv.get_prompt_with_target_spans()
    single = conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT)
    stop = conv.sep if single else conv.sep2
    assert all(prompt[a:b].endswith(stop) for a, b in spans)
    if conv.sep_style in (SeparatorStyle.CHATML, SeparatorStyle.LLAMA_3):
        assert conv.sep == conv.sep2 == stop
