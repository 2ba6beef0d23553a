"""load_pretrained_model: dispatch on folder contents (merged, projector-only, LoRA, llava-hf, plain LM)."""

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from llava.model import LlavaLlamaForCausalLM
from llava.model.builder import detect_checkpoint_layout, load_pretrained_model
from tests.model_helpers import build_tiny_llava, images, prompt_ids

IDS = prompt_ids(1, 300, "IMG", 400, 500)


@pytest.fixture(scope="module")
def model(tiny_kit):
    return build_tiny_llava(tiny_kit)


@pytest.fixture(scope="module")
def merged(model, tiny_kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged-llava")
    model.config.mm_use_im_patch_token = False
    model.config.mm_use_im_start_end = False
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_kit.tokenizer).save_pretrained(out)
    return out


def _logits(model, img):
    with torch.no_grad():
        return model(input_ids=IDS, images=img.to(model.dtype)).logits.float()


def test_merged_checkpoint(model, merged):
    tok, loaded, proc, ctx = load_pretrained_model(merged, None, "some-name", device="cpu")
    assert detect_checkpoint_layout(str(merged)) == "llava"
    assert isinstance(loaded, LlavaLlamaForCausalLM) and loaded.dtype == torch.float32
    assert proc is loaded.get_vision_tower().image_processor and proc.crop_size["height"] == 32
    assert ctx == 2048 and len(tok) == 32000 and tok.pad_token is not None
    img = images(1)
    assert torch.equal(_logits(loaded, img), _logits(model, img))


def test_patch_token_added_when_config_asks(merged, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(merged, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(mm_use_im_patch_token=True, mm_use_im_start_end=True, max_sequence_length=777)
    (folder / "config.json").write_text(json.dumps(cfg))
    tok, loaded, _, ctx = load_pretrained_model(folder, None, "x", device="cpu")
    assert tok.convert_tokens_to_ids(["<im_patch>", "<im_start>", "<im_end>"]) == [32000, 32001, 32002]
    assert loaded.get_input_embeddings().weight.shape[0] == 32003 and ctx == 777


def test_projector_only_with_model_base(model, merged, tiny_kit, tmp_path):
    folder = tmp_path / "stage1"
    folder.mkdir()
    shutil.copy(merged / "config.json", folder / "config.json")
    proj = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
    torch.save(proj, folder / "mm_projector.bin")
    assert detect_checkpoint_layout(str(folder), str(tiny_kit.llm)) == "projector"
    _, loaded, proc, _ = load_pretrained_model(folder, tiny_kit.llm, "x", device="cpu")
    assert proc is not None
    img = images(1)
    assert torch.equal(_logits(loaded, img), _logits(model, img))


def test_lora_folder_is_found_by_contents(model, tiny_kit, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_llava(tiny_kit, seed=3)
    torch.manual_seed(4)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    folder = tmp_path / "checkpoint-plain-name"
    base.config.mm_use_im_patch_token = False  # training writes these fields
    base.config.mm_use_im_start_end = False
    peft_model.save_pretrained(folder)
    base.config.save_pretrained(folder)
    non_lora = {
        f"base_model.model.model.mm_projector.{k}": v
        for k, v in base.get_model().mm_projector.state_dict().items()
    }
    torch.save(non_lora, folder / "non_lora_trainables.bin")
    img = images(1)
    expected = _logits(peft_model.merge_and_unload(), img)
    assert detect_checkpoint_layout(str(folder)) == "lora"
    _, loaded, proc, _ = load_pretrained_model(folder, tiny_kit.llm, "llava-v1.5", device="cpu")
    assert isinstance(loaded, LlavaLlamaForCausalLM) and proc is not None
    assert (_logits(loaded, img) - expected).abs().max() < 1e-5


def test_plain_language_model(tiny_kit):
    tok, loaded, proc, ctx = load_pretrained_model(tiny_kit.llm, None, "llava-named-but-plain", device="cpu")
    assert proc is None and type(loaded).__name__ == "LlamaForCausalLM" and ctx == 2048


def test_llava_hf_folder(model, tiny_kit, tmp_path):
    from llava.model.hf_format import export_to_hf

    export_to_hf(model, AutoTokenizer.from_pretrained(tiny_kit.tokenizer), tmp_path)
    tok, loaded, proc, _ = load_pretrained_model(tmp_path, None, "x", device="cpu")
    img = images(1)
    ref = _logits(model, img)
    assert (_logits(loaded, img)[..., : ref.shape[-1]] - ref).abs().max() < 1e-5
    assert proc is not None and tok.convert_tokens_to_ids("<image>") == 32000


def test_model_base_without_adapter_or_projector_is_an_error(merged, tiny_kit):
    with pytest.raises(ValueError, match="neither adapter_config.json"):
        load_pretrained_model(merged, tiny_kit.llm, "x", device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "layer"), [("load_4bit", "Linear4bit"), ("load_8bit", "Linear8bitLt")])
def test_quantized_on_cpu(model, merged, flag, layer):
    pytest.importorskip("bitsandbytes")
    _, loaded, _, _ = load_pretrained_model(merged, None, "x", device="cpu", **{flag: True})
    q_proj = loaded.get_model().layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == layer
    assert type(loaded.get_model().mm_projector[0]).__name__ == "Linear"
    img = images(1)
    got, ref = _logits(loaded, img), _logits(model, img)
    assert torch.isfinite(got).all() and got.shape == ref.shape
    assert torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.9
    gen = loaded.generate(IDS, images=images(1), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 3)
