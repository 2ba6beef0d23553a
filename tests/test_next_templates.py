"""LLaVA-NeXT's template names: golden prompts, stop strings, labels, and the name-based guess.

The golden strings were written by hand from LLaVA-NeXT's `llava/conversation.py` (its `get_prompt` for
each separator style) for a two-round conversation with an image. `NEXT_GOLDEN` and `NEXT_STOPS` cover
every name added for LLaVA-NeXT, so the registry-wide checks of test_conversation.py / test_stop_rule.py
can take them in.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llava.constants import IGNORE_INDEX
from llava.conversation import choose_conv_mode, conv_templates, get_conv_template, guess_conv_mode
from llava.data.preprocess import SampleError, tokenize_sample
from llava.mm_utils import tokenizer_image_token

FIXTURES = Path(__file__).resolve().parent / "fixtures"
Q1, A1, Q2, A2 = "<image>\nWhat is in the picture?", "A red circle.", "What colour is it?", "It is red."

LLAVA_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
MMTAG_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant is able to "
    "understand the visual content that the user provides, and assist the user with a variety of tasks "
    "using natural language.The visual content will be provided with the following format: "
    "<Image>visual content</Image>."
)
SIMPLE_SYS = "Answer the questions about the visual content that the user provides."
# ChatML as NeXT's CHATML style writes it: system + sep + "\n", then role + "\n" + text + sep + "\n".
QWEN_TURNS = (
    "<|im_start|>user\n<image>\nWhat is in the picture?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>\n"
    "<|im_start|>user\nWhat colour is it?<|im_end|>\n<|im_start|>assistant\nIt is red.<|im_end|>\n"
)
# MPT style: system + sep, then role + text + sep (no newlines between turns).
MPT_TURNS = (
    "<|im_start|>user\n<image>\nWhat is in the picture?<|im_end|><|im_start|>assistant\nA red circle.<|im_end|>"
    "<|im_start|>user\nWhat colour is it?<|im_end|><|im_start|>assistant\nIt is red.<|im_end|>"
)
LLAMA2_TURNS = "<image>\nWhat is in the picture? [/INST] A red circle. </s><s>[INST] What colour is it? [/INST] It is red. </s>"
MISTRAL = "[INST] <image>\nWhat is in the picture? [/INST] A red circle. </s>[INST] What colour is it? [/INST] It is red. </s>"
LLAMA3 = (
    "<|start_header_id|>system<|end_header_id|>\n\n" + LLAVA_SYS + "<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is in the picture?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA red circle.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat colour is it?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nIt is red.<|eot_id|>"
)
V0_TURNS = "###Human: <image>\nWhat is in the picture?###Assistant: A red circle.###Human: What colour is it?###Assistant: It is red.###"
V1_TURNS = " USER: <image>\nWhat is in the picture? ASSISTANT: A red circle.</s>USER: What colour is it? ASSISTANT: It is red.</s>"

NEXT_GOLDEN = {
    "qwen_1_5": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + QWEN_TURNS,
    "qwen_2": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + QWEN_TURNS,
    "qwen_2_5": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        + QWEN_TURNS
    ),
    "llava_llama_3": LLAMA3,
    "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|>" + MPT_TURNS,
    "mistral_direct": "<|im_start|>system\nAnswer the questions.<|im_end|>" + MPT_TURNS,
    "mistral_orca": (
        "<|im_start|>system\nYou are MistralOrca, a large language model trained by Alignment Lab AI. Write out "
        "your reasoning step-by-step to be sure you get the right answers!<|im_end|>" + MPT_TURNS
    ),
    "mistral_zephyr": (
        "<|system|>\nYou are a helpful AI assistant.</s><|user|>\n<image>\nWhat is in the picture?</s>"
        "<|assistant|>\nA red circle.</s><|user|>\nWhat colour is it?</s><|assistant|>\nIt is red.</s>"
    ),
    "mistral_instruct": MISTRAL,
    "llava_mistral_instruct": MISTRAL,
    "gemma_instruct": (
        "<start_of_turn>user\n<image>\nWhat is in the picture?<end_of_turn>\n<start_of_turn>model\n"
        "A red circle.<end_of_turn>\n<start_of_turn>user\nWhat colour is it?<end_of_turn>\n"
        "<start_of_turn>model\nIt is red.<end_of_turn>\n"
    ),
    "llava_llama_2_simple": "[INST] <<SYS>>\n" + SIMPLE_SYS + "\n<</SYS>>\n\n" + LLAMA2_TURNS,
    "llava_llama_2_mmtag": (
        "[INST] <<SYS>>\n" + SIMPLE_SYS + "The visual content will be provided with the following format: "
        "<Image>visual content</Image>.\n<</SYS>>\n\n" + LLAMA2_TURNS
    ),
    "llava_v0_mmtag": MMTAG_SYS + V0_TURNS,
    "llava_v1_mmtag": MMTAG_SYS + V1_TURNS,
}
NEXT_STOPS = {
    "qwen_1_5": "<|im_end|>",
    "qwen_2_5": "<|im_end|>",
    "llava_llama_3": "<|eot_id|>",
    "mistral_orca": "<|im_end|>",
    "mistral_zephyr": "</s>",
    "llava_mistral_instruct": "</s>",
    "gemma_instruct": "<end_of_turn>",
    "llava_llama_2_simple": "</s>",
    "llava_llama_2_mmtag": "</s>",
    "llava_v0_mmtag": "###",
    "llava_v1_mmtag": "</s>",
}
STOPS = {**NEXT_STOPS, "qwen_2": "<|im_end|>", "chatml_direct": "<|im_end|>", "mistral_direct": "<|im_end|>"}
STOPS["mistral_instruct"] = "</s>"
# Names LLaVA-NeXT registers (its conv_templates), all of which must exist here.
NEXT_NAMES = set(NEXT_GOLDEN) | {
    "default",
    "v0",
    "v1",
    "vicuna_v1",
    "llama_2",
    "plain",
    "v0_plain",
    "llava_v0",
}
NEXT_NAMES |= {"llava_v1", "llava_llama_2", "mpt"}


def _conversation(name, last=A2):
    conv = get_conv_template(name)
    conv.messages = []
    for role, msg in zip(conv.roles * 2, (Q1, A1, Q2, last)):
        conv.append_message(role, msg)
    return conv


def test_every_next_name_is_registered():
    assert NEXT_NAMES <= set(conv_templates)
    assert set(STOPS) == set(NEXT_GOLDEN)


@pytest.mark.parametrize("name", sorted(NEXT_GOLDEN))
def test_golden_prompt(name):
    assert _conversation(name).get_prompt() == NEXT_GOLDEN[name]


@pytest.mark.parametrize("name", sorted(NEXT_GOLDEN))
def test_stop_string_ends_every_reply_and_targets_follow_the_generation_prompt(name):
    conv = _conversation(name)
    stop = STOPS[name]
    assert conv.stop_str == stop
    prompt, spans = conv.get_prompt_with_target_spans()
    assert all(prompt[a:b].endswith(stop) for a, b in spans)
    assert [prompt[a:b].removesuffix(stop).strip(" ") for a, b in spans] == [A1, A2]
    generation = _conversation(name, last=None).get_prompt()
    assert prompt.startswith(generation) and spans[1][0] == len(generation)


def test_generation_prompts_end_with_the_assistant_header():
    ends = {
        "qwen_1_5": "<|im_end|>\n<|im_start|>assistant\n",
        "llava_llama_3": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "gemma_instruct": "<end_of_turn>\n<start_of_turn>model\n",
        "mistral_zephyr": "What colour is it?</s><|assistant|>\n",
        "chatml_direct": "<|im_end|><|im_start|>assistant\n",
    }
    for name, end in ends.items():
        assert _conversation(name, last=None).get_prompt().endswith(end), name


def test_llava_llama_3_is_llama_3_instructs_chat_template_without_a_download(llama2_tokenizer):
    """NeXT renders llava_llama_3 with Meta-Llama-3-8B-Instruct's tokenizer (fetched from the hub). The
    template written out here gives the same text, BOS aside: NeXT's prompt starts with the BOS text,
    here the tokenizer adds BOS itself (so the ids get one BOS, as NeXT's training has)."""
    tok = copy.deepcopy(llama2_tokenizer)
    tok.chat_template = (FIXTURES / "chat_templates" / "llama3.jinja").read_text()
    turns = (Q1, A1, "  What colour is it?\n")  # NeXT's get_prompt: system + the non-empty messages
    messages = [{"role": "system", "content": LLAVA_SYS}]
    messages += [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
    next_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    conv = get_conv_template("llava_llama_3")
    for i, text in enumerate(turns + (None,)):
        conv.append_message(conv.roles[i % 2], text)
    assert next_prompt == tok.bos_token + conv.get_prompt()  # messages trimmed as the template does
    ids = tokenizer_image_token(conv.get_prompt(), tok)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_gemma_has_no_system_turn():
    conv = get_conv_template("gemma_instruct")
    conv.system = "Be brief."
    conv.append_message(conv.roles[0], "Hi")
    conv.append_message(conv.roles[1], None)
    with pytest.raises(ValueError, match="no system turn"):
        conv.get_prompt()


# ------------------------------------------------------------------------------------------ labels
def _with_special(name, tokens):
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / name)
    if tokens:
        tok.add_special_tokens({"additional_special_tokens": tokens})
    return tok


CHATML, LLAMA3, GEMMA = (
    ["<|im_start|>", "<|im_end|>"],
    ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    [
        "<start_of_turn>",
        "<end_of_turn>",
    ],
)


@pytest.fixture(scope="module")
def tokenizers():
    return {
        "mistral": _with_special("mistral", None),
        "llama2": _with_special("llama2", None),
        "llama2-legacy": _with_special("llama2-legacy", None),
        "mistral+chatml": _with_special("mistral", CHATML),
        "mistral+llama3": _with_special("mistral", LLAMA3),
        "mistral+gemma": _with_special("mistral", GEMMA),
    }


LABEL_CASES = {
    "qwen_1_5": ["mistral+chatml"],
    "qwen_2_5": ["mistral+chatml"],
    "llava_llama_3": ["mistral+llama3"],
    "chatml_direct": ["mistral+chatml"],
    "mistral_orca": ["mistral+chatml"],
    "mistral_zephyr": ["mistral"],
    "mistral_instruct": ["mistral"],
    "llava_mistral_instruct": ["mistral"],
    "gemma_instruct": ["mistral+gemma"],
    "llava_llama_2_simple": ["llama2", "llama2-legacy"],
    "llava_llama_2_mmtag": ["llama2", "llama2-legacy"],
    "llava_v0_mmtag": ["llama2"],
    "llava_v1_mmtag": ["llama2-legacy"],
}
SOURCE = [
    {"from": "human", "value": Q1},
    {"from": "gpt", "value": A1},
    {"from": "human", "value": Q2},
    {"from": "gpt", "value": "It is red,\nand round."},
]


def _rendered(name, turns, generating=False):
    conv = get_conv_template(name)
    for j, text in enumerate(turns + ([None] if generating else [])):
        conv.append_message(conv.roles[j % 2], text)
    return conv.get_prompt()


@pytest.mark.parametrize(("name", "tok_name"), [(n, t) for n, toks in LABEL_CASES.items() for t in toks])
def test_labels_are_exactly_the_replies_and_their_end_of_turn(tokenizers, name, tok_name):
    tok = tokenizers[tok_name]
    texts = [turn["value"] for turn in SOURCE]
    stop = get_conv_template(name).stop_str
    ids, labels = tokenize_sample(SOURCE, tok, name, num_images=1, sample_id="s1")
    assert ids == tokenizer_image_token(_rendered(name, texts), tok)  # what inference tokenises
    expected = [IGNORE_INDEX] * len(ids)
    for k in (1, 3):  # each assistant turn: from the end of its generation prompt to its end-of-turn
        generation = _rendered(name, texts[:k], generating=True)
        after = _rendered(name, texts[: k + 1])[len(generation) :]
        target = after[: after.index(stop) + len(stop)]
        # the reply and its end-of-turn (LLaMA-2 styles put a space between them), nothing else
        assert target.strip(" ") in (texts[k] + stop, texts[k] + " " + stop)
        start = len(tokenizer_image_token(generation, tok))
        end = len(tokenizer_image_token(generation + target, tok))
        assert ids[:end] == tokenizer_image_token(generation + target, tok)
        expected[start:end] = ids[start:end]
        assert tok.decode(ids[start:end]).strip(" ") == target.strip(" ")
    assert labels == expected


def test_gemma_sample_with_a_system_turn_is_an_error_naming_it(tokenizers):
    source = [{"from": "system", "value": "Be brief."}] + SOURCE
    with pytest.raises(SampleError, match="'g7'.*no system turn"):
        tokenize_sample(source, tokenizers["mistral+gemma"], "gemma_instruct", num_images=1, sample_id="g7")


# ------------------------------------------------------------------------------------------ the guess
@pytest.mark.parametrize(
    ("model_name", "template"),
    [
        ("lmms-lab/llava-onevision-qwen2-7b-ov", "qwen_1_5"),
        ("lmms-lab/llava-onevision-qwen2-0.5b-si", "qwen_1_5"),
        ("lmms-lab/LLaVA-Video-7B-Qwen2", "qwen_1_5"),
        ("lmms-lab/llama3-llava-next-8b", "llava_llama_3"),
        ("liuhaotian/llava-v1.6-34b", "chatml_direct"),
        ("liuhaotian/llava-v1.6-mistral-7b", "mistral_instruct"),
        ("liuhaotian/llava-v1.6-vicuna-7b", "llava_v1"),
        ("llava-v1.5-7b", "llava_v1"),
        ("my-llava-zephyr-7b", "mistral_zephyr"),
    ],
)
def test_next_names_guess_their_template(model_name, template):
    assert guess_conv_mode(model_name) == template
    assert choose_conv_mode(None, {}, model_name) == template  # a checkpoint without conv_template


def test_a_saved_conv_template_beats_the_next_guess():
    cfg = {"conv_template": "llava_v1"}
    assert choose_conv_mode(None, cfg, "llava-onevision-qwen2-7b-ov", warn=pytest.fail) == "llava_v1"
