"""Checks run right after the command line is parsed, before minutes go into loading models.

- `--report_to wandb` (the published scripts' setting) without wandb installed, or without a W&B
  key where wandb cannot ask for one (no terminal): wandb would fail only when training begins;
- each model and data flag against the values the code supports (`check_model_flags`): --version,
  --mm_projector_type, --mm_patch_merge_type, --mm_vision_select_feature, --image_aspect_ratio,
  --image_grid_pinpoints; the files named by --data_path, --image_folder and
  --pretrain_mm_mlp_adapter; --fp16 without a GPU (`check_precision`);
- --mm_vision_select_layer against the depth of the --vision_tower, read from its config.json
  (`check_vision_tower`);
- --streaming against the kind of --data_path (parquet / arrow shards only: `check_streaming`).

Every error names the flag and the valid values.
"""

from __future__ import annotations

import netrc
import os
import sys
from urllib.parse import urlparse

_WANDB_NO_KEY_MODES = ("offline", "disabled", "dryrun")


def _wandb_key_in_netrc(host: str) -> bool:
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def check_wandb(training_args, interactive: bool | None = None) -> None:
    report_to = training_args.report_to or []
    if "wandb" not in (report_to if isinstance(report_to, list) else [report_to]):
        return
    try:
        import wandb  # noqa: F401
    except ImportError as err:
        raise ValueError(
            "--report_to wandb: wandb is not installed (pip install wandb, or the [train] extra); "
            "pass --report_to none to train without it"
        ) from err
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in _WANDB_NO_KEY_MODES:
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if _wandb_key_in_netrc(host):
        return
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if not interactive:
        raise ValueError(
            f"--report_to wandb: no W&B key for {host} (WANDB_API_KEY, or `wandb login` once) and no "
            "terminal for wandb to ask for one; set WANDB_MODE=offline to log locally, or pass "
            "--report_to none"
        )


# ------------------------------------------------------------------------------ model and data flags
def check_model_flags(model_args, data_args) -> None:
    """Each flag against the registry or list of values the model and data code accept."""
    from types import SimpleNamespace

    from llava.conversation import get_conv_template
    from llava.data.sample_format import template_for_version
    from llava.images.grid import (
        check_image_aspect_ratio,
        check_newline_position,
        check_pool_mode,
        check_pool_stride,
        is_anyres,
        parse_grid_pinpoints,
    )
    from llava.model.image_features import MERGE_TYPES
    from llava.model.multimodal_encoder.vision_tower import SELECT_FEATURES
    from llava.model.multimodal_projector.builder import build_vision_projector

    get_conv_template(template_for_version(model_args.version))  # names --version and the valid ones
    # The registry itself decides (its error names --mm_projector_type and the valid names).
    build_vision_projector(
        SimpleNamespace(mm_projector_type=model_args.mm_projector_type, mm_hidden_size=1, hidden_size=1)
    )
    merge = model_args.mm_patch_merge_type
    if merge and merge not in MERGE_TYPES:
        raise ValueError(f"--mm_patch_merge_type {merge!r} is not supported; valid: {', '.join(MERGE_TYPES)}")
    feature = model_args.mm_vision_select_feature
    if feature and feature not in SELECT_FEATURES:
        raise ValueError(
            f"--mm_vision_select_feature {feature!r} is not supported; valid: {', '.join(SELECT_FEATURES)}"
        )
    mode = data_args.image_aspect_ratio
    try:
        check_image_aspect_ratio(mode)
    except ValueError as err:
        raise ValueError(f"--image_aspect_ratio: {err}") from None
    if data_args.image_grid_pinpoints not in (None, ""):
        try:
            parse_grid_pinpoints(data_args.image_grid_pinpoints, crop_size=336)  # the size only scales tiles
        except ValueError as err:
            raise ValueError(f"--image_grid_pinpoints: {err}") from None
    elif is_anyres(mode):
        raise ValueError(
            f"--image_aspect_ratio {mode} needs --image_grid_pinpoints, the tile grid's resolutions "
            "as (width, height) pairs, e.g. '[(336, 672), (672, 336), (672, 672)]', or a tile range '(1x1),...,(6x6)'"
        )
    for flag, check in (
        ("mm_newline_position", check_newline_position),
        ("mm_spatial_pool_mode", check_pool_mode),
        ("mm_spatial_pool_stride", check_pool_stride),
    ):
        value = getattr(model_args, flag, None)
        if value is None:  # the checkpoint's value, else LLaVA-NeXT's training default
            continue
        try:
            check(value)
        except ValueError as err:
            raise ValueError(f"--{flag}: {err}") from None
    if (
        int(getattr(data_args, "frames_upbound", 0) or 0) < 0
        or int(getattr(data_args, "video_fps", 1) or 0) < 1
    ):
        raise ValueError("--frames_upbound must be >= 0 (0: no bound) and --video_fps >= 1")


