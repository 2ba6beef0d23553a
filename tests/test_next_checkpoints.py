"""LLaVA-NeXT checkpoints (LLaVA-1.6 and OneVision) load through `load_pretrained_model`.

Each folder is written the way LLaVA-VL's code writes it, not with this project's save: `config.json`
with the field names and values of the released llava-v1.6-vicuna-7b, llava-v1.6-mistral-7b,
llava-v1.6-34b and llava-onevision-qwen2-7b-ov (dims shrunk), one safetensors file with their key names
(`model.mm_projector.0.*`, `model.image_newline`, `model.vision_tower.vision_tower.vision_model.*`),
and `mm_vision_tower` pointing at a tower folder saved with `save_pretrained`. The OneVision tower is
stored as NeXT keeps SigLIP: without its last encoder layer and its head.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import save_file

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM, LlavaQwen2ForCausalLM
from llava.model.builder import load_pretrained_model

HIDDEN, TOWER_HIDDEN, CROP = 64, 32, 32
TOWER = dict(
    hidden_size=TOWER_HIDDEN,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=CROP,
)
PINPOINTS_1_6 = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # [[336, 672], ...] for a 32-pixel crop
PINPOINTS_OV = [[CROP * i, CROP * j] for i in range(1, 7) for j in range(1, 7)]  # "(1x1),...,(6x6)" expanded

LLAVA_1_6 = {
    "architectures": ["LlavaLlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "freeze_mm_mlp_adapter": False,
    "freeze_mm_vision_resampler": False,
    "hidden_act": "silu",
    "image_aspect_ratio": "anyres",
    "image_crop_resolution": 224,
    "image_grid_pinpoints": PINPOINTS_1_6,
    "image_split_resolution": 224,
    "initializer_range": 0.02,
    "max_position_embeddings": 4096,
    "mm_patch_merge_type": "spatial_unpad",
    "mm_projector_lr": None,
    "mm_projector_type": "mlp2x_gelu",
    "mm_resampler_type": None,
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower_lr": 2e-06,
    "model_type": "llava",
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "tokenizer_model_max_length": 4096,
    "tokenizer_padding_side": "right",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.36.2",
    "tune_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": True,
    "use_cache": True,
    "use_mm_proj": True,
}
CONFIGS = {
    "llava-v1.6-vicuna-7b": LLAVA_1_6,
    "llava-v1.6-mistral-7b": {
        **LLAVA_1_6,
        "architectures": ["LlavaMistralForCausalLM"],
        "model_type": "llava_mistral",
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tokenizer_model_max_length": 4096,
    },
    "llava-v1.6-34b": {**LLAVA_1_6, "eos_token_id": 7, "rope_theta": 5000000.0},
    "llava-onevision-qwen2-7b-ov": {
        "architectures": ["LlavaQwenForCausalLM"],
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "image_aspect_ratio": "anyres_max_9",
        "image_crop_resolution": None,
        "image_grid_pinpoints": PINPOINTS_OV,
        "image_split_resolution": None,
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "mm_newline_position": "one_token",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_spatial_pool_mode": "bilinear",
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower_lr": 2e-06,
        "model_type": "qwen2",
        "pos_skipping_range": 4096,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.0.dev0",
        "use_cache": True,
        "use_mm_proj": True,
        "use_pos_skipping": False,
        "use_sliding_window": False,
        "vision_tower_pretrained": None,
    },
}
LLM = {  # the transformers model each one's weights come from, and the class that must load it
    "llava-v1.6-vicuna-7b": ("Llama", LlavaLlamaForCausalLM),
    "llava-v1.6-mistral-7b": ("Mistral", LlavaMistralForCausalLM),
    "llava-v1.6-34b": ("Llama", LlavaLlamaForCausalLM),
    "llava-onevision-qwen2-7b-ov": ("Qwen2", LlavaQwen2ForCausalLM),
}
TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
# Fields transformers 5 normalises on reading: rope_theta moves into rope_parameters, Qwen2 drops
# sliding_window when use_sliding_window is false, the dtype is the one asked for, model_type the class's.
NORMALISED = {"model_type", "rope_theta", "rope_scaling", "torch_dtype", "sliding_window"}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """{"clip": folder, "siglip": folder}: tiny CLIP-336-like and SigLIP-so400m-like towers."""
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    from llava.testing.tiny import make_tiny_clip

    root = tmp_path_factory.mktemp("next-towers")
    torch.manual_seed(1)
    siglip = root / "siglip-so400m-patch14-384"
    SiglipVisionModel(SiglipVisionConfig(**TOWER, patch_size=8)).save_pretrained(siglip)
    SiglipImageProcessorPil(size={"height": CROP, "width": CROP}).save_pretrained(siglip)
    clip = make_tiny_clip(root / "clip-vit-large-patch14-336", image_size=CROP, patch_size=8, seed=2)
    return {"clip": clip, "siglip": siglip}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from llava.testing.tiny import build_small_tokenizer

    return build_small_tokenizer(tmp_path_factory.mktemp("next-tok"))


def tower_weights(tower_dir, drop_last_layer_and_head: bool) -> dict[str, torch.Tensor]:
    """The tower's weights as a NeXT checkpoint stores them after training it: shifted (so they differ
    from the tower folder's), under `model.vision_tower.vision_tower.vision_model.*`."""
    model = transformers.AutoModel.from_pretrained(tower_dir)  # CLIPVisionModel / SiglipVisionModel
    last = model.config.num_hidden_layers - 1
    out = {}
    for key, value in model.state_dict().items():
        if drop_last_layer_and_head and (key.startswith(("head.", f"encoder.layers.{last}."))):
            continue
        out[TOWER_PREFIX + key] = value + 0.5
    return out


