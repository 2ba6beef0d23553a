"""Checks before loading: flag combinations and --report_to wandb without a key."""

import sys
from types import SimpleNamespace

import pytest

from llava.train.preflight import check_wandb


@pytest.fixture()
def no_wandb_key(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def _args(report_to):
    return SimpleNamespace(report_to=report_to)


def test_wandb_without_key_or_terminal_stops_with_the_ways_out(no_wandb_key):
    with pytest.raises(
        ValueError, match=r"no W&B key for api.wandb.ai.*WANDB_MODE=offline.*--report_to none"
    ):
        check_wandb(_args(["wandb"]), interactive=False)
    check_wandb(_args(["wandb"]), interactive=True)  # wandb can ask at the terminal
    check_wandb(_args(["none"]), interactive=False)
    check_wandb(_args([]), interactive=False)


def test_wandb_key_from_env_netrc_or_offline_mode(no_wandb_key, monkeypatch):
    no_wandb_key.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    no_wandb_key.chmod(0o600)
    check_wandb(_args(["wandb"]), interactive=False)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a key for another host
    with pytest.raises(ValueError, match="wandb.example.org"):
        check_wandb(_args(["wandb"]), interactive=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_wandb(_args(["wandb"]), interactive=False)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    check_wandb(_args(["wandb"]), interactive=False)


def test_wandb_not_installed(no_wandb_key, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match="wandb is not installed"):
        check_wandb(_args(["wandb"]), interactive=True)


def test_train_stops_before_loading_anything(no_wandb_key, tmp_path, monkeypatch):
    from llava.train.train import train

    monkeypatch.setattr(sys, "stdin", None)  # no terminal
    out = tmp_path / "out"
    argv = (
        f"--model_name_or_path /nonexistent --data_path x.json --output_dir {out} --report_to wandb".split()
    )
    with pytest.raises(ValueError, match="--report_to wandb: no W&B key"):
        train(argv=argv)
    assert not out.exists()


# ------------------------------------------------------------------------------ model and data flags
def _model_args(**kw):
    from llava.train.arguments import ModelArguments

    return ModelArguments(**kw)


def _data_args(**kw):
    from llava.train.arguments import DataArguments

    return DataArguments(**kw)


@pytest.mark.parametrize(
    "model, data, message",
    [
        (dict(version="v9"), {}, r"unknown conversation template 'v9' \(--version\); valid names: .*v1"),
        (dict(mm_projector_type="mlp2x_relu"), {}, r"--mm_projector_type\); valid: linear, mlp\{N\}x_gelu"),
        (dict(mm_patch_merge_type="spatial_pad"), {}, r"--mm_patch_merge_type 'spatial_pad' .*flat, spatial, "
         "spatial_unpad"),
        (dict(mm_vision_select_feature="cls"), {}, r"--mm_vision_select_feature 'cls' .*patch, cls_patch"),
        ({}, dict(image_aspect_ratio="letterbox"), r"--image_aspect_ratio: .*'letterbox'.*square, pad, anyres, "
         "anyres_max_N"),
        ({}, dict(image_aspect_ratio="anyres"), r"anyres needs --image_grid_pinpoints"),
        ({}, dict(image_aspect_ratio="anyres_max_9"), r"anyres_max_9 needs --image_grid_pinpoints"),
        ({}, dict(image_grid_pinpoints="(1x),...,(6x)"), r"--image_grid_pinpoints: .* does not parse"),
        (dict(mm_newline_position="row"), {}, r"--mm_newline_position: .*'row'.*grid, frame, one_token, no_token"),
        (dict(mm_spatial_pool_mode="mean"), {}, r"--mm_spatial_pool_mode: .*'mean'.*bilinear"),
        ({}, dict(frames_upbound=-1), r"--frames_upbound must be >= 0"),
        ({}, dict(image_grid_pinpoints="[(336, 672), (672,)]"), r"pairs of positive integers; e\.g\."),
        ({}, dict(image_grid_pinpoints="[]"), r"not a non-empty list"),
    ],
)  # fmt: skip
def test_each_flag_is_checked_naming_the_valid_values(model, data, message):
    from llava.train.preflight import check_model_flags

    with pytest.raises(ValueError, match=message):
        check_model_flags(_model_args(**model), _data_args(**data))


def test_valid_flags_pass():
    from llava.images.grid import parse_grid_pinpoints
    from llava.train.preflight import check_model_flags

    for merge in ("flat", "spatial", "spatial_unpad"):
        check_model_flags(
            _model_args(mm_patch_merge_type=merge, mm_projector_type="mlp3x_gelu"), _data_args()
        )
    check_model_flags(_model_args(version="plain", mm_projector_type="identity"), _data_args())
    anyres = _data_args(image_aspect_ratio="anyres", image_grid_pinpoints="[(32, 64), [64, 32]]")
    check_model_flags(_model_args(version="v0.5"), anyres)
    assert parse_grid_pinpoints("[(32, 64), [64, 32]]") == [(32, 64), (64, 32)]
    onevision = _data_args(image_aspect_ratio="anyres_max_9", image_grid_pinpoints="(1x1),...,(6x6)")
    check_model_flags(_model_args(mm_patch_merge_type="spatial_unpad", mm_newline_position="one_token"), onevision)


def test_fp16_without_a_gpu_is_refused():
    from llava.train.preflight import check_precision

    with pytest.raises(ValueError, match=r"--fp16 True needs a GPU.*pass --bf16 True, or neither"):
        check_precision(SimpleNamespace(fp16=True, use_cpu=False), accelerator=False)
    with pytest.raises(ValueError, match="--fp16 True needs a GPU"):
        check_precision(SimpleNamespace(fp16=True, use_cpu=True), accelerator=True)
    check_precision(SimpleNamespace(fp16=True, use_cpu=False), accelerator=True)
    check_precision(SimpleNamespace(fp16=False, bf16=True, use_cpu=True), accelerator=False)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """A 3-layer CLIP vision tower, and a full CLIP config (the vision part nested) of 5 layers."""
    from transformers import CLIPConfig

    from llava.testing.tiny import make_tiny_clip

    root = tmp_path_factory.mktemp("towers")
    clip = make_tiny_clip(root / "clip", num_layers=3)
    CLIPConfig(
        vision_config={"num_hidden_layers": 5, "hidden_size": 32, "num_attention_heads": 4}
    ).save_pretrained(root / "full")
    return SimpleNamespace(clip=clip, full=root / "full")


def test_select_layer_against_the_towers_depth(towers):
    from llava.train.preflight import check_vision_tower, vision_tower_depth

    assert vision_tower_depth(towers.clip) == 3 and vision_tower_depth(towers.full) == 5
    for layer in (-4, -2, -1, 0, 3, None):
        check_vision_tower(_model_args(vision_tower=str(towers.clip), mm_vision_select_layer=layer))
    for layer in (7, 4, -5):
        with pytest.raises(
            ValueError,
            match=rf"--mm_vision_select_layer {layer} is out of range .* 3 layers: valid are -4 \.\. 3",
        ):
            check_vision_tower(_model_args(vision_tower=str(towers.clip), mm_vision_select_layer=layer))
    check_vision_tower(_model_args(vision_tower=str(towers.full), mm_vision_select_layer=5))
    with pytest.raises(ValueError, match=r"valid are -6 \.\. 5"):
        check_vision_tower(_model_args(vision_tower=str(towers.full), mm_vision_select_layer=-7))
    # no tower: nothing to check
    check_vision_tower(_model_args(vision_tower=None, mm_vision_select_layer=99))
    with pytest.raises(
        ValueError, match=r"--vision_tower '/nonexistent/tower': its config could not be read"
    ):
        check_vision_tower(_model_args(vision_tower="/nonexistent/tower"))


def test_missing_files_are_named(tmp_path):
    from llava.train.preflight import check_files

    data = tmp_path / "data.json"
    data.write_text("[]")
    check_files(_model_args(), _data_args(data_path=str(data), image_folder=str(tmp_path)))
    with pytest.raises(ValueError, match="--data_path is required"):
        check_files(_model_args(), _data_args())
    with pytest.raises(FileNotFoundError, match=r"--data_path .*absent.json does not exist"):
        check_files(_model_args(), _data_args(data_path=str(tmp_path / "absent.json")))
    with pytest.raises(FileNotFoundError, match=r"--image_folder .*imgs is not a folder"):
        check_files(_model_args(), _data_args(data_path=str(data), image_folder=str(tmp_path / "imgs")))
    with pytest.raises(
        FileNotFoundError, match=r"--pretrain_mm_mlp_adapter .*mm_projector.bin does not exist"
    ):
        check_files(_model_args(pretrain_mm_mlp_adapter=str(tmp_path / "mm_projector.bin")),
                    _data_args(data_path=str(data)))  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        ("--mm_vision_select_layer 7", r"--mm_vision_select_layer 7 is out of range"),
        ("--mm_patch_merge_type bogus", r"--mm_patch_merge_type 'bogus' is not supported"),
        ("--fp16 True", r"--fp16 True needs a GPU"),
    ],
)
def test_train_checks_flags_before_loading(towers, tmp_path, monkeypatch, flags, message):
    """Before this check: an IndexError at step 1, a bogus value saved into config.json, a float16
    tower on the CPU. Now train() stops before loading the (here nonexistent) LLM."""
    from llava.train import cpu_distributed
    from llava.train.train import train

    monkeypatch.setattr(cpu_distributed, "has_accelerator", lambda: False)
    data = tmp_path / "data.json"
    data.write_text("[]")
    out = tmp_path / "out"
    argv = (
        f"--model_name_or_path /nonexistent --data_path {data} --vision_tower {towers.clip} "
        f"--output_dir {out} --report_to none {flags}"
    ).split()
    with pytest.raises(ValueError, match=message):
        train(argv=argv)
    assert not out.exists()
