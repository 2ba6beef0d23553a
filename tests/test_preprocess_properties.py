"""Label properties for every template family on several tokenizers.

For each assistant turn k, the inference prompt P_k (the conversation up to that turn, rendered for
generation) and the turn's text T_k (reply + end-of-turn marker) give an independent definition of
the targets: tokenizer_image_token(P_k) and tokenizer_image_token(P_k + T_k) are prefixes of the
sample's ids, the labels between the two lengths equal the ids, every other label is
IGNORE_INDEX, and decoding the targets of turn k gives back T_k.
"""

import copy
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llava.constants import IGNORE_INDEX
from llava.conversation import get_conv_template
from llava.data.preprocess import tokenize_sample
from llava.mm_utils import tokenizer_image_token

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokenizers"
QWEN2_JINJA = (FIXTURES.parent / "chat_templates" / "qwen2.jinja").read_text()
LLAMA3_JINJA = (FIXTURES.parent / "chat_templates" / "llama3.jinja").read_text()


def _pair(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


LONG = " ".join(f"Item {i}: the shape number {i} is drawn in colour {i % 7}." for i in range(60))
CONVERSATIONS = {
    "image_two_rounds": _pair("<image>\nWhat is in the picture?", "A red circle.")
    + _pair("What colour is it?", "It is red."),
    "multi_turn": _pair("<image>\nHow many shapes?", "Three.")
    + _pair("Which is largest?", "The blue square, at the top left.")
    + _pair("And the smallest?", "The green triangle.")
    + _pair("Anything else?", "No, that is all.\nThanks for asking!"),
    "unicode": _pair("<image>\nDécris l'image, s'il te plaît.", "Un café ☕ et 你好 — naïve Ünïcödé 🙂🙂!")
    + _pair("Emoji only?", "🎉🎉 ok"),
    "long_reply": _pair("<image>\nList everything.", LONG),
    "text_only": _pair("Say hi.", "Hi!") + _pair("Again?", "Hi again.") + _pair("Once more.", "Hi, hi."),
}
CAPTIONS = {
    "caption": _pair("<image>\nDescribe briefly.", "A yellow star in the top right corner."),
    "caption_unicode": _pair("<image>", "Ein Würfel 🎲 und 你好."),
    "caption_long": _pair("<image>", LONG),
}


def _byte_level_chatml_tokenizer():
    """A small Qwen2-like tokenizer: byte-level BPE, no BOS, ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    corpus = [str(c) for c in list(CONVERSATIONS.values()) + list(CAPTIONS.values())] * 3
    tk.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=700,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=32768
    )
    tok.add_special_tokens({"additional_special_tokens": special[1:]})
    tok.chat_template = QWEN2_JINJA
    return tok


def _with_special(path, tokens, jinja=None):
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": tokens})
    tok.chat_template = jinja
    return tok


@pytest.fixture(scope="module")
def tokenizers():
    chatml, llama3 = (
        ["<|im_start|>", "<|im_end|>"],
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    )
    return {
        "llama2": AutoTokenizer.from_pretrained(FIXTURES / "llama2"),
        "llama2-legacy": AutoTokenizer.from_pretrained(FIXTURES / "llama2-legacy"),
        "mistral": AutoTokenizer.from_pretrained(FIXTURES / "mistral"),
        "llama2+chatml": _with_special(FIXTURES / "llama2", chatml),
        "llama2-legacy+chatml": _with_special(FIXTURES / "llama2-legacy", chatml),
        "llama2+llama3": _with_special(FIXTURES / "llama2", llama3, LLAMA3_JINJA),
        "byte-level-chatml": _byte_level_chatml_tokenizer(),
    }


CASES = [
    ("v1", ["llama2", "llama2-legacy"]),
    ("llava_v1", ["llama2", "llama2-legacy"]),
    ("llama_2", ["llama2", "llama2-legacy"]),
    ("llava_llama_2", ["llama2-legacy"]),
    ("mistral_instruct", ["mistral", "llama2", "llama2-legacy"]),
    ("llava_v0", ["llama2", "llama2-legacy"]),
    ("mpt", ["llama2+chatml", "llama2-legacy+chatml", "byte-level-chatml"]),
    ("chatml_direct", ["llama2+chatml", "byte-level-chatml"]),
    ("qwen_2", ["byte-level-chatml", "llama2+chatml"]),
    ("llama_3", ["llama2+llama3"]),
    ("chat_template", ["byte-level-chatml", "llama2+llama3"]),
]
PARAMS = [(t, k) for t, toks in CASES for k in toks]


def _turn_texts(source, conv_name, tok):
    """Inference prompts P_k and assistant texts T_k for each assistant turn, and the full prompt."""
    texts = [m["value"] for m in source]
    if conv_name == "plain":
        texts[0] = "<image>"  # the plain template trains on the bare image marker (as the original)
    conv = get_conv_template(conv_name, tokenizer=tok)
    for j, t in enumerate(texts):
        conv.append_message(conv.roles[j % 2], t)
    prompt, spans = conv.get_prompt_with_target_spans()
    prompts = []
    for k in range(1, len(texts), 2):
        gen = get_conv_template(conv_name, tokenizer=tok)
        for j, t in enumerate(texts[:k] + [None]):
            gen.append_message(gen.roles[j % 2], t)
        prompts.append(gen.get_prompt())
    return prompt, prompts, [prompt[a:b] for a, b in spans]


def _check_labels(source, tok, conv_name, num_images):
    ids, labels = tokenize_sample(source, tok, conv_name, num_images=num_images, sample_id="t")
    prompt, prompts, targets = _turn_texts(source, conv_name, tok)
    assert ids == tokenizer_image_token(prompt, tok)  # exactly what inference tokenises
    expected = [IGNORE_INDEX] * len(ids)
    for p_k, t_k in zip(prompts, targets):
        assert prompt.startswith(p_k + t_k)
        a_ids, b_ids = tokenizer_image_token(p_k, tok), tokenizer_image_token(p_k + t_k, tok)
        assert ids[: len(a_ids)] == a_ids and ids[: len(b_ids)] == b_ids
        a, b = len(a_ids), len(b_ids)
        assert b > a
        expected[a:b] = ids[a:b]
        # The targets decode to the reply plus its end-of-turn text.
        assert tok.decode(ids[a:b]).strip(" ") == t_k.strip(" ")
        reply = t_k.strip(" ")
        assert reply.endswith(("</s>", "<|im_end|>", "<|eot_id|>", "###", "\n"))
    assert labels == expected
    return ids, labels


@pytest.mark.parametrize(("conv_name", "tok_name"), PARAMS)
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_targets_are_exactly_the_assistant_turns(tokenizers, conv_name, tok_name, conversation):
    source = CONVERSATIONS[conversation]
    n_img = sum(m["value"].count("<image>") for m in source)
    _check_labels(source, tokenizers[tok_name], conv_name, n_img)


@pytest.mark.parametrize("tok_name", ["llama2", "llama2-legacy", "byte-level-chatml"])
@pytest.mark.parametrize("caption", sorted(CAPTIONS))
def test_plain_targets_are_the_caption_and_newline(tokenizers, tok_name, caption):
    ids, labels = _check_labels(CAPTIONS[caption], tokenizers[tok_name], "plain", 1)
    tok = tokenizers[tok_name]
    target = [x for x in labels if x != IGNORE_INDEX]
    assert tok.decode(target) == CAPTIONS[caption][1]["value"] + "\n"
    assert labels[: ids.index(-200) + 1] == [IGNORE_INDEX] * (ids.index(-200) + 1)


@pytest.mark.parametrize(
    ("conv_name", "tok_name"),
    [("v1", "llama2"), ("llama_2", "llama2-legacy"), ("qwen_2", "byte-level-chatml")],
)
def test_truncation_at_the_limit(tokenizers, monkeypatch, conv_name, tok_name):
    tok = tokenizers[tok_name]
    source = CONVERSATIONS["multi_turn"]
    full_ids, full_labels = tokenize_sample(source, tok, conv_name, num_images=1)
    first_target = next(i for i, x in enumerate(full_labels) if x != IGNORE_INDEX)
    for limit in (len(full_ids), len(full_ids) - 1, len(full_ids) - 5, first_target + 1, first_target + 3):
        monkeypatch.setattr(tok, "model_max_length", limit)
        ids, labels = tokenize_sample(source, tok, conv_name, num_images=1)
        assert ids == full_ids[:limit] and labels == full_labels[:limit]


def test_chat_template_mode_equals_named_template(tokenizers):
    tok = tokenizers["byte-level-chatml"]
    for source in CONVERSATIONS.values():
        n = sum(m["value"].count("<image>") for m in source)
        assert tokenize_sample(source, tok, "chat_template", n) == tokenize_sample(source, tok, "qwen_2", n)


def test_llama3_bos_comes_once(tokenizers):
    tok = copy.deepcopy(tokenizers["llama2+llama3"])
    ids, _ = tokenize_sample(CONVERSATIONS["text_only"], tok, "chat_template")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