def write_next_checkpoint(folder, name, towers, tokenizer_dir, **config_changes):
    """A tiny `name` checkpoint in `folder`, as LLaVA-VL's training writes it."""
    arch, _ = LLM[name]
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    siglip = name.startswith("llava-onevision")
    dims = dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    dims.update(num_key_value_heads=2, vocab_size=len(tok), mm_hidden_size=TOWER_HIDDEN)
    config = {**CONFIGS[name], **dims, "mm_vision_tower": str(towers["siglip" if siglip else "clip"])}
    config.update(config_changes)
    llm_config = getattr(transformers, f"{arch}Config")(
        **{k: v for k, v in dims.items() if k != "mm_hidden_size"}
    )
    torch.manual_seed(3)
    weights = getattr(transformers, f"{arch}ForCausalLM")(llm_config).state_dict()
    weights.update(
        {
            "model.mm_projector.0.weight": torch.randn(HIDDEN, TOWER_HIDDEN) * 0.5,
            "model.mm_projector.0.bias": torch.randn(HIDDEN) * 0.1,
            "model.mm_projector.2.weight": torch.randn(HIDDEN, HIDDEN) * 0.5,
            "model.mm_projector.2.bias": torch.randn(HIDDEN) * 0.1,
            "model.image_newline": torch.randn(HIDDEN),
        }
    )
    weights.update(tower_weights(config["mm_vision_tower"], drop_last_layer_and_head=siglip))
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(folder)
    return folder, config, weights


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, towers, tokenizer_dir):
    root = tmp_path_factory.mktemp("next-ckpts")
    return {
        name: write_next_checkpoint(root / f"ckpt-{i}", name, towers, tokenizer_dir)
        for i, name in enumerate(CONFIGS)
    }


def _prompt(n_text=5):
    return torch.tensor([[1, 20, 21, IMAGE_TOKEN_INDEX] + list(range(30, 30 + n_text))])


def _image(size=(60, 40)):
    from PIL import Image

    pixels = torch.Generator().manual_seed(size[0])
    data = torch.randint(0, 256, (size[1], size[0], 3), generator=pixels, dtype=torch.uint8).numpy()
    return Image.fromarray(data)


