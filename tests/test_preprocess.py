"""preprocess: hand-written input_ids/labels for v1 and plain, errors, truncation, batching.

The expected ids below were worked out piece by piece from the template text and the LLaMA-2
vocabulary (the piece of each id is written beside it).
"""

import copy
from types import SimpleNamespace

import pytest

from llava import conversation as conversation_lib
from llava.constants import IGNORE_INDEX as X
from llava.constants import IMAGE_TOKEN_INDEX as IMG
from llava.data.preprocess import SampleError, preprocess, preprocess_multimodal, tokenize_sample

# "A chat between a curious user and an artificial intelligence assistant. The assistant gives
#  helpful, detailed, and polite answers to the user's questions." -- the v1 system prompt
V1_SYSTEM = [
    319, 13563, 1546, 263, 12758,  # ▁A ▁chat ▁between ▁a ▁curious
    1404, 322, 385, 23116, 21082, 20255, 29889,  # ▁user ▁and ▁an ▁artificial ▁intelligence ▁assistant .
    450, 20255, 4076, 8444, 29892,  # ▁The ▁assistant ▁gives ▁helpful ,
    13173, 29892, 322, 1248, 568,  # ▁detailed , ▁and ▁pol ite
    6089, 304, 278, 1404, 29915, 29879, 5155, 29889,  # ▁answers ▁to ▁the ▁user ' s ▁questions .
]  # fmt: skip
USER_IMAGE = [3148, 1001, 29901, 29871, IMG]  # " USER: " -> ▁US ER : ▁, then <image>
# "\nWhat is this?" is its own chunk after <image>, so it starts a word: ▁ <0x0A> What ▁is ▁this ?
Q1 = [29871, 13, 5618, 338, 445, 29973]
ASSISTANT = [319, 1799, 9047, 13566, 29901]  # " ASSISTANT:" -> ▁A SS IST ANT :
A1 = [319, 2654, 8607, 29889, 2]  # " A red circle.</s>" -> ▁A ▁red ▁circle . </s>
Q2 = [29901, 1126, 278, 12384, 29973]  # ": And the colour?" -> : ▁And ▁the ▁colour ?
A2 = [4367, 29889, 2]  # " Red.</s>" -> ▁Red . </s>
# Right after "</s>" the two tokenizers differ: non-legacy reads "USER" as one piece (11889);
# legacy inserts a word start and reads ▁US ER (3148, 1001).
USER_AFTER_EOS = {"llama2": [11889], "llama2-legacy": [3148, 1001]}

SOURCE = [
    {"from": "human", "value": "<image>\nWhat is this?"},
    {"from": "gpt", "value": "A red circle."},
    {"from": "human", "value": "And the colour?"},
    {"from": "gpt", "value": "Red."},
]


def _masked(ids):
    return [X] * len(ids)


@pytest.fixture(params=["llama2", "llama2-legacy"])
def tok(request, llama2_tokenizer, llama2_legacy_tokenizer):
    return {"llama2": llama2_tokenizer, "llama2-legacy": llama2_legacy_tokenizer}[request.param]


def _name(tok):
    return "llama2-legacy" if tok.legacy else "llama2"


def test_v1_exact_ids_and_labels(tok):
    user2 = USER_AFTER_EOS[_name(tok)]
    prompt_ids = [1] + V1_SYSTEM + USER_IMAGE + Q1 + ASSISTANT
    expected_ids = prompt_ids + A1 + user2 + Q2 + ASSISTANT + A2
    expected_labels = _masked(prompt_ids) + A1 + _masked(user2 + Q2 + ASSISTANT) + A2
    # What the original LLaVA-1.5 preprocess_v1 did with this sample:
    # - legacy tokenizer: the same labels (its per-round counts agree with the whole-string ids);
    # - non-legacy tokenizer: it re-tokenised round 2 ("USER: And the colour? ASSISTANT: Red.") on
    #   its own, where "USER" becomes two pieces (▁US ER) instead of the one piece (USER) it is after
    #   "</s>". So its instruction mask ran one token too far (it also masked ▁Red) and its running
    #   length ended at 67 against 66 real tokens: "WARNING: tokenization mismatch: 67 vs. 66" and the
    #   whole sample was masked (#1166, #1706). A later patch subtracted 1 per round when
    #   `not tokenizer.legacy`. The labels here are the correct ones for both tokenizers.
    out = preprocess([copy.deepcopy(SOURCE)], tok, has_image=True)
    assert out["input_ids"].tolist() == [expected_ids]
    assert out["labels"].tolist() == [expected_labels]
    assert len(expected_ids) == (66 if _name(tok) == "llama2" else 67)


