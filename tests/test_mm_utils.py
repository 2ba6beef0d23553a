"""mm_utils: image token splicing, image preprocessing modes, anyres helpers, stopping criteria."""

import base64
from io import BytesIO
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import StoppingCriteriaList

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    expand2square,
    get_anyres_image_grid_shape,
    get_model_name_from_path,
    load_image_from_base64,
    process_anyres_image,
    process_images,
    select_best_resolution,
    tokenizer_image_token,
    tokenizer_image_token_with_offsets,
)


def _reference_split_tokenize(prompt, tok, image_index=IMAGE_TOKEN_INDEX):
    """The original algorithm restated: tokenise each chunk, keep one BOS, splice image ids."""
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    has_bos = bool(chunks[0]) and chunks[0][0] == tok.bos_token_id
    out = [chunks[0][0]] if has_bos else []
    for i, ids in enumerate(chunks):
        if i:
            out.append(image_index)
        out.extend(ids[1:] if has_bos else ids)
    return out


def test_hand_checked_ids(llama2_tokenizer):
    # "Hello world" -> [1, 15043, 3186]; a chunk after <image> starts a new word ("▁Hello").
    assert tokenizer_image_token("Hello world<image>Hello world", llama2_tokenizer) == [
        1,
        15043,
        3186,
        IMAGE_TOKEN_INDEX,
        15043,
        3186,
    ]
    assert tokenizer_image_token("<image>", llama2_tokenizer) == [1, IMAGE_TOKEN_INDEX]
    t = tokenizer_image_token("Hello world", llama2_tokenizer, return_tensors="pt")
    assert t.dtype == torch.long and t.tolist() == [1, 15043, 3186]
    with pytest.raises(ValueError, match="Unsupported tensor type"):
        tokenizer_image_token("hi", llama2_tokenizer, return_tensors="np")


@pytest.mark.parametrize(
    "prompt",
    [
        "USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: and? ASSISTANT:",
        "<image>A caption.\n",
        "two <image> images <image> here<image>",
        "no image at all",
        "",
    ],
)
def test_matches_original_algorithm_and_offsets(llama2_tokenizer, llama2_legacy_tokenizer, prompt):
    for tok in (llama2_tokenizer, llama2_legacy_tokenizer):
        ids = tokenizer_image_token(prompt, tok)
        assert ids == _reference_split_tokenize(prompt, tok)
        enc = tokenizer_image_token_with_offsets(prompt, tok)
        assert enc.ids == ids and len(enc.offsets) == len(ids) == len(enc.added)
        assert enc.added[0] and not any(enc.added[1:])  # only the BOS is tokenizer-added
        for tid, (a, b) in zip(ids, enc.offsets):
            if tid == IMAGE_TOKEN_INDEX:
                assert prompt[a:b] == "<image>"
            else:
                assert "<image>" not in prompt[a:b]


def test_custom_image_index_and_no_bos_tokenizer(llama2_tokenizer):
    import copy

    tok = copy.deepcopy(llama2_tokenizer)
    tok.add_bos_token = False
    assert tok("Hello world").input_ids == [15043, 3186]
    assert tokenizer_image_token("Hello world<image>Hello world", tok, image_token_index=-7) == [
        15043,
        3186,
        -7,
        15043,
        3186,
    ]


def test_expand2square():
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    sq = expand2square(img, (1, 2, 3))
    assert sq.size == (4, 4)
    assert sq.getpixel((0, 0)) == (1, 2, 3) and sq.getpixel((0, 1)) == (255, 0, 0)
    assert sq.getpixel((3, 2)) == (255, 0, 0) and sq.getpixel((3, 3)) == (1, 2, 3)
    tall = expand2square(Image.new("RGB", (1, 3), (0, 0, 0)), (9, 9, 9))
    assert tall.size == (3, 3) and tall.getpixel((1, 0)) == (0, 0, 0) and tall.getpixel((0, 0)) == (9, 9, 9)
    assert expand2square(img.resize((2, 2)), (0, 0, 0)).size == (2, 2)


