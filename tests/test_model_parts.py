"""The model names its parts (llava.model.parts) by module identity, also under PEFT; the model never
sets requires_grad; importing llava changes nothing outside it (no Auto-class registration, no torch
patch)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from llava.model import LlavaLlamaForCausalLM, llava_class_for_config, llava_parts, parameter_parts
from llava.model.parts import adapter_parameter_ids, base_llava_model
from tests.conftest import REPO_ROOT
from tests.model_helpers import build_tiny_llava, vision_args


def test_parts_are_the_models_modules(tiny_kit):
    model = build_tiny_llava(tiny_kit)
    parts = model.get_parts()
    inner = model.model
    assert parts.vision_tower is inner.vision_tower and parts.projector is inner.mm_projector
    assert parts.llm is inner and parts.head is model.lm_head and parts.embeddings is inner.embed_tokens
    assert parts.image_newline is None
    by_name = parameter_parts(model)
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    expected = {
        "model.mm_projector.": "projector",
        "model.vision_tower.": "vision_tower",
        "lm_head.": "head",
        "model.layers.": "llm",
        "model.embed_tokens.": "llm",
        "model.norm.": "llm",
    }
    for name, part in by_name.items():
        assert part == next(v for k, v in expected.items() if name.startswith(k)), name
    own = {id(p) for p in parts.llm_parameters()}
    assert own == {id(p) for n, p in model.named_parameters() if by_name[n] == "llm"}


def test_parts_through_lora_and_the_newline(tiny_kit):
    from peft import LoraConfig, get_peft_model

    model = build_tiny_llava(tiny_kit, mm_patch_merge_type="spatial_unpad")
    projector, tower, newline = model.model.mm_projector, model.model.vision_tower, model.model.image_newline
    llm_attention = r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"  # not the tower's q_proj
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=llm_attention))
    assert base_llava_model(peft_model) is model and base_llava_model(peft_model.base_model) is model
    parts = llava_parts(peft_model)
    assert parts.projector is projector and parts.vision_tower is tower and parts.image_newline is newline
    by_name = parameter_parts(peft_model)
    assert by_name["base_model.model.model.image_newline"] == "image_newline"
    assert by_name["base_model.model.model.mm_projector.0.weight"] == "projector"
    lora = {n for n in by_name if "lora_" in n}
    assert lora and {by_name[n] for n in lora} == {"llm"}  # the adapters sit in the decoder stack
    adapters = adapter_parameter_ids(peft_model)
    assert adapters == {id(p) for n, p in peft_model.named_parameters() if "lora_" in n}
    assert adapter_parameter_ids(model) == adapters  # the same modules, seen from the base model


def test_text_only_model_and_other_prefixes(tiny_kit):
    from transformers import GPT2Config

    plain = LlavaLlamaForCausalLM.from_pretrained(tiny_kit.llm)
    parts = plain.get_parts()
    assert parts.vision_tower is None and parts.projector is None and parts.image_newline is None
    assert set(parameter_parts(plain).values()) == {"llm", "head"}
    assert LlavaLlamaForCausalLM.multimodal_module_names() == ("model.vision_tower", "model.mm_projector")
    gpt2 = llava_class_for_config({"model_type": "gpt2"})
    assert gpt2.multimodal_module_names() == ("transformer.vision_tower", "transformer.mm_projector")
    model = gpt2(GPT2Config(vocab_size=500, n_embd=64, n_layer=2, n_head=4, n_positions=128))
    model.get_model().initialize_vision_modules(vision_args(tiny_kit))
    by_name = parameter_parts(model)
    assert by_name["transformer.wte.weight"] == "llm"  # tied to lm_head: counted once, with the LLM
    assert by_name["transformer.mm_projector.0.weight"] == "projector"
    with pytest.raises(TypeError, match="not a LLaVA model"):
        llava_parts(nn.Linear(2, 2))


def test_the_model_sets_no_requires_grad(tiny_kit):
    from transformers import AutoTokenizer

    model = build_tiny_llava(tiny_kit)
    model.requires_grad_(False)
    # a second call finds the tower and projector: creates nothing and leaves them frozen
    assert model.get_model().initialize_vision_modules(vision_args(tiny_kit)) == ()
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer)
    assert not model.initialize_vision_tokenizer(tok, mm_use_im_start_end=False, mm_use_im_patch_token=True)
    assert model.initialize_vision_tokenizer(tok, mm_use_im_start_end=True) is True
    assert not any(p.requires_grad for p in model.parameters())
    fresh = LlavaLlamaForCausalLM.from_pretrained(tiny_kit.llm)
    unpad = vision_args(tiny_kit, mm_patch_merge_type="spatial_unpad")
    created = fresh.get_model().initialize_vision_modules(unpad)
    assert created == ("vision_tower", "projector", "image_newline")


def _python(code: str) -> str:
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_importing_llava_registers_and_patches_nothing(tiny_kit, tmp_path):
    """Every llava module imported in a fresh process: AutoConfig / AutoModelForCausalLM know no llava_*
    type and torch.nn is untouched; the loaders register what they need themselves."""
    from transformers import AutoTokenizer

    from llava.testing.tiny import save_tiny_llava

    ckpt = save_tiny_llava(tiny_kit, tmp_path / "llava")
    text_only = tmp_path / "text-only"  # a LLaVA class without vision modules: model_type llava_llama
    LlavaLlamaForCausalLM.from_pretrained(tiny_kit.llm).save_pretrained(text_only)
    AutoTokenizer.from_pretrained(tiny_kit.llm).save_pretrained(text_only)
    assert json.loads((text_only / "config.json").read_text())["model_type"] == "llava_llama"
    out = _python(
        f"""
        import importlib, json, pkgutil
        import torch, transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
        patched = (torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters)
        import llava
        for info in pkgutil.walk_packages(llava.__path__, "llava."):
            importlib.import_module(info.name)
        known = [t for t in ("llava_llama", "llava_mistral", "llava_qwen2") if t in CONFIG_MAPPING]
        models = [c.__name__ for c in MODEL_FOR_CAUSAL_LM_MAPPING._extra_content]
        same = patched == (torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters)
        from llava.model.builder import load_pretrained_model
        _, model, _, _ = load_pretrained_model({str(text_only)!r}, None, device_map=None, device="cpu")
        auto = transformers.AutoModelForCausalLM.from_pretrained({str(ckpt)!r})
        print(json.dumps([known, models, same, type(model).__name__, type(auto).__name__]))
        """
    )
    known, models, same, loaded, auto = json.loads(out)
    assert known == [] and models == [] and same
    assert loaded == auto == "LlavaLlamaForCausalLM"


def test_initialize_vision_tokenizer_takes_the_adapters_rows(tiny_kit, tmp_path):
    from transformers import AutoTokenizer

    model = build_tiny_llava(tiny_kit)
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer)
    rows = torch.randn(2, model.config.hidden_size)
    torch.save({"model.embed_tokens.weight": rows}, tmp_path / "mm_projector.bin")
    model.initialize_vision_tokenizer(
        tok, mm_use_im_start_end=True, pretrained_adapter=str(tmp_path / "mm_projector.bin")
    )
    ids = tok.convert_tokens_to_ids(["<im_start>", "<im_end>"])
    torch.testing.assert_close(model.get_input_embeddings().weight[ids], rows)