def test_plain_exact_ids_and_labels(tok):
    source = [
        {"from": "human", "value": "<image>\nDescribe the image briefly."},
        {"from": "gpt", "value": "A red circle."},
    ]
    # Rendered "<image>" + "A red circle." + "\n" (the human text is dropped, as the original did):
    # <s> <image> ▁A ▁red ▁circle . <0x0A>; the original masked len(tokenizer_image_token("<image>")) = 2.
    out = preprocess([source], tok, has_image=True, conv="plain")
    assert out["input_ids"].tolist() == [[1, IMG, 319, 2654, 8607, 29889, 13]]
    assert out["labels"].tolist() == [[X, X, 319, 2654, 8607, 29889, 13]]


def test_text_only_v1_has_no_image_token(tok):
    source = [{"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "Red."}]
    out = preprocess([source], tok, has_image=False, conv="v1")
    # " USER: And the colour?" -> ▁US ER : ▁And ▁the ▁colour ?
    prompt = [1] + V1_SYSTEM + [3148, 1001] + Q2 + ASSISTANT
    assert out["input_ids"].tolist() == [prompt + A2]
    assert out["labels"].tolist() == [_masked(prompt) + A2]


def test_default_template_follows_default_conversation(llama2_tokenizer, monkeypatch):
    base = preprocess([copy.deepcopy(SOURCE)], llama2_tokenizer, has_image=True)
    assert (
        base["input_ids"].tolist()
        == preprocess([copy.deepcopy(SOURCE)], llama2_tokenizer, True, "v1")["input_ids"].tolist()
    )
    # The original train() selected the template by reassigning default_conversation.
    monkeypatch.setattr(conversation_lib, "default_conversation", conversation_lib.conv_templates["llama_2"])
    other = preprocess([copy.deepcopy(SOURCE)], llama2_tokenizer, has_image=True)
    assert (
        other["input_ids"].tolist()
        == preprocess([copy.deepcopy(SOURCE)], llama2_tokenizer, True, "llama_2")["input_ids"].tolist()
    )


@pytest.mark.parametrize(
    ("source", "has_image", "conv", "message"),
    [
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], False, "v1", "do not alternate"),
        (
            [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "gpt", "value": "c"}],
            False,
            "v1",
            "do not alternate",
        ),
        (
            [{"from": "human", "value": "a"}, {"from": "gpt", "value": "  "}],
            False,
            "v1",
            "turn 1 .* is empty",
        ),
        ([{"from": "human", "value": ""}, {"from": "gpt", "value": "b"}], False, "v1", "turn 0 .* is empty"),
        (
            [{"from": "human", "value": "<image>\na"}, {"from": "gpt", "value": "b"}],
            False,
            "v1",
            "text-only sample",
        ),
        (
            [{"from": "human", "value": "<image>\n<image>\na"}, {"from": "gpt", "value": "b"}],
            True,
            "v1",
            "2 <image> markers but only 1",
        ),
        (
            [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
            True,
            "v1",
            "1 image.* but 0 <image>",
        ),
        (
            [{"from": "human", "value": "<image>\na"}, {"from": "gpt", "value": "b <image>"}],
            True,
            "v1",
            "assistant turn 1 contains",
        ),
        ([{"from": "human", "value": "a"}], False, "v1", "no assistant reply"),
        ([{"from": "bot", "value": "a"}, {"from": "gpt", "value": "b"}], False, "v1", "role 'bot'"),
        ([], False, "v1", "empty"),
        (
            [{"from": "human", "value": "<image>\na"}, {"from": "gpt", "value": "b"}]
            + [{"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}],
            True,
            "plain",
            "plain template",
        ),
    ],
)
def test_bad_samples_raise_with_their_id(llama2_tokenizer, source, has_image, conv, message):
    with pytest.raises(SampleError, match=message) as err:
        preprocess([source], llama2_tokenizer, has_image=has_image, conv=conv, sample_ids=["sample-42"])
    assert err.value.sample_id == "sample-42" and "sample-42" in str(err.value)


def test_error_default_id_is_position(llama2_tokenizer):
    good = [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]
    with pytest.raises(SampleError) as err:
        preprocess([good, good[:1]], llama2_tokenizer)
    assert err.value.sample_id == "#1"


def test_leading_gpt_turn_is_skipped_and_system_turn_overrides(llama2_tokenizer):
    src = [
        {"from": "gpt", "value": "ignored"},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Yo."},
    ]
    ids, _ = tokenize_sample(src, llama2_tokenizer, "v1")
    assert ids == tokenize_sample(src[1:], llama2_tokenizer, "v1")[0]
    sys_src = [{"from": "system", "value": "Be brief."}] + src[1:]
    ids, labels = tokenize_sample(sys_src, llama2_tokenizer, "v1")
    assert llama2_tokenizer.decode(ids[1:]).startswith("Be brief. USER: Hi ASSISTANT: Yo.")


@pytest.fixture
def short_tokenizer(llama2_tokenizer):
    tok = copy.deepcopy(llama2_tokenizer)
    tok.model_max_length = 60
    return tok


def test_truncation_keeps_ids_and_labels_aligned(llama2_tokenizer, short_tokenizer):
    full_ids, full_labels = tokenize_sample(SOURCE, llama2_tokenizer, "v1", num_images=1)
    ids, labels = tokenize_sample(SOURCE, short_tokenizer, "v1", num_images=1)
    assert len(ids) == len(labels) == 60
    assert ids == full_ids[:60] and labels == full_labels[:60]


def test_truncation_that_leaves_no_target_is_an_error(short_tokenizer):
    long_question = [{"from": "human", "value": "word " * 80}, {"from": "gpt", "value": "Yes."}]
    with pytest.raises(SampleError, match="no target token left after truncation at model_max_length=60"):
        preprocess([long_question], short_tokenizer, sample_ids=["long"])


def test_truncation_that_cuts_off_the_image_is_an_error(short_tokenizer):
    src = [{"from": "human", "value": "word " * 80 + "<image>"}, {"from": "gpt", "value": "Yes."}]
    with pytest.raises(SampleError, match="cut off an image"):
        preprocess([src], short_tokenizer, has_image=True)


def test_batch_of_several_samples_is_right_padded(llama2_tokenizer):
    short = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo."}]
    out = preprocess([copy.deepcopy(SOURCE), short], llama2_tokenizer, has_image=True)
    a_ids, a_lab = tokenize_sample(SOURCE, llama2_tokenizer, num_images=1)
    b_ids, b_lab = tokenize_sample(short, llama2_tokenizer, num_images=1)
    pad = len(a_ids) - len(b_ids)
    assert out["input_ids"].shape == out["labels"].shape == (2, len(a_ids))
    assert out["input_ids"].tolist() == [a_ids, b_ids + [0] * pad]  # no pad token: 0
    assert out["labels"].tolist() == [a_lab, b_lab + [X] * pad]


def test_preprocess_multimodal():
    args = SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)
    src = [[{"from": "human", "value": "What is this? <image>"}, {"from": "gpt", "value": "A cat."}]]
    assert preprocess_multimodal(copy.deepcopy(src), args)[0][0]["value"] == "<image>\nWhat is this?"
    args.mm_use_im_start_end = True
    assert (
        preprocess_multimodal(copy.deepcopy(src), args)[0][0]["value"]
        == "<im_start><image><im_end>\nWhat is this?"
    )
    args.mm_use_im_start_end = False
    assert preprocess_multimodal(copy.deepcopy(src), args, conv="v1_mmtag")[0][0]["value"] == (
        "<Image><image></Image>\nWhat is this?"
    )
    # several markers are interleaved images: they stay where they are (LLaVA-NeXT)
    two = [[{"from": "human", "value": "<image> and <image>?"}, {"from": "gpt", "value": "b"}]]
    assert preprocess_multimodal(two, args)[0][0]["value"] == "<image> and <image>?"
    off = SimpleNamespace(is_multimodal=False, mm_use_im_start_end=True)
    assert preprocess_multimodal(copy.deepcopy(src), off) == src


def test_im_start_end_tokens_stay_prompt(llama2_tokenizer):
    tok = copy.deepcopy(llama2_tokenizer)
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    src = preprocess_multimodal(
        [copy.deepcopy(SOURCE)], SimpleNamespace(is_multimodal=True, mm_use_im_start_end=True)
    )
    ids, labels = tokenize_sample(src[0], tok, "v1", num_images=1)
    start, end = tok.convert_tokens_to_ids(["<im_start>", "<im_end>"])
    i = ids.index(IMG)
    assert ids[i - 1 : i + 2] == [start, IMG, end] and labels[i - 1 : i + 2] == [X, X, X]
    assert [x for x in labels if x != X] == A1 + A2
