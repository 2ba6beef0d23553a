"""Registries (projector, vision tower), SigLIP, other LLMs (Mistral, Qwen2, any causal LM), anyres, tokens."""

import json
import types

import pytest
import torch
from torch import nn

from llava.model import (
    LlavaLlamaForCausalLM,
    LlavaMistralForCausalLM,
    LlavaQwen2ForCausalLM,
    llava_class_for_config,
)
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_projector.builder import build_vision_projector
from tests.model_helpers import build_tiny_llava, images, prompt_ids, vision_args


def _cfg(**kw):
    return types.SimpleNamespace(mm_hidden_size=32, hidden_size=64, **kw)


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("linear", ["Linear"]),
        ("mlp2x_gelu", ["Linear", "GELU", "Linear"]),
        ("mlp3x_gelu", ["Linear", "GELU"] * 2 + ["Linear"]),
    ],
)
def test_projector_registry(name, layers):
    proj = build_vision_projector(_cfg(mm_projector_type=name))
    mods = [proj] if isinstance(proj, nn.Linear) else list(proj)
    assert [type(m).__name__ for m in mods] == layers
    assert proj(torch.zeros(2, 5, 32)).shape == (2, 5, 64)


def test_identity_projector_and_unknown_name():
    x = torch.randn(3, 32)
    assert build_vision_projector(_cfg(mm_projector_type="identity"))(x) is x
    with pytest.raises(
        ValueError, match=r"unknown mm_projector_type 'mlp2x_relu'.*linear.*mlp\{N\}x_gelu.*identity"
    ):
        build_vision_projector(_cfg(mm_projector_type="mlp2x_relu"))


def test_unknown_vision_tower_errors(tiny_kit, tmp_path):
    args = types.SimpleNamespace(vision_tower=str(tiny_kit.llm), mm_vision_select_layer=-2)
    with pytest.raises(
        ValueError, match=r"unknown vision tower type 'llama'.*valid model_type values: \['clip'"
    ):
        build_vision_tower(args)
    args.vision_tower = str(tmp_path / "no-such-tower")
    with pytest.raises(ValueError, match="could not be read"):
        build_vision_tower(args)
    args.vision_tower, args.mm_vision_select_feature = str(tiny_kit.vision), "cls"
    with pytest.raises(ValueError, match=r"mm_vision_select_feature 'cls'.*\['patch', 'cls_patch'\]"):
        build_vision_tower(args)


def test_cls_patch_keeps_cls(tiny_kit):
    tower = build_vision_tower(
        types.SimpleNamespace(vision_tower=str(tiny_kit.vision), mm_vision_select_feature="cls_patch")
    )
    assert tower(images(2)).shape == (2, 17, 32) and tower.num_image_tokens == 17


def _tiny_siglip(folder):
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    SiglipVisionModel(cfg).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_siglip_tower(tiny_kit, tmp_path):
    siglip = _tiny_siglip(tmp_path / "siglip")
    model = build_tiny_llava(tiny_kit, vision_tower=str(siglip))
    tower = model.get_vision_tower()
    assert type(tower.vision_tower).__name__ == "SiglipVisionModel" and tower.num_image_tokens == 16
    with torch.no_grad():
        hs = tower.vision_tower(images(1), output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(tower(images(1)), hs)  # no CLS token to drop
    out = model(input_ids=prompt_ids(1, 300, "IMG", 400), images=images(1))
    assert out.logits.shape[1] == 3 + 16
    model.save_pretrained(tmp_path / "ckpt")
    again = LlavaLlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(
            again(input_ids=prompt_ids(1, 300, "IMG", 400), images=images(1)).logits, out.logits
        )


@pytest.mark.parametrize(
    ("arch", "cls", "model_type"),
    [("mistral", LlavaMistralForCausalLM, "llava_mistral"), ("qwen2", LlavaQwen2ForCausalLM, "llava_qwen2")],
)
def test_other_llms_share_the_implementation(tiny_kit, tmp_path, arch, cls, model_type):
    from transformers import AutoModelForCausalLM

    from llava.model import register_auto_classes
    from llava.testing.tiny import make_tiny_llm

    register_auto_classes()  # no longer done at import time
    llm = make_tiny_llm(tmp_path / arch, arch=arch, tokenizer_dir=tiny_kit.tokenizer)
    model = build_tiny_llava(tiny_kit, cls=cls, llm_path=llm)
    ids, img = prompt_ids(1, 300, "IMG", 400), images(1)
    with torch.no_grad():
        ref = model(input_ids=ids, images=img).logits
    model.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["model_type"] == model_type and cfg["architectures"] == [cls.__name__]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert type(loaded) is cls and llava_class_for_config(cfg) is cls
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, images=img).logits, ref)
    gen = loaded.generate(ids, images=img, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 4)


