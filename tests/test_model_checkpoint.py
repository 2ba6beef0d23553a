"""Original LLaVA checkpoint format: save/load round trip, hand-built checkpoints, projector files."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llava.model import LlavaLlamaForCausalLM, load_mm_projector_state
from tests.model_helpers import build_tiny_llava, images, prompt_ids


@pytest.fixture(scope="module")
def model(tiny_kit):
    return build_tiny_llava(tiny_kit)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("llava-ckpt")
    model.save_pretrained(out)
    return out


def test_saved_config_and_keys_are_original_format(saved, tiny_kit):
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama"
    assert cfg["architectures"] == ["LlavaLlamaForCausalLM"]
    assert cfg["mm_vision_tower"] == str(tiny_kit.vision) and cfg["mm_projector_type"] == "mlp2x_gelu"
    assert cfg["mm_hidden_size"] == 32 and cfg["mm_vision_select_layer"] == -2
    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= keys
    assert "model.layers.0.self_attn.q_proj.weight" in keys
    assert {"model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight"} <= keys
    tower_keys = [k for k in keys if k.startswith("model.vision_tower.")]
    assert tower_keys and all(
        k.startswith("model.vision_tower.vision_tower.vision_model.") for k in tower_keys
    )


def test_round_trip_identical_logits_via_auto_class(model, saved):
    from transformers import AutoModelForCausalLM

    from llava.model import register_auto_classes

    register_auto_classes()  # no longer done at import time
    loaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    assert type(loaded) is LlavaLlamaForCausalLM
    ids, img = prompt_ids(1, 300, "IMG", 400, 500), images(1)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, images=img).logits, loaded(input_ids=ids, images=img).logits)


def _hand_built_checkpoint(tiny_kit, out, tower_scale=1.0):
    """Write a folder the way the original LLaVA code lays it out, without using our classes."""
    llm_cfg = json.loads((tiny_kit.llm / "config.json").read_text())
    llm = load_file(str(tiny_kit.llm / "model.safetensors"))
    tower = load_file(str(tiny_kit.vision / "model.safetensors"))
    g = torch.Generator().manual_seed(7)
    hidden = llm_cfg["hidden_size"]
    state = dict(llm)
    state["model.mm_projector.0.weight"] = torch.randn(hidden, 32, generator=g) * 0.2
    state["model.mm_projector.0.bias"] = torch.randn(hidden, generator=g) * 0.2
    state["model.mm_projector.2.weight"] = torch.randn(hidden, hidden, generator=g) * 0.2
    state["model.mm_projector.2.bias"] = torch.randn(hidden, generator=g) * 0.2
    for k, v in tower.items():  # original (transformers 4) tower names carry "vision_model."
        state[f"model.vision_tower.vision_tower.vision_model.{k.removeprefix('vision_model.')}"] = (
            v * tower_scale
        )
    cfg = dict(llm_cfg)
    cfg.update(
        architectures=["LlavaLlamaForCausalLM"],
        model_type="llava",  # what liuhaotian/llava-v1.5-* config.json says
        mm_vision_tower=str(tiny_kit.vision),
        mm_hidden_size=32,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
        tune_mm_mlp_adapter=False,
        use_mm_proj=True,
        tokenizer_padding_side="right",
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    torch.save(state, out / "pytorch_model.bin")
    return state


def test_hand_built_original_checkpoint_loads(tiny_kit, tmp_path):
    state = _hand_built_checkpoint(tiny_kit, tmp_path / "ckpt", tower_scale=1.5)
    model = LlavaLlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    inner = model.get_model()
    torch.testing.assert_close(inner.mm_projector[0].weight, state["model.mm_projector.0.weight"])
    torch.testing.assert_close(inner.mm_projector[2].bias, state["model.mm_projector.2.bias"])
    torch.testing.assert_close(
        inner.layers[1].mlp.down_proj.weight, state["model.layers.1.mlp.down_proj.weight"]
    )
    torch.testing.assert_close(model.lm_head.weight, state["lm_head.weight"])
    # Tower weights stored in the checkpoint win over the tower folder's.
    patch = inner.vision_tower.vision_tower.embeddings.patch_embedding.weight
    key = "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"
    torch.testing.assert_close(patch, state[key])
    # The features the LLM gets: projector(tower hidden_states[-2] without CLS).
    img = images(1)
    with torch.no_grad():
        hs = inner.vision_tower.vision_tower(img, output_hidden_states=True).hidden_states[-2][:, 1:]
        w0, b0 = state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"]
        w2, b2 = state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"]
        expected = torch.nn.functional.gelu(hs @ w0.T + b0) @ w2.T + b2
        torch.testing.assert_close(model.encode_images(img), expected, atol=1e-5, rtol=1e-5)


def test_tower_weights_from_folder_when_checkpoint_has_none(model, tmp_path, tiny_kit):
    state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}
    model.save_pretrained(tmp_path, state_dict=state)
    loaded = LlavaLlamaForCausalLM.from_pretrained(tmp_path)
    ref = load_file(str(tiny_kit.vision / "model.safetensors"))["embeddings.patch_embedding.weight"]
    torch.testing.assert_close(loaded.get_vision_tower().vision_tower.embeddings.patch_embedding.weight, ref)


def test_load_mm_projector_state_accepts_prefixes(tiny_kit, model):
    fresh = build_tiny_llava(tiny_kit, seed=1)
    saved = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
    saved["model.embed_tokens.weight"] = torch.zeros(3, 3)  # other keys are ignored
    load_mm_projector_state(fresh, saved)
    for a, b in zip(fresh.get_model().mm_projector.parameters(), model.get_model().mm_projector.parameters()):
        assert torch.equal(a, b)
    bare = {k: v * 2 for k, v in model.get_model().mm_projector.state_dict().items()}
    load_mm_projector_state(fresh, bare)
    assert torch.equal(fresh.get_model().mm_projector[0].weight, bare["0.weight"])


def test_projector_shape_mismatch_names_parameter_and_flag(tiny_kit):
    fresh = build_tiny_llava(tiny_kit)
    good = fresh.get_model().mm_projector.state_dict()
    wrong_in = {**good, "0.weight": torch.zeros(good["0.weight"].shape[0], 48)}
    with pytest.raises(
        ValueError,
        match=r"mm_projector\.0\.weight: expected shape \(64, 32\), got \(64, 48\).*--vision_tower",
    ):
        load_mm_projector_state(fresh, {f"model.mm_projector.{k}": v for k, v in wrong_in.items()})
    wrong_out = {**good, "2.weight": torch.zeros(128, 64), "2.bias": torch.zeros(128)}
    with pytest.raises(ValueError, match=r"mm_projector\.2\.(weight|bias).*--model_name_or_path"):
        load_mm_projector_state(fresh, wrong_out)
    linear = {"weight": torch.zeros(64, 32), "bias": torch.zeros(64)}
    with pytest.raises(ValueError, match=r"--mm_projector_type"):
        load_mm_projector_state(fresh, linear)


def test_unreadable_tower_error_and_override(saved, tiny_kit, tmp_path):
    import shutil

    folder = tmp_path / "moved"
    shutil.copytree(saved, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["mm_vision_tower"] = str(tmp_path / "gone" / "clip")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"could not be read.*mm_vision_tower='/local/tower'"):
        LlavaLlamaForCausalLM.from_pretrained(folder)
    model = LlavaLlamaForCausalLM.from_pretrained(folder, mm_vision_tower=str(tiny_kit.vision))
    assert model.get_vision_tower().is_loaded
