"""Weight tools on tiny models: deltas, LoRA merge, projector extraction, llava-hf round trip,
consolidate; and bad input (missing files, wrong shapes, corrupt weights) with nothing half-written."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from llava.model import load_mm_projector_state
from llava.model.apply_delta import main as apply_delta_main
from llava.model.builder import detect_checkpoint_layout, load_pretrained_model
from llava.model.make_delta import main as make_delta_main
from llava.model.weight_files import CheckpointFiles
from tests.model_helpers import build_tiny_llava, images, prompt_ids

REPO = Path(__file__).resolve().parents[1]
IDS = prompt_ids(1, 300, "IMG", 400, 500, 32000)
PROJECTOR_KEYS = {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logits(model, img, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids, images=img.to(model.dtype)).logits.float()


def _all_tensors(folder) -> dict:
    ckpt = CheckpointFiles(folder)
    return {k: ckpt.get(k) for k in ckpt.keys()}


def _no_leftovers(parent: Path):
    return [p.name for p in parent.iterdir() if ".tmp" in p.name]


@pytest.fixture(scope="module")
def target_model(tiny_kit):
    """A tiny LLaVA whose LLM differs from the kit's plain LLM and has one added token."""
    model = build_tiny_llava(tiny_kit, seed=1)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.get_model().layers.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.resize_token_embeddings(32001)
    model.config.mm_use_im_patch_token = False
    model.config.mm_use_im_start_end = False
    return model.eval()


@pytest.fixture(scope="module")
def target_dir(target_model, tiny_kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("target")
    target_model.save_pretrained(out, max_shard_size="2MB")  # sharded, with an index
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer)
    tok.add_tokens(["<extra>"], special_tokens=True)
    tok.save_pretrained(out)
    assert (out / "model.safetensors.index.json").is_file()
    return out


# ------------------------------------------------------------------------------------ deltas
def test_make_delta_then_apply_delta_gives_back_the_model(target_model, target_dir, tiny_kit, tmp_path):
    delta, restored = tmp_path / "delta", tmp_path / "restored"
    make_delta_main(["--base-model-path", str(tiny_kit.llm), "--target-model-path", str(target_dir),
                     "--delta-path", str(delta)])  # fmt: skip
    base, target, d = _all_tensors(tiny_kit.llm), _all_tensors(target_dir), _all_tensors(delta)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(d[q], target[q] - base[q], atol=1e-7) and d[q].abs().max() > 1e-3
    emb = "model.embed_tokens.weight"
    assert d[emb].shape == (32001, 64)
    assert torch.allclose(d[emb][:32000], target[emb][:32000] - base[emb], atol=1e-7)
    assert torch.equal(d[emb][32000], target[emb][32000])  # the added row has no base
    assert all(torch.equal(d[k], target[k]) for k in PROJECTOR_KEYS)  # not in the base: unchanged
    assert set(d) == set(target)

    apply_delta_main(["--base-model-path", str(tiny_kit.llm), "--target-model-path", str(restored),
                      "--delta-path", str(delta)])  # fmt: skip
    back = _all_tensors(restored)
    assert set(back) == set(target)
    assert max((back[k] - target[k]).abs().max().item() for k in target) == 0.0
    assert json.loads((restored / "config.json").read_text()) == json.loads(
        (target_dir / "config.json").read_text()
    )
    assert (restored / "tokenizer.json").is_file() and (restored / "model.safetensors.index.json").is_file()
    tok, model, _, _ = load_pretrained_model(restored, None, "x", device="cpu")
    img = images(1)
    assert len(tok) == 32001 and torch.equal(_logits(model, img), _logits(target_model, img))
    assert _no_leftovers(tmp_path) == []


def _edited_copy(src: Path, dst: Path, key: str, new_value) -> Path:
    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shard = dst / index["weight_map"][key]
    tensors = load_file(shard)
    tensors[key] = new_value(tensors[key])
    save_file(tensors, shard, metadata={"format": "pt"})
    return dst