def test_anyres_resolution_choice():
    pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    # 1000x500: 672x336, 672x672 and 1008x336 keep the same detail; 672x336 wastes nothing.
    assert select_best_resolution((1000, 500), pins) == (672, 336)
    assert get_anyres_image_grid_shape((1000, 500), pins, 336) == (2, 1)
    assert get_anyres_image_grid_shape((300, 900), str(pins), 336) == (1, 3)
    assert select_best_resolution((2000, 2000), pins) == (672, 672)


@pytest.fixture(scope="module")
def clip_processor(tmp_path_factory):
    from transformers import AutoImageProcessor

    from llava.testing.tiny import make_tiny_clip

    return AutoImageProcessor.from_pretrained(make_tiny_clip(tmp_path_factory.mktemp("clip")))


def test_process_images_modes(clip_processor):
    imgs = [Image.new("RGB", (64, 32), (255, 0, 0)), Image.new("RGB", (20, 40), (0, 0, 255))]
    square = process_images(imgs, clip_processor, SimpleNamespace(image_aspect_ratio="square"))
    assert square.shape == (2, 3, 32, 32)
    assert torch.equal(process_images(imgs, clip_processor, SimpleNamespace()), square)
    pad = process_images(imgs, clip_processor, SimpleNamespace(image_aspect_ratio="pad"))
    assert pad.shape == (2, 3, 32, 32)
    # The wide red image padded with the CLIP mean: the top row is mean colour, i.e. ~0 after normalising.
    assert pad[0, :, 0, :].abs().max() < 0.02 and pad[0, 0, 16, 16] > 1.0
    assert not torch.allclose(pad, square)
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]])
    anyres = process_images(imgs, clip_processor, cfg)  # 64x32 -> 2 tiles, 20x40 -> 2 tiles (+ overview)
    assert anyres.shape == (2, 3, 3, 32, 32)
    mixed = process_images([imgs[0], Image.new("RGB", (40, 40))], clip_processor, cfg)
    assert isinstance(mixed, list) and mixed[0].shape == (3, 3, 32, 32) and mixed[1].shape == (5, 3, 32, 32)
    assert process_anyres_image(imgs[0], clip_processor, cfg.image_grid_pinpoints).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown image_aspect_ratio 'crop'"):
        process_images(imgs, clip_processor, SimpleNamespace(image_aspect_ratio="crop"))


def test_load_image_from_base64():
    buf = BytesIO()
    Image.new("RGB", (3, 5), (1, 2, 3)).save(buf, format="PNG")
    img = load_image_from_base64(base64.b64encode(buf.getvalue()).decode())
    assert img.size == (3, 5) and img.getpixel((0, 0)) == (1, 2, 3)


def test_get_model_name_from_path():
    assert get_model_name_from_path("/ckpts/llava-v1.5-7b/") == "llava-v1.5-7b"
    assert get_model_name_from_path("liuhaotian/llava-v1.5-13b") == "llava-v1.5-13b"
    assert get_model_name_from_path("/runs/llava-lora/checkpoint-500") == "llava-lora_checkpoint-500"


def test_keywords_stopping_is_per_row(llama2_tokenizer):
    tok = llama2_tokenizer
    prompt = tok("USER: hi ASSISTANT:###").input_ids

    def row(text):
        return prompt + tok(text, add_special_tokens=False).input_ids

    crit = KeywordsStoppingCriteria(["</s>", "###"], tok, torch.tensor([prompt]))
    # Only generated tokens are searched: the prompt's own trailing "###" does not stop.
    assert crit(torch.tensor([row("Sure")]), None).tolist() == [False]
    done, going = row("Sure###"), row("Surely not")
    assert len(done) == len(going)
    batch = torch.tensor([done, going])
    assert crit(batch, None).tolist() == [True, False]
    assert StoppingCriteriaList([crit])(batch, None).tolist() == [True, False]
    assert crit(torch.tensor([prompt + [2], prompt + [15043]]), None).tolist() == [True, False]
    # Generating from embeddings: the sequences hold only the new tokens (input_ids=None).
    crit_new = KeywordsStoppingCriteria(["###"], tok, None)
    assert crit_new(torch.tensor([tok("ok###", add_special_tokens=False).input_ids]), None).tolist() == [True]
