"""Generation: new tokens only, KV cache parity, left-padded batches, sampling, stop strings."""

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from tests.model_helpers import build_tiny_llava, images

GREEDY = dict(do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0)


@pytest.fixture(scope="module")
def model(tiny_kit):
    return build_tiny_llava(tiny_kit)


def _greedy_by_hand(model, ids, img, steps):
    """Reference: full (uncached) forward passes, argmax appended each step."""
    out = []
    cur = ids
    for _ in range(steps):
        logits = model(input_ids=cur, images=img).logits[0, -1]
        nxt = int(logits.argmax())
        out.append(nxt)
        cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
    return out


def test_generate_returns_new_tokens_and_matches_manual_greedy(model):
    ids = torch.tensor([[1, 450, IMAGE_TOKEN_INDEX, 1724, 338]])
    img = images(1)
    gen = model.generate(ids, images=img, **GREEDY)
    assert gen.shape == (1, 8)
    assert gen[0].tolist() == _greedy_by_hand(model, ids, img, 8)


def test_cached_equals_uncached(model):
    ids = torch.tensor([[1, 450, IMAGE_TOKEN_INDEX, 1724, 338, 297]])
    img = images(1, seed=3)
    cached = model.generate(ids, images=img, use_cache=True, **GREEDY)
    uncached = model.generate(ids, images=img, use_cache=False, **GREEDY)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_equals_one_by_one(model):
    prompts = [
        [1, 450, IMAGE_TOKEN_INDEX, 1724],
        [1, 450, IMAGE_TOKEN_INDEX, 1724, 338, 297, 1967, 29973, 319],
        [1, IMAGE_TOKEN_INDEX, 2],
    ]
    imgs = images(3, seed=5)
    singles = [
        model.generate(torch.tensor([p]), images=imgs[i : i + 1], **GREEDY)[0] for i, p in enumerate(prompts)
    ]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batch = model.generate(ids, attention_mask=mask, images=imgs, **GREEDY)
    for i, single in enumerate(singles):
        assert batch[i].tolist() == single.tolist(), f"prompt {i}"


def test_text_only_generate_on_llava_model(model):
    ids = torch.tensor([[1, 450, 1724, 338]])
    gen = model.generate(ids, **GREEDY)
    assert gen[0].tolist() == _greedy_by_hand(model, ids, None, 8)


def test_sampling_is_seeded_and_differs_from_greedy(model):
    ids = torch.tensor([[1, 450, IMAGE_TOKEN_INDEX, 1724]])
    img = images(1)
    kw = dict(
        do_sample=True,
        temperature=5.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=12,
        min_new_tokens=12,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    a = model.generate(ids, images=img, **kw)
    torch.manual_seed(0)
    b = model.generate(ids, images=img, **kw)
    greedy = model.generate(ids, images=img, **{**GREEDY, "max_new_tokens": 12, "min_new_tokens": 12})
    assert torch.equal(a, b) and a.shape == (1, 12)
    assert not torch.equal(a, greedy)


def test_stop_strings(model, llama2_tokenizer):
    ids = torch.tensor([[1, 450, IMAGE_TOKEN_INDEX, 1724]])
    img = images(1)
    full = model.generate(ids, images=img, do_sample=False, max_new_tokens=10, pad_token_id=0)
    text = llama2_tokenizer.decode(full[0, 3:4])
    assert text.strip(), "need a visible token to stop on"
    stopped = model.generate(
        ids,
        images=img,
        do_sample=False,
        max_new_tokens=10,
        pad_token_id=0,
        stop_strings=[text.strip()],
        tokenizer=llama2_tokenizer,
    )
    assert stopped.shape[1] <= 4
    assert stopped[0].tolist() == full[0, : stopped.shape[1]].tolist()


def test_keywords_stopping_criteria_from_mm_utils(model, llama2_tokenizer):
    from llava.mm_utils import KeywordsStoppingCriteria

    ids = torch.tensor([[1, 450, IMAGE_TOKEN_INDEX, 1724]])
    img = images(1)
    full = model.generate(ids, images=img, do_sample=False, max_new_tokens=10, pad_token_id=0)
    keyword = llama2_tokenizer.decode(full[0, 2:3]).strip()
    assert keyword
    stop = KeywordsStoppingCriteria([keyword], llama2_tokenizer, ids)
    stopped = model.generate(
        ids, images=img, do_sample=False, max_new_tokens=10, pad_token_id=0, stopping_criteria=[stop]
    )
    assert 1 <= stopped.shape[1] <= 3 and keyword in llama2_tokenizer.decode(stopped[0])
    assert stopped[0].tolist() == full[0, : stopped.shape[1]].tolist()