def test_delta_of_the_wrong_shape_is_refused_before_writing(target_dir, tiny_kit, tmp_path):
    key = "model.layers.1.mlp.down_proj.weight"
    bad = _edited_copy(target_dir, tmp_path / "bad-delta", key, lambda t: t[:, :32].clone())
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        apply_delta_main(["--base", str(tiny_kit.llm), "--target", str(out), "--delta", str(bad)])
    msg = str(err.value)
    assert key in msg and "(64, 32)" in msg and "(64, 128)" in msg and str(bad) in msg
    assert not out.exists() and _no_leftovers(tmp_path) == []

    fewer_rows = _edited_copy(
        target_dir, tmp_path / "small-vocab", "model.embed_tokens.weight", lambda t: t[:100].clone()
    )
    with pytest.raises(ValueError, match=r"model.embed_tokens.weight: --delta-path \(100, 64\)"):
        apply_delta_main(["--base", str(tiny_kit.llm), "--target", str(out), "--delta", str(fewer_rows)])
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_missing_and_corrupt_checkpoint_files(target_dir, tiny_kit, tmp_path):
    out = tmp_path / "out"
    args = lambda base, delta: ["--base", str(base), "--target", str(out), "--delta", str(delta)]  # noqa: E731
    with pytest.raises(FileNotFoundError, match=r"--base-model-path .*nowhere: no such folder"):
        apply_delta_main(args(tmp_path / "nowhere", target_dir))

    no_weights = tmp_path / "config-only"
    no_weights.mkdir()
    shutil.copy(target_dir / "config.json", no_weights)
    with pytest.raises(FileNotFoundError, match=r"--delta-path .*config-only holds no model weights"):
        apply_delta_main(args(tiny_kit.llm, no_weights))

    lost_shard = tmp_path / "lost-shard"
    shutil.copytree(target_dir, lost_shard)
    victim = sorted(lost_shard.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"shard {victim.name} listed in model.safetensors.index.json"
    ):
        apply_delta_main(args(tiny_kit.llm, lost_shard))

    truncated = tmp_path / "truncated"
    shutil.copytree(target_dir, truncated)
    shard = sorted(truncated.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{shard.name}: cannot read the weights"):
        apply_delta_main(args(tiny_kit.llm, truncated))
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_output_into_existing_folder_replaces_stale_weights(target_dir, tiny_kit, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"stale single-file weights")
    (out / "notes.txt").write_text("kept")
    make_delta_main(["--base", str(tiny_kit.llm), "--target", str(target_dir), "--delta", str(out)])
    assert not (out / "model.safetensors").exists() and (out / "notes.txt").read_text() == "kept"
    assert set(CheckpointFiles(out).keys()) == set(CheckpointFiles(target_dir).keys())


# ------------------------------------------------------------------------------------ LoRA merge
@pytest.fixture(scope="module")
def lora_checkpoint(tiny_kit, tmp_path_factory):
    """A LoRA run's output as the trainer writes it, and the unmerged PEFT model for reference."""
    from peft import LoraConfig, get_peft_model

    base = build_tiny_llava(tiny_kit, seed=5)
    base.config.mm_use_im_patch_token = False
    base.config.mm_use_im_start_end = False
    torch.manual_seed(6)
    peft_model = get_peft_model(
        base,
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                   init_lora_weights=False, lora_dropout=0.0),
    )  # fmt: skip
    for p in peft_model.get_model().mm_projector.parameters():
        p.requires_grad_(True)  # stage 2 trains the projector beside the adapters
    folder = tmp_path_factory.mktemp("llava-lora")
    base.config.save_pretrained(folder)
    peft_model.save_pretrained(folder)
    non_lora = {
        n: p.detach().clone()
        for n, p in peft_model.named_parameters()
        if "lora_" not in n and p.requires_grad
    }
    assert set(non_lora) == {f"base_model.model.{k}" for k in PROJECTOR_KEYS}
    torch.save(non_lora, folder / "non_lora_trainables.bin")
    AutoTokenizer.from_pretrained(tiny_kit.tokenizer).save_pretrained(folder)
    return folder, peft_model.eval()


def test_merged_lora_logits_equal_the_lora_model(lora_checkpoint, tiny_kit, tmp_path):
    folder, peft_model = lora_checkpoint
    img = images(2, seed=3)
    ids = IDS[:, :-1].repeat(2, 1)
    expected = _logits(peft_model, img, ids)
    with peft_model.disable_adapter():
        assert (_logits(peft_model, img, ids) - expected).abs().max().item() > 1e-2  # the adapter matters
    out = tmp_path / "merged"
    _script("merge_lora_weights").main(["--model-path", str(folder), "--model-base", str(tiny_kit.llm),
                                        "--save-model-path", str(out), "--dtype", "float32"])  # fmt: skip
    assert detect_checkpoint_layout(str(out)) == "llava"
    assert not any("lora" in k for k in CheckpointFiles(out).keys())
    _, merged, proc, _ = load_pretrained_model(out, None, "merged", device="cpu")
    assert proc is not None
    assert (_logits(merged, img, ids) - expected).abs().max().item() < 1e-4
    assert _no_leftovers(tmp_path) == []


def test_merge_lora_default_dtype_is_float16_and_missing_path_is_clear(lora_checkpoint, tiny_kit, tmp_path):
    folder, _ = lora_checkpoint
    out = tmp_path / "merged16"
    _script("merge_lora_weights").main(["--model-path", str(folder), "--save-model-path", str(out)])
    ckpt = CheckpointFiles(out)
    assert ckpt.get("model.mm_projector.0.weight").dtype == torch.float16
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    with pytest.raises(Exception, match="nowhere"):
        _script("merge_lora_weights").main(["--model-path", str(tmp_path / "nowhere"), "--model-base",
                                            str(tiny_kit.llm), "--save-model-path", str(tmp_path / "m2")])  # fmt: skip
    assert not (tmp_path / "m2").exists()


