"""Checkpoint helpers: read a subset of a saved model's tensors, load projector weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")


def resolve_file(path: str | os.PathLike, filename: str, **hub_kwargs) -> str | None:
    """Local path of ``filename`` in the folder or hub repo ``path``; None if it is not there."""
    local = Path(path) / filename
    if Path(path).is_dir():
        return str(local) if local.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        allowed = {
            k: v for k, v in hub_kwargs.items() if k in ("revision", "cache_dir", "token", "subfolder")
        }
        return hf_hub_download(str(path), filename, **allowed)
    except Exception:  # not on the hub / offline / no such file: treated as absent
        return None


def load_tensor_file(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` or ``.bin`` file, on the CPU (``.bin`` read with weights_only)."""
    if str(file).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(str(file), map_location="cpu", weights_only=True)


def read_checkpoint_tensors(path: str | os.PathLike, prefix: str, **hub_kwargs) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint at ``path`` whose key starts with ``prefix`` (prefix removed).

    Reads only the shards that hold such keys. Returns {} when the checkpoint has none.
    """
    for index_name in _INDEXES:
        index_file = resolve_file(path, index_name, **hub_kwargs)
        if index_file is None:
            continue
        weight_map = json.loads(Path(index_file).read_text())["weight_map"]
        shards = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            shard_file = resolve_file(path, shard, **hub_kwargs)
            if shard_file is None:
                raise FileNotFoundError(f"checkpoint {path}: shard {shard} listed in {index_name} is missing")
            out.update(
                {k[len(prefix) :]: v for k, v in load_tensor_file(shard_file).items() if k.startswith(prefix)}
            )
        return out
    for name in _SINGLE:
        file = resolve_file(path, name, **hub_kwargs)
        if file is not None:
            return {k[len(prefix) :]: v for k, v in load_tensor_file(file).items() if k.startswith(prefix)}
    return {}


def _projector_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    marked = {k.split("mm_projector.")[-1]: v for k, v in state_dict.items() if "mm_projector." in k}
    return marked if marked else dict(state_dict)


def load_mm_projector_state(model, state_dict: dict[str, torch.Tensor]) -> None:
    """Load projector weights (e.g. ``mm_projector.bin`` of stage 1) into ``model``'s projector.

    Keys may carry any prefix ending in ``mm_projector.`` (``model.mm_projector.0.weight``) or none
    (``0.weight``); other keys are ignored, except ``image_newline`` which is loaded when the model
    has one. Shapes are checked first, with an error that names the parameter and the flag to fix.
    """
    inner = model.get_model()
    projector = getattr(inner, "mm_projector", None)
    if projector is None:
        raise ValueError(
            "the model has no mm_projector: call model.get_model().initialize_vision_modules(model_args) first"
        )
    incoming = _projector_keys(state_dict)
    expected = projector.state_dict()
    missing = sorted(set(expected) - set(incoming))
    unexpected = sorted(set(incoming) - set(expected))
    ptype = getattr(model.config, "mm_projector_type", "linear")
    if missing or unexpected:
        raise ValueError(
            f"projector weights do not fit mm_projector_type {ptype!r}: missing {missing}, unexpected "
            f"{unexpected}. Set --mm_projector_type to the type the adapter was trained with "
            "(keys 0.*, 2.* mean mlp2x_gelu; weight/bias alone mean linear)."
        )
    for key, want in expected.items():
        got = incoming[key]
        if tuple(got.shape) != tuple(want.shape):
            first_layer = key in ("weight", "0.weight")
            if first_layer and got.ndim == 2 and want.ndim == 2 and got.shape[1] != want.shape[1]:
                hint = (
                    f"its input width is the vision feature size (mm_hidden_size {want.shape[1]}): check "
                    "--vision_tower and --mm_vision_select_feature"
                )
            else:
                hint = (
                    "its output width is the LLM hidden size: the adapter was trained for another "
                    "--model_name_or_path"
                )
            raise ValueError(
                f"projector parameter mm_projector.{key}: expected shape {tuple(want.shape)}, got "
                f"{tuple(got.shape)}; {hint}"
            )
    projector.load_state_dict(
        {k: v.to(dtype=expected[k].dtype, device=expected[k].device) for k, v in incoming.items()}
    )
    newline = next((v for k, v in state_dict.items() if k.split(".")[-1] == "image_newline"), None)
    if newline is not None and getattr(inner, "image_newline", None) is not None:
        with torch.no_grad():
            inner.image_newline.copy_(newline.to(inner.image_newline))


# The original checkpoints (and transformers < 5) name the tower's weights ``...vision_model.<rest>``;
# transformers 5 vision models have no ``vision_model`` level. Saved files keep the original names.
_TOWER_INFIX = "vision_model."


def to_original_tower_layout(state_dict: dict, tower_prefix: str) -> dict:
    """Insert ``vision_model.`` after ``tower_prefix`` where it is missing (for saving)."""
    out = {}
    for key, value in state_dict.items():
        rest = key[len(tower_prefix) :]
        if key.startswith(tower_prefix) and not rest.startswith(_TOWER_INFIX):
            key = f"{tower_prefix}{_TOWER_INFIX}{rest}"
        out[key] = value
    return out


def fit_tower_keys(stored: dict, module_keys) -> dict:
    """Rename stored tower keys (with or without ``vision_model.``) to the loaded module's layout: the
    spelling under which most of them name a weight of the module (so a stray key stays the only misfit)."""
    module_keys = set(module_keys)
    candidates = (
        stored,
        {k.removeprefix(_TOWER_INFIX): v for k, v in stored.items()},
        {(k if k.startswith(_TOWER_INFIX) else _TOWER_INFIX + k): v for k, v in stored.items()},
    )
    return max(candidates, key=lambda c: len(module_keys.intersection(c)))