def _anyres_pixels(model, processor, image) -> list[torch.Tensor]:
    """[1+K, 3, 32, 32]: the base crop and the crops of the image's best grid (the config's mode)."""
    from llava.mm_utils import process_images

    return list(process_images([image], processor, model.config))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loads_with_its_config_and_stored_weights(checkpoints, towers, name):
    folder, config, weights = checkpoints[name]
    _, model, processor, ctx = load_pretrained_model(folder, None, "unrelated-name", device="cpu")
    assert type(model) is LLM[name][1]
    assert processor is model.get_vision_tower().image_processor
    assert ctx == config["max_position_embeddings"]
    for key, value in config.items():  # every field as written (nothing renamed or dropped)
        if key not in NORMALISED:
            assert getattr(model.config, key) == value, key
    assert model.config.rope_parameters["rope_theta"] == config["rope_theta"]
    state = model.state_dict()
    for key in ("model.mm_projector.0.weight", "model.image_newline", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(state[key], weights[key].float()), key
    tower = model.get_vision_tower().vision_tower
    folder_tower = transformers.AutoModel.from_pretrained(config["mm_vision_tower"]).state_dict()
    for key, value in tower.state_dict().items():
        stored = weights.get(TOWER_PREFIX + key)
        # stored weights win; weights the checkpoint leaves out keep the tower folder's values
        assert torch.equal(value, stored.float() if stored is not None else folder_tower[key]), key
    left_out = {k for k in tower.state_dict() if TOWER_PREFIX + k not in weights}
    if name.startswith("llava-onevision"):  # SigLIP as NeXT stores it: last layer and head removed
        assert type(tower).__name__ == "SiglipVisionModel"
        assert left_out and all(k.startswith(("head.", "encoder.layers.2.")) for k in left_out)
    else:
        assert not left_out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_generate_with_an_image(checkpoints, name):
    folder, _, _ = checkpoints[name]
    _, model, processor, _ = load_pretrained_model(folder, None, "x", device="cpu")
    image = _image()
    ids = _prompt()
    single = torch.randn(1, 3, CROP, CROP)  # one crop: the LLaVA-1.5 fast path
    anyres = _anyres_pixels(model, processor, image)  # base + grid crops, merged as spatial_unpad
    assert anyres[0].shape[0] > 1
    with torch.no_grad():
        for images, sizes in ((single, [(CROP, CROP)]), (anyres, [image.size])):
            logits = model(input_ids=ids, images=images, image_sizes=sizes).logits
            assert torch.isfinite(logits).all()
            assert logits.shape[1] > ids.shape[1]  # the image's features replaced its placeholder
    out = model.generate(ids, images=anyres, image_sizes=[image.size], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 3)


BIG = (190, 180)  # an image large enough for the 6x6 grid, so anyres_max_9 shrinks its feature map


def _ov_logits(folder, grid):
    _, model, processor, _ = load_pretrained_model(folder, None, "x", device="cpu")
    assert type(model) is LlavaQwen2ForCausalLM and model.config.image_grid_pinpoints == grid
    pixels = _anyres_pixels(model, processor, _image(BIG))
    assert pixels[0].shape[0] == 1 + 36
    with torch.no_grad():
        return model(input_ids=_prompt(), images=pixels, image_sizes=[BIG]).logits


@pytest.fixture(scope="module")
def ov_reference(checkpoints):
    return _ov_logits(checkpoints["llava-onevision-qwen2-7b-ov"][0], PINPOINTS_OV)


@pytest.mark.parametrize("model_type", ["llava_qwen", "qwen2", "llava"])
def test_onevision_spellings_load_the_same_model(ov_reference, tmp_path, towers, tokenizer_dir, model_type):
    """model_type llava_qwen / qwen2 / llava (architectures LlavaQwenForCausalLM), and the grid as NeXT's
    "(1x1),...,(6x6)" string instead of its expanded list: the same model, the same logits."""
    grid = "(1x1),...,(6x6)"
    folder, _, _ = write_next_checkpoint(
        tmp_path / "ov", "llava-onevision-qwen2-7b-ov", towers, tokenizer_dir, model_type=model_type,
        image_grid_pinpoints=grid,
    )  # fmt: skip
    logits = _ov_logits(folder, grid)
    assert torch.isfinite(logits).all() and torch.equal(logits, ov_reference)


def test_folder_and_model_names_decide_nothing(checkpoints, tmp_path):
    """The original builder picked classes by words in model_name ("mistral", "qwen", "34b"); here the
    config decides, whatever the folder or model_name says."""
    src, _, _ = checkpoints["llava-onevision-qwen2-7b-ov"]
    misleading = tmp_path / "llava-v1.6-mistral-7b-lora"
    shutil.copytree(src, misleading)
    _, model, _, _ = load_pretrained_model(misleading, None, "llava-v1.6-34b-mistral-lora", device="cpu")
    assert type(model) is LlavaQwen2ForCausalLM


def test_llava_next_keywords(checkpoints, tokenizer_dir):
    """What LLaVA-NeXT's callers (its eval, lmms-eval's llava_onevision) pass to load_pretrained_model."""
    folder, config, _ = checkpoints["llava-onevision-qwen2-7b-ov"]
    video = {"mm_spatial_pool_stride": 4, "mm_newline_position": "grid"}
    _, model, _, _ = load_pretrained_model(
        folder,
        None,
        "llava_qwen",
        device="cpu",
        multimodal=True,
        overwrite_config=video,
        torch_dtype="bfloat16",
    )
    assert model.dtype == torch.bfloat16 and model.get_vision_tower().dtype == torch.bfloat16
    assert (model.config.mm_spatial_pool_stride, model.config.mm_newline_position) == (4, "grid")
    assert model.config.mm_spatial_pool_mode == config["mm_spatial_pool_mode"]  # the rest as saved
    customized = type(model.config).from_pretrained(folder)
    customized.mm_spatial_pool_mode = "average"
    _, model, _, _ = load_pretrained_model(folder, None, "x", device="cpu", customized_config=customized)
    assert model.config.mm_spatial_pool_mode == "average"
    with pytest.raises(ValueError, match="multimodal=True but .* is not a LLaVA checkpoint"):
        load_pretrained_model(tokenizer_dir, None, "x", device="cpu", multimodal=True)
    with pytest.raises(ValueError, match="torch_dtype 'half_float' is not a torch dtype"):
        load_pretrained_model(folder, None, "x", device="cpu", torch_dtype="half_float")


@pytest.mark.parametrize(
    ("drop", "match"),
    [
        ("embeddings.patch_embedding.weight", r"missing \['embeddings.patch_embedding.weight'\]"),
        ("encoder.layers.1.mlp.fc1.weight", r"missing \['encoder.layers.1.mlp.fc1.weight'\]"),
        ("encoder.layers.0.layer_norm1.bias", r"missing \['encoder.layers.0.layer_norm1.bias'\]"),
    ],
)
def test_a_stored_tower_missing_a_used_weight_is_an_error(tmp_path, towers, tokenizer_dir, drop, match):
    folder, _, weights = write_next_checkpoint(
        tmp_path / "ov", "llava-onevision-qwen2-7b-ov", towers, tokenizer_dir
    )
    del weights[TOWER_PREFIX + drop]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"vision tower weights in .*{match}.*mm_vision_select_layer -2"):
        load_pretrained_model(folder, None, "x", device="cpu")


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (-1, r"missing \['encoder.layers.2\."),  # the last layer is used, and the checkpoint lacks it
        (3, r"missing \['encoder.layers.2\."),  # the same layer counted from the front
        (-9, r"mm_vision_select_layer -9 is out of range for the 3-layer tower"),
    ],
)
def test_a_tower_stored_without_a_layer_the_features_use_is_an_error(
    tmp_path, towers, tokenizer_dir, layer, match
):
    folder, _, _ = write_next_checkpoint(
        tmp_path / "ov", "llava-onevision-qwen2-7b-ov", towers, tokenizer_dir, mm_vision_select_layer=layer
    )
    with pytest.raises(ValueError, match=match):
        load_pretrained_model(folder, None, "x", device="cpu")


def test_a_stored_tower_key_that_fits_nothing_is_an_error(tmp_path, towers, tokenizer_dir):
    folder, _, weights = write_next_checkpoint(
        tmp_path / "v16", "llava-v1.6-vicuna-7b", towers, tokenizer_dir
    )
    weights[TOWER_PREFIX + "encoder.layers.7.mlp.fc1.weight"] = torch.zeros(
        64, TOWER_HIDDEN, dtype=torch.bfloat16
    )
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected \['encoder.layers.7.mlp.fc1.weight'\]"):
        load_pretrained_model(folder, None, "x", device="cpu")