def check_files(model_args, data_args) -> None:
    """The files the run reads after the model is loaded exist (a typo costs no loading time)."""
    data_path = data_args.data_path
    if not data_path:
        raise ValueError(
            "--data_path is required: the training JSON (list) or JSON-lines file, parquet / arrow shards "
            "(a file, folder or glob), a save_to_disk folder or a YAML mixture"
        )
    import glob

    if not glob.has_magic(data_path) and not os.path.exists(data_path):
        raise FileNotFoundError(f"--data_path {data_path} does not exist")
    for flag in ("image_folder", "video_folder"):
        folder = getattr(data_args, flag, None)
        if folder and not os.path.isdir(folder):
            raise FileNotFoundError(f"--{flag} {folder} is not a folder")
    adapter = model_args.pretrain_mm_mlp_adapter
    if adapter and not os.path.isfile(adapter):
        raise FileNotFoundError(
            f"--pretrain_mm_mlp_adapter {adapter} does not exist (stage 1 writes mm_projector.bin into "
            "its --output_dir)"
        )


def check_precision(training_args, accelerator: bool | None = None) -> None:
    """--fp16 needs a GPU: on the CPU the tower would be cast to float16, which does not train there."""
    if not getattr(training_args, "fp16", False):
        return
    if accelerator is None:
        from llava.train.cpu_distributed import has_accelerator

        accelerator = has_accelerator()
    if not accelerator or getattr(training_args, "use_cpu", False):
        raise ValueError(
            "--fp16 True needs a GPU: this run is on the CPU, where float16 does not train "
            "(the tower is cast to float16, and CPU autocast is bfloat16 only); pass --bf16 True, or "
            "neither for float32"
        )


# ------------------------------------------------------------------------------ the vision tower
def vision_tower_depth(name: str) -> int:
    """num_hidden_layers of the vision encoder in the config of `name` (a folder or hub name); a CLIP,
    SigLIP or llava-hf config nests it under vision_config."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(name))
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"--vision_tower {str(name)!r}: its config could not be read ({type(err).__name__}: "
            f"{str(err)[:300]}). Give a local folder of a CLIP or SigLIP vision model (config.json + "
            "weights + preprocessor_config.json) or a hub name present in the local cache"
        ) from err
    vision = getattr(cfg, "vision_config", None) or cfg
    depth = getattr(vision, "num_hidden_layers", None)
    if not isinstance(depth, int):
        raise ValueError(f"--vision_tower {str(name)!r}: its config names no num_hidden_layers")
    return depth


def check_vision_tower(model_args) -> None:
    """--mm_vision_select_layer indexes the tower's hidden_states, which has num_hidden_layers + 1
    entries (the embeddings, then each layer): valid are -(depth + 1) .. depth."""
    if not model_args.vision_tower:
        return
    depth = vision_tower_depth(model_args.vision_tower)
    layer = model_args.mm_vision_select_layer
    layer = -2 if layer is None else int(layer)  # the tower's own default
    if not -(depth + 1) <= layer <= depth:
        raise ValueError(
            f"--mm_vision_select_layer {layer} is out of range for --vision_tower {model_args.vision_tower} "
            f"with {depth} layers: valid are -{depth + 1} .. {depth} (its hidden states: 0 the embeddings, "
            f"1 .. {depth} the layers; negative counts from the last, -1 the last, -2 the one before, as "
            "LLaVA-1.5 uses)"
        )


def preflight(data_args, training_args, model_args=None) -> None:
    """Every check above, cheapest first; `model_args` None skips the model and file checks."""
    check_wandb(training_args)
    check_precision(training_args)
    if model_args is not None:
        check_model_flags(model_args, data_args)
        check_files(model_args, data_args)
        check_vision_tower(model_args)
    check_streaming(data_args, training_args)


def check_streaming(data_args, training_args) -> None:
    """--streaming reads parquet / arrow shards only; its window must hold at least one row."""
    if not getattr(data_args, "streaming", False):
        return
    if data_args.streaming_window_rows < 1:
        raise ValueError(f"--streaming_window_rows {data_args.streaming_window_rows} must be at least 1")
    if data_args.data_path:
        from llava.data.streaming import shard_files

        shard_files(data_args.data_path)
