"""llava-hf format: export, logit parity with transformers' LlavaForConditionalGeneration, import back."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import LlavaLlamaForCausalLM
from llava.model.hf_format import export_to_hf, import_from_hf, llava_from_hf
from tests.model_helpers import build_tiny_llava, images

PROMPT = [1, 3148, 1001, 29901, IMAGE_TOKEN_INDEX, 13, 5618, 338, 445, 29973]


@pytest.fixture(scope="module")
def model(tiny_kit):
    return build_tiny_llava(tiny_kit)


@pytest.fixture(scope="module")
def exported(model, tiny_kit, tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer)
    return export_to_hf(model, tok, tmp_path_factory.mktemp("llava-hf"))


def _our_logits(model, img):
    with torch.no_grad():
        return model(input_ids=torch.tensor([PROMPT]), images=img).logits


def test_export_layout(exported):
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert cfg["image_token_index"] == 32000 and cfg["image_seq_length"] == 16
    assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
    assert cfg["text_config"]["model_type"] == "llama" and cfg["text_config"]["vocab_size"] == 32001
    assert not any(k.startswith("mm_") for k in cfg["text_config"])
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.bias"} <= keys
    assert any(k.startswith("vision_tower.vision_model.encoder.") for k in keys)
    processor = AutoProcessor.from_pretrained(exported)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == 32000


def test_logit_parity_with_transformers_llava(model, exported):
    hf = LlavaForConditionalGeneration.from_pretrained(exported, dtype=torch.float32).eval()
    img = images(1, seed=11)
    n = hf.config.image_seq_length
    hf_ids = []
    for t in PROMPT:
        hf_ids += [hf.config.image_token_index] * n if t == IMAGE_TOKEN_INDEX else [t]
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([hf_ids]), pixel_values=img).logits
    ours = _our_logits(model, img)
    assert theirs.shape[:2] == ours.shape[:2]
    assert (theirs[..., : ours.shape[-1]] - ours).abs().max() < 1e-4


def test_processor_expands_image_token(exported):
    from PIL import Image

    processor = AutoProcessor.from_pretrained(exported)
    batch = processor(
        images=Image.new("RGB", (48, 24), (200, 30, 30)), text="USER: <image>\nWhat?", return_tensors="pt"
    )
    assert int((batch["input_ids"] == 32000).sum()) == 16
    assert tuple(batch["pixel_values"].shape) == (1, 3, 32, 32)


def test_import_back_in_memory_and_to_original_folder(model, exported, tmp_path):
    img = images(1, seed=12)
    ref = _our_logits(model, img)
    back, tok = llava_from_hf(exported)
    assert isinstance(back, LlavaLlamaForCausalLM) and tok.convert_tokens_to_ids("<image>") == 32000
    assert (_our_logits(back, img)[..., : ref.shape[-1]] - ref).abs().max() < 1e-5
    import_from_hf(exported, tmp_path / "orig")
    cfg = json.loads((tmp_path / "orig" / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and cfg["mm_projector_type"] == "mlp2x_gelu"
    assert cfg["mm_vision_tower"] == str((tmp_path / "orig" / "vision_tower").resolve())
    reloaded = LlavaLlamaForCausalLM.from_pretrained(tmp_path / "orig").eval()
    assert (_our_logits(reloaded, img)[..., : ref.shape[-1]] - ref).abs().max() < 1e-5


def test_llava_hf_folder_serves_as_vision_tower(model, exported, tmp_path):
    """A model imported in memory names the llava-hf folder as its tower; saving and reloading works."""
    back, _ = llava_from_hf(exported)
    back.save_pretrained(tmp_path)
    state = {k: v for k, v in back.state_dict().items() if "vision_tower" not in k}
    back.save_pretrained(tmp_path, state_dict=state)  # tower weights come from the llava-hf folder
    reloaded = LlavaLlamaForCausalLM.from_pretrained(tmp_path).eval()
    img = images(1, seed=13)
    ref = _our_logits(model, img)
    assert (_our_logits(reloaded, img)[..., : ref.shape[-1]] - ref).abs().max() < 1e-5


def test_export_refuses_projector_without_hf_equivalent(tiny_kit, tmp_path):
    linear = build_tiny_llava(tiny_kit, mm_projector_type="linear")
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer)
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        export_to_hf(linear, tok, tmp_path)
