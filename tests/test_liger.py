"""--use_liger_kernel True on LLaVA models: Liger's function for the LLM inside is called.

Liger's kernels need a CUDA GPU (Triton), so here a stand-in `liger_kernel` module records the
calls; bench/bench_gpu_stage2.py runs the real kernels on a GPU (bench/RESULTS.md).
"""

import logging
import sys
import types

import pytest
import torch

from llava.train.liger import apply_liger_kernels
from tests.model_helpers import build_tiny_llava


def _fake_liger(monkeypatch, types_=("llama", "mistral", "qwen2")):
    calls = []

    def maker(name):
        def apply(
            rope=True,
            cross_entropy=False,
            fused_linear_cross_entropy=True,
            rms_norm=True,
            swiglu=True,
            model=None,
        ):
            calls.append(
                (
                    name,
                    model,
                    dict(
                        rope=rope,
                        cross_entropy=cross_entropy,
                        rms_norm=rms_norm,
                        swiglu=swiglu,
                        flce=fused_linear_cross_entropy,
                    ),
                )
            )

        apply.__name__ = f"apply_liger_kernel_to_{name}"
        return apply

    patch = types.ModuleType("liger_kernel.transformers.monkey_patch")
    patch.MODEL_TYPE_TO_APPLY_LIGER_FN = {t: maker(t) for t in types_}
    for name, module in (
        ("liger_kernel", types.ModuleType("liger_kernel")),
        ("liger_kernel.transformers", types.ModuleType("liger_kernel.transformers")),
        ("liger_kernel.transformers.monkey_patch", patch),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_llama_llava_gets_the_llama_kernels_without_fused_loss(tiny_kit, monkeypatch, caplog):
    calls = _fake_liger(monkeypatch)
    model = build_tiny_llava(tiny_kit)
    with caplog.at_level(logging.WARNING, logger="llava.train.liger"):
        used = apply_liger_kernels(model, {"rope": False, "fused_linear_cross_entropy": True})
    assert used == {"rope": False, "fused_linear_cross_entropy": False}
    assert len(calls) == 1
    name, patched, kwargs = calls[0]
    assert name == "llama" and patched is model
    assert kwargs == dict(rope=False, cross_entropy=False, rms_norm=True, swiglu=True, flce=False)
    assert "fused_linear_cross_entropy is not used" in caplog.text


def test_other_llms_dispatch_by_their_base_type(tiny_kit, monkeypatch):
    from llava.model import LlavaMistralConfig, LlavaQwen2Config

    calls = _fake_liger(monkeypatch)
    for config_cls, expected in ((LlavaMistralConfig, "mistral"), (LlavaQwen2Config, "qwen2")):
        model = types.SimpleNamespace(config=config_cls())
        apply_liger_kernels(model)
        assert calls[-1][0] == expected and calls[-1][1] is model


def test_unsupported_llm_unknown_key_and_missing_library(tiny_kit, monkeypatch):
    _fake_liger(monkeypatch, types_=("mistral",))
    model = build_tiny_llava(tiny_kit)
    with pytest.raises(ValueError, match=r"no kernels for this model's LLM \(LlavaLlamaConfig"):
        apply_liger_kernels(model)
    _fake_liger(monkeypatch)
    with pytest.raises(
        ValueError, match=r"\['layer_norm'\] not accepted by Liger's apply_liger_kernel_to_llama"
    ):
        apply_liger_kernels(model, {"layer_norm": True})
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", None)
    with pytest.raises(ImportError, match=r"--use_liger_kernel True needs liger-kernel"):
        apply_liger_kernels(model)


def test_training_flag_applies_it_before_lora(tiny_kit, monkeypatch, tmp_path):
    import transformers

    from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
    from llava.train.model_setup import build_model_and_tokenizer

    calls = _fake_liger(monkeypatch)
    argv = (
        f"--model_name_or_path {tiny_kit.llm} --vision_tower {tiny_kit.vision} --version v1 "
        f"--data_path unused.json --output_dir {tmp_path} --report_to none --lora_enable True "
        "--use_liger_kernel True"
    ).split() + ["--liger_kernel_config", '{"swiglu": false}']
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    model, _, _ = build_model_and_tokenizer(model_args, data_args, training_args)
    assert len(calls) == 1 and calls[0][2]["swiglu"] is False
    patched = calls[0][1]
    assert type(patched).__name__ == "LlavaLlamaForCausalLM"  # the model itself, not the PEFT wrapper
    assert type(model).__name__ == "PeftModelForCausalLM" and model.get_base_model() is patched
    # Started from a plain LLaMA folder, the config still says llava_llama: transformers' own Liger
    # hook (by model_type) must not take it for a plain LLaMA and swap in Liger's LLaMA forward,
    # which skips the image splicing (seen on a GPU: index out of bounds on the image placeholder).
    assert '"model_type": "llama"' in (tiny_kit.llm / "config.json").read_text()
    assert patched.config.model_type == "llava_llama"
    assert torch.is_tensor(next(model.parameters()))
