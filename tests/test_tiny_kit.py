"""The tiny-model kit writes real HF folders that load back through from_pretrained and run."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from llava import constants
from llava.testing.tiny import build_small_tokenizer, find_llama2_tokenizer, make_tiny_kit, make_tiny_llm


def test_constants_match_original():
    assert constants.IGNORE_INDEX == -100
    assert constants.IMAGE_TOKEN_INDEX == -200
    assert constants.DEFAULT_IMAGE_TOKEN == "<image>"
    assert (constants.DEFAULT_IM_START_TOKEN, constants.DEFAULT_IM_END_TOKEN) == ("<im_start>", "<im_end>")
    assert constants.DEFAULT_IMAGE_PATCH_TOKEN == "<im_patch>"
    assert constants.WORKER_HEART_BEAT_INTERVAL < constants.CONTROLLER_HEART_BEAT_EXPIRATION


def test_fixture_tokenizer_is_real_llama2(llama2_tokenizer, llama2_legacy_tokenizer):
    assert find_llama2_tokenizer() is not None
    assert llama2_tokenizer("Hello world").input_ids == [1, 15043, 3186]
    text = "ASSISTANT: A cat.</s>USER: hi"
    assert llama2_tokenizer(text).input_ids == [
        1,
        319,
        1799,
        9047,
        13566,
        29901,
        319,
        6635,
        29889,
        2,
        11889,
        29901,
        7251,
    ]
    assert llama2_legacy_tokenizer(text).input_ids[-5:] == [2, 3148, 1001, 29901, 7251]


def test_tiny_llava_parts_load_and_run(tiny_kit):
    tok = AutoTokenizer.from_pretrained(tiny_kit.llm)
    lm = AutoModelForCausalLM.from_pretrained(tiny_kit.llm)
    ids = tok("A picture of a pier", return_tensors="pt").input_ids
    out = lm(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(out.loss)

    tower = CLIPVisionModel.from_pretrained(tiny_kit.vision)
    proc = CLIPImageProcessor.from_pretrained(tiny_kit.vision)
    pix = proc(images=Image.new("RGB", (50, 40), (200, 10, 10)), return_tensors="pt")["pixel_values"]
    cfg = json.loads((tiny_kit.vision / "config.json").read_text())
    assert pix.shape == (1, 3, cfg["image_size"], cfg["image_size"])
    hidden = tower(pix, output_hidden_states=True).hidden_states
    n_patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
    assert hidden[-2].shape == (1, n_patches + 1, cfg["hidden_size"])


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_other_architectures(tmp_path, arch, tiny_kit):
    path = make_tiny_llm(tmp_path / arch, arch=arch, tokenizer_dir=tiny_kit.tokenizer)
    lm = AutoModelForCausalLM.from_pretrained(path)
    assert lm.config.model_type == arch
    assert lm(input_ids=torch.tensor([[1, 15043, 3186]])).logits.shape[-1] == 32000


def test_small_tokenizer_fallback(tmp_path):
    tok = AutoTokenizer.from_pretrained(build_small_tokenizer(tmp_path / "tok"))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("USER: what colour? ASSISTANT: red.</s>").input_ids
    assert ids[0] == 1 and ids[-1] == 2
    # byte fallback: characters never seen in training still round-trip
    assert tok.decode(tok("naïve 猫").input_ids, skip_special_tokens=True) == "naïve 猫"


def test_kit_reuses_existing_folders(tmp_path):
    kit = make_tiny_kit(tmp_path, prefer_real_tokenizer=False)
    stamp = (kit.llm / "config.json").stat().st_mtime_ns
    assert make_tiny_kit(tmp_path, prefer_real_tokenizer=False) == kit
    assert (kit.llm / "config.json").stat().st_mtime_ns == stamp
