"""All samples' input ids and labels in one memory-mapped array (written by llava.data.length_cache).

One integer per token: the token id, with the top bit set when the token is a target (its label
is the id, else IGNORE_INDEX), and all low bits set for an image placeholder (IMAGE_TOKEN_INDEX,
never a target). uint16 holds vocabularies below 32767 ids (LLaMA, Mistral), uint32 the others.
Sample k's tokens are `array[offsets[k]:offsets[k + 1]]`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.utils.atomic import atomic_path

_DTYPES = (np.uint16, np.uint32)


def _dtype_for(max_id: int):
    for dtype in _DTYPES:
        bits = np.iinfo(dtype).bits
        if max_id < (1 << (bits - 1)) - 1:
            return dtype
    raise ValueError(f"token id {max_id} is too large for the token cache")


def encode(ids: np.ndarray, targets: np.ndarray, dtype) -> np.ndarray:
    """Flagged integers for one sample (see the module docstring); `targets`: bool per token."""
    bits = np.iinfo(dtype).bits
    flag, image = 1 << (bits - 1), (1 << (bits - 1)) - 1
    out = np.where(ids == IMAGE_TOKEN_INDEX, image, ids).astype(np.int64)
    out |= np.where(targets, flag, 0)
    return out.astype(dtype)


def decode(flagged: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) LongTensors from a slice of the token array."""
    bits = np.iinfo(flagged.dtype).bits
    flag, image = 1 << (bits - 1), (1 << (bits - 1)) - 1
    raw = torch.from_numpy(flagged.astype(np.int64))
    ids = raw & image
    is_target = raw >= flag
    ids = torch.where(ids == image, torch.tensor(IMAGE_TOKEN_INDEX), ids)
    labels = torch.where(is_target, ids, torch.tensor(IGNORE_INDEX))
    return ids, labels


def write_tokens(path: Path, samples: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> list[int]:
    """Write the token array of `samples` ((ids, targets) or None for a failed one) to `path`
    atomically; returns the offsets (len(samples) + 1)."""
    max_id = max((int(s[0].max()) for s in samples if s is not None and s[0].size), default=0)
    dtype = _dtype_for(max_id)
    offsets = [0]
    for s in samples:
        offsets.append(offsets[-1] + (0 if s is None else len(s[0])))
    with atomic_path(path, suffix=".npy") as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(offsets[-1],))
        for k, s in enumerate(samples):
            if s is not None:
                array[offsets[k] : offsets[k + 1]] = encode(s[0], s[1], dtype)
        array.flush()
        del array
    return offsets


class TokenStore:
    """Read-only view of a token file; opens the memory map lazily in each process (so a
    DataLoader worker maps the file instead of receiving a pickled copy)."""

    def __init__(self, path: str | os.PathLike, offsets: Sequence[int]):
        self.path = str(path)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self._array = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def _tokens(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
            if self._array.shape != (int(self.offsets[-1]),):
                raise ValueError(
                    f"token cache {self.path} holds {self._array.shape[0]} tokens, its index says "
                    f"{int(self.offsets[-1])}; delete it to rebuild"
                )
        return self._array

    def get(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[k]), int(self.offsets[k + 1])
        return decode(np.asarray(self._tokens()[a:b]))
