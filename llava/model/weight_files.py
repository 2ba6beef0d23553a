"""Checkpoint folders tensor by tensor, and output folders that appear whole or not at all.

    ckpt = CheckpointFiles("path/to/model", flag="--base-model-path")
    ckpt.shape("lm_head.weight"); ckpt.get("lm_head.weight")    # one tensor, read lazily
    with publish_dir("out/model") as tmp:                      # write everything under tmp
        ...                                                     # on success tmp becomes out/model

Weights are read from ``model.safetensors`` / ``pytorch_model.bin`` or their sharded forms
(``*.index.json``) through memory maps, so a 7B checkpoint is never held in memory twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from llava.utils.atomic import atomic_path

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SINGLE = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
# Files of a checkpoint folder that belong to one training run, not to the model.
_RUN_FILES = ("trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # files from torch < 1.6 (no zip container) cannot be memory-mapped
        if "mmap" not in str(err):
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


class _Shard:
    """One weight file, opened lazily (safetensors through safe_open, .bin memory-mapped)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                self._st = safe_open(str(path), framework="pt", device="cpu")
                self._bin = None
            else:
                self._st, self._bin = None, _load_bin(path)
        except Exception as err:
            raise ValueError(
                f"{path}: cannot read the weights ({type(err).__name__}: {err}); the file may be truncated "
                "or corrupt: download or save it again"
            ) from err

    def keys(self) -> list[str]:
        return list(self._st.keys()) if self._st is not None else list(self._bin)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._st is not None:
            return tuple(self._st.get_slice(key).get_shape())
        return tuple(self._bin[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self._st.get_tensor(key) if self._st is not None else self._bin[key]


def resolve_folder(path: str | os.PathLike, flag: str) -> Path:
    """A local folder, or the local snapshot of a hub repo name (``org/name``) when it can be fetched."""
    local = Path(os.path.expanduser(str(path)))
    if local.is_dir():
        return local
    reason = "no such folder"
    if str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(path)))
        except Exception as err:  # offline, no such repo, no access
            reason = f"no such folder, and not downloadable from the hub ({type(err).__name__})"
    raise FileNotFoundError(f"{flag} {path}: {reason} (check the path)")


class CheckpointFiles:
    """The weights of a checkpoint folder (or hub repo); ``flag`` names it in error messages."""

    def __init__(self, folder: str | os.PathLike, flag: str = "checkpoint"):
        self.folder = resolve_folder(folder, flag)
        self.flag = flag
        self.index_name: str | None = None
        self._shards: dict[str, _Shard] = {}
        for name in WEIGHT_INDEXES:
            if (self.folder / name).is_file():
                self.index_name = name
                self.weight_map = self._read_index(self.folder / name)
                break
        else:
            single = next((n for n in WEIGHT_SINGLE if (self.folder / n).is_file()), None)
            if single is None:
                raise FileNotFoundError(
                    f"{flag} {self.folder} holds no model weights (expected one of "
                    f"{', '.join(WEIGHT_SINGLE + WEIGHT_INDEXES)})"
                )
            self.weight_map = {k: single for k in self._open(single).keys()}
        for shard in self.shards():
            if not (self.folder / shard).is_file():
                raise FileNotFoundError(
                    f"{flag} {self.folder}: shard {shard} listed in {self.index_name} is missing"
                )

    def _read_index(self, path: Path) -> dict[str, str]:
        try:
            return dict(json.loads(path.read_text())["weight_map"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a valid weight index ({err}); save the checkpoint again") from err

    def _open(self, shard: str) -> _Shard:
        if shard not in self._shards:
            self._shards[shard] = _Shard(self.folder / shard)
        return self._shards[shard]

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def shards(self) -> list[str]:
        """The weight files, in the order the index first mentions them."""
        return list(dict.fromkeys(self.weight_map.values()))

    def keys_in(self, shard: str) -> list[str]:
        return [k for k, f in self.weight_map.items() if f == shard]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._open(self.weight_map[key]).shape(key)

    def get(self, key: str) -> torch.Tensor:
        shard = self._open(self.weight_map[key])
        if key not in shard.keys():
            raise ValueError(
                f"{self.flag} {self.folder}: {key} is listed in {self.index_name} but not in {shard.path}"
            )
        return shard.get(key)

    def side_files(self) -> list[Path]:
        """Top-level files that are not weights (config, generation config, tokenizer, templates)."""
        return [
            p
            for p in sorted(self.folder.iterdir())
            if p.is_file()
            and not p.name.endswith(WEIGHT_SUFFIXES)
            and p.name not in WEIGHT_INDEXES
            and p.name not in _RUN_FILES
            and not p.name.startswith(".")
        ]


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``tensors`` as safetensors (``.safetensors`` suffix) or a torch pickle (anything else)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(tensors, str(path))


def save_torch_file(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        torch.save(obj, str(tmp))
    return Path(os.path.expanduser(str(path)))


def _is_weight_file(name: str) -> bool:
    return name in WEIGHT_INDEXES or (
        name.startswith(("model", "pytorch_model")) and name.endswith((".safetensors", ".bin"))
    )


def _move_into(tmp: Path, dest: Path) -> None:
    """Move everything in ``tmp`` into the existing folder ``dest`` (same-named entries replaced).

    Weight files of an earlier save that the new one does not have are removed, as
    ``save_pretrained`` does, so a stale shard is never mixed with new ones.
    """
    new_names = {p.name for p in tmp.iterdir()}
    if any(_is_weight_file(n) for n in new_names):
        for old in dest.iterdir():
            if old.is_file() and _is_weight_file(old.name) and old.name not in new_names:
                old.unlink()
    for entry in tmp.iterdir():
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()


@contextlib.contextmanager
def publish_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``dest``; on success it becomes ``dest``.

    On any error the temporary folder is removed and ``dest`` is left as it was. When ``dest``
    already holds files, the new files are moved into it (replacing same-named ones).
    """
    dest = Path(os.path.expanduser(str(dest)))
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"output path {dest} exists and is not a folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        if dest.exists():
            _move_into(tmp, dest)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_side_files(src: CheckpointFiles, out_dir: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy ``src``'s config/tokenizer files into ``out_dir``; returns their names."""
    names = []
    for path in src.side_files():
        if path.name not in skip:
            shutil.copy2(path, out_dir / path.name)
            names.append(path.name)
    return names


def torch_dtype(name: str | None):
    """``"float16"`` -> torch.float16; ``"auto"`` and None pass through as ``"auto"``."""
    if name in (None, "auto"):
        return "auto"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"--dtype {name!r} is not a floating-point torch dtype (use float16, bfloat16, float32 or auto)"
        )
    return dtype