# ------------------------------------------------------------------------------------ projector
def test_extract_mm_projector_from_sharded_lora_and_stage1(
    target_model, target_dir, lora_checkpoint, tiny_kit, tmp_path
):
    extract = _script("extract_mm_projector")
    out = tmp_path / "proj" / "mm_projector.bin"
    state = extract.main(["--model-path", str(target_dir), "--output", str(out)]) and torch.load(out)
    assert set(state) == PROJECTOR_KEYS
    for k, v in target_model.get_model().mm_projector.state_dict().items():
        assert torch.equal(state[f"model.mm_projector.{k}"], v)
    fresh = build_tiny_llava(tiny_kit, seed=9)
    load_mm_projector_state(fresh, state)  # what --pretrain_mm_mlp_adapter does
    assert torch.equal(
        fresh.get_model().mm_projector[2].weight, target_model.get_model().mm_projector[2].weight
    )

    with_embed = extract.main(["--model_name_or_path", str(target_dir), "--output", str(tmp_path / "e.bin"),
                               "--with-embed-tokens"]) and torch.load(tmp_path / "e.bin")  # fmt: skip
    assert set(with_embed) == PROJECTOR_KEYS | {"model.embed_tokens.weight"}

    lora_folder, peft_model = lora_checkpoint
    lora_state = extract.main(
        ["--model-path", str(lora_folder), "--output", str(tmp_path / "l.bin")]
    ) and torch.load(tmp_path / "l.bin")
    assert set(lora_state) == PROJECTOR_KEYS
    assert torch.equal(lora_state["model.mm_projector.0.bias"], peft_model.get_model().mm_projector[0].bias)

    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    torch.save({**state, "model.embed_tokens.weight": torch.zeros(3, 3)}, stage1 / "mm_projector.bin")
    assert set(extract.extract_mm_projector(stage1, tmp_path / "s.bin")) == PROJECTOR_KEYS


def test_extract_mm_projector_without_projector_is_an_error(tiny_kit, tmp_path):
    out = tmp_path / "mm_projector.bin"
    with pytest.raises(ValueError, match=r"no mm_projector weights found .*a plain LLM has no projector"):
        _script("extract_mm_projector").main(["--model-path", str(tiny_kit.llm), "--output", str(out)])
    with pytest.raises(FileNotFoundError, match="--model-path .*missing"):
        _script("extract_mm_projector").main(
            ["--model-path", str(tmp_path / "missing"), "--output", str(out)]
        )
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ llava-hf, consolidate
def test_llava_hf_export_and_import_cli(target_model, target_dir, tmp_path):
    from llava.model.convert_hf import main as convert_main

    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    convert_main(["--to-hf", "--model-path", str(target_dir), "--output", str(hf_dir)])
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["model_type"] == "llava" and (hf_dir / "processor_config.json").exists()
    convert_main(["--from-hf", "--model-path", str(hf_dir), "--output", str(back)])
    cfg = json.loads((back / "config.json").read_text())
    assert (
        cfg["mm_vision_tower"] == str((back / "vision_tower").resolve()) and (back / "vision_tower").is_dir()
    )
    _, model, _, _ = load_pretrained_model(back, None, "x", device="cpu")
    img = images(1)
    ref = _logits(target_model, img)
    assert (_logits(model, img)[..., : ref.shape[-1]] - ref).abs().max().item() < 1e-5
    assert _no_leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="is not a llava-hf folder"):
        convert_main(["--from-hf", "--model-path", str(target_dir), "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_consolidate_a_bin_checkpoint(target_model, target_dir, tmp_path):
    from llava.model.consolidate import main as consolidate_main

    src = tmp_path / "deepspeed-style"
    src.mkdir()
    for f in target_dir.iterdir():
        if not f.name.startswith("model"):
            shutil.copy(f, src)
    tensors = _all_tensors(target_dir)
    assert any(".vision_tower.vision_tower." in k for k in tensors)
    torch.save(tensors, src / "pytorch_model.bin")
    dst = tmp_path / "consolidated"
    consolidate_main(["--src", str(src), "--dst", str(dst), "--dtype", "float32"])
    assert (dst / "model.safetensors").is_file() and set(CheckpointFiles(dst).keys()) == set(tensors)
    _, model, _, _ = load_pretrained_model(dst, None, "x", device="cpu")
    img = images(1)
    assert torch.equal(_logits(model, img), _logits(target_model, img))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="--src .*empty holds no model weights"):
        consolidate_main(["--src", str(empty), "--dst", str(tmp_path / "d2")])
    assert not (tmp_path / "d2").exists()