def test_any_causal_lm_via_llava_class_for_config(tiny_kit):
    """A model type without a named class (GPT-2: other base prefix, learned positions) works too."""
    from transformers import GPT2Config

    cls = llava_class_for_config({"model_type": "gpt2"})
    assert cls.__name__ == "LlavaGPT2LMHeadModel" and llava_class_for_config({"model_type": "gpt2"}) is cls
    torch.manual_seed(0)
    model = cls(GPT2Config(vocab_size=500, n_embd=64, n_layer=2, n_head=4, n_positions=128))
    model.get_model().initialize_vision_modules(vision_args(tiny_kit))
    model.eval()
    assert model.get_model() is model.transformer
    ids = prompt_ids(1, 30, "IMG", 40, 50)
    out = model(input_ids=ids, images=images(1))
    assert out.logits.shape == (1, 4 + 16, 500)
    cached = model.generate(ids, images=images(1), max_new_tokens=5, do_sample=False, pad_token_id=0)
    uncached = model.generate(
        ids, images=images(1), max_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=False
    )
    assert torch.equal(cached, uncached)


def test_llava_class_for_config_dispatch():
    assert (
        llava_class_for_config({"model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"]})
        is LlavaLlamaForCausalLM
    )
    assert (
        llava_class_for_config({"model_type": "llava", "architectures": ["LlavaMistralForCausalLM"]})
        is LlavaMistralForCausalLM
    )
    assert llava_class_for_config({"model_type": "llava_qwen"}) is LlavaQwen2ForCausalLM
    # AutoConfig reads an original "llava" config.json as transformers' LlavaConfig; architectures decide.
    from transformers import LlavaConfig

    assert (
        llava_class_for_config(LlavaConfig(architectures=["LlavaLlamaForCausalLM"])) is LlavaLlamaForCausalLM
    )
    with pytest.raises(ValueError, match="llava-hf"):
        llava_class_for_config(LlavaConfig(architectures=["LlavaForConditionalGeneration"]))
    with pytest.raises(ValueError, match="no causal LM class for model_type 'clip'"):
        llava_class_for_config({"model_type": "clip"})


def test_anyres_spatial_unpad(tiny_kit):
    from PIL import Image

    from llava.mm_utils import process_images

    model = build_tiny_llava(tiny_kit, mm_patch_merge_type="spatial_unpad")
    model.config.image_aspect_ratio = "anyres"
    model.config.image_grid_pinpoints = [[32, 64], [64, 32], [64, 64]]
    assert model.get_model().image_newline.shape == (64,)
    image = Image.new("RGB", (60, 30), (120, 40, 200))
    pixels = process_images([image], model.get_vision_tower().image_processor, model.config)
    crops = pixels[0] if isinstance(pixels, list) else pixels[0]
    assert crops.shape == (3, 3, 32, 32)  # base image + a 2x1 grid
    feats = model.image_features([crops], image_sizes=[image.size])
    # base 4x4 patches, then the 4x8 grid map with a newline after each of its 4 rows
    assert feats[0].shape == (16 + 4 * 9, 64)
    newline = model.get_model().image_newline
    rows = feats[0][16:].view(4, 9, 64)
    assert torch.equal(rows[:, -1], newline.expand(4, 64))
    with torch.no_grad():
        torch.testing.assert_close(feats[0][:16], model.encode_images(crops[:1])[0])
    out = model(input_ids=prompt_ids(1, 300, "IMG", 400), images=[crops], image_sizes=[image.size])
    assert out.logits.shape[1] == 3 + 52
    flat = build_tiny_llava(tiny_kit, mm_patch_merge_type="spatial")
    flat.config.image_aspect_ratio, flat.config.image_grid_pinpoints = (
        "anyres",
        model.config.image_grid_pinpoints,
    )
    assert flat.image_features([crops], image_sizes=[image.size])[0].shape == (16 + 32, 64)


def test_initialize_vision_tokenizer_adds_start_end(tiny_kit):
    from transformers import AutoTokenizer

    model = build_tiny_llava(tiny_kit)
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer)
    emb = model.get_input_embeddings().weight.detach().clone()
    model.initialize_vision_tokenizer(tok, mm_use_im_patch_token=False, mm_use_im_start_end=True)
    new = model.get_input_embeddings().weight
    assert tok.convert_tokens_to_ids(["<im_start>", "<im_end>"]) == [32000, 32001] and new.shape[0] == 32002
    torch.testing.assert_close(new[32000], emb.mean(dim=0))
    torch.testing.assert_close(new[32001], emb.mean(dim=0))
