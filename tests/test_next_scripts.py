"""scripts/v1_6 and scripts/onevision parse with the real training parser, pass the preflight checks,
and carry LLaVA-1.6's and LLaVA-OneVision's published image, video and optimisation settings."""

import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
V16 = ["v1_6/finetune", "v1_6/finetune_lora"]
ONEVISION = ["onevision/pretrain", "onevision/mid_stage", "onevision/finetune_si", "onevision/finetune_ov",
             "onevision/finetune_video"]  # fmt: skip


def _parse(name, tmp_path):
    from transformers import HfArgumentParser

    from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
    from llava.train.preflight import check_model_flags

    text = (REPO / "scripts" / f"{name}.sh").read_text()
    command = text[text.index("llava/train/train_mem.py") :].split('"$@"')[0].replace("\\\n", " ")
    flags = shlex.split(command)[1:]
    flags = [f for f in flags if "$" not in f or f.startswith("--")]
    for k, f in enumerate(flags):  # shell variables: any value parses
        if "$" in f:
            flags[k] = "x"
    flags[flags.index("--output_dir") + 1] = str(tmp_path / "out")
    if "--deepspeed" in flags:
        i = flags.index("--deepspeed")
        assert (REPO / flags[i + 1]).resolve().is_file(), flags[i + 1]
        flags = flags[:i] + flags[i + 2 :]
    model_args, data_args, args = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments)
    ).parse_args_into_dataclasses(args=flags)
    check_model_flags(model_args, data_args)
    return text, model_args, data_args, args


@pytest.mark.parametrize("name", V16)
def test_llava_1_6_scripts(name, tmp_path):
    text, model_args, data_args, args = _parse(name, tmp_path)
    assert data_args.image_aspect_ratio == "anyres" and model_args.mm_patch_merge_type == "spatial_unpad"
    assert [list(p) for p in eval(data_args.image_grid_pinpoints)] == [
        [336, 672],
        [672, 336],
        [672, 672],
        [1008, 336],
        [336, 1008],
    ]
    assert model_args.mm_projector_type == "mlp2x_gelu" and model_args.mm_vision_select_layer == -2
    assert args.bf16 and args.gradient_checkpointing and args.group_by_modality_length
    if name.endswith("lora"):
        assert args.lora_enable and not model_args.unfreeze_mm_vision_tower
    else:
        assert (
            model_args.unfreeze_mm_vision_tower
            and args.mm_vision_tower_lr == 2e-6
            and args.learning_rate == 2e-5
        )
    assert "num_gpus x per_device_train_batch_size x gradient_accumulation_steps" in text


@pytest.mark.parametrize("name", ONEVISION)
def test_onevision_scripts(name, tmp_path):
    text, model_args, data_args, args = _parse(name, tmp_path)
    assert model_args.mm_projector_type == "mlp2x_gelu" and "siglip" in model_args.vision_tower
    assert model_args.version == ("plain" if name.endswith("pretrain") else "qwen_1_5")
    if name.endswith("pretrain"):
        assert model_args.tune_mm_mlp_adapter and args.learning_rate == 1e-3
        return
    assert (
        data_args.image_aspect_ratio == "anyres_max_9" and data_args.image_grid_pinpoints == "(1x1),...,(6x6)"
    )
    assert model_args.mm_patch_merge_type == "spatial_unpad" and model_args.unfreeze_mm_vision_tower
    assert args.mm_vision_tower_lr == 2e-6 and args.model_max_length == 32768
    assert (model_args.mm_spatial_pool_stride, model_args.mm_spatial_pool_mode) == (2, "bilinear")
    if name.endswith("video"):
        assert data_args.frames_upbound > 32 and data_args.force_sample
    else:  # the mid stage (images only) needs no frame bound
        assert model_args.mm_newline_position == "one_token"
        assert data_args.frames_upbound == (0 if name.endswith("mid_stage") else 32)
