"""Recover a model released as a delta: target = delta + base, tensor by tensor.

    python -m llava.model.apply_delta --base-model-path ~/weights/llama-7b \\
        --target-model-path ~/weights/llava-7b --delta-path liuhaotian/LLaVA-7b-delta-v0

Tensors the base does not have (projector, vision tower) are taken from the delta unchanged.
The input embeddings and ``lm_head`` of the delta may have more rows than the base's (tokens
added for LLaVA); the base is added to the rows they share. Any other shape difference is an
error, found before anything is written. The target gets the delta's config and tokenizer files
and its shard layout; it is written to a temporary folder and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from .weight_files import CheckpointFiles, copy_side_files, publish_dir, save_tensors

logger = logging.getLogger(__name__)

# Tensors whose first dimension is the vocabulary: LLaVA may have added tokens to them.
VOCAB_TENSORS = ("embed_tokens.weight", "lm_head.weight", "embed_in.weight", "embed_out.weight")


def _fits(name: str, own: tuple[int, ...], base: tuple[int, ...]) -> bool:
    if own == base:
        return True
    return (
        name.endswith(VOCAB_TENSORS) and len(own) == len(base) and own[0] >= base[0] and own[1:] == base[1:]
    )


def check_shapes(base: CheckpointFiles, other: CheckpointFiles) -> list[str]:
    """Descriptions of the shared tensors whose shapes do not fit (empty when all fit)."""
    bad = []
    for key in other.keys():
        if key in base:
            own, theirs = other.shape(key), base.shape(key)
            if not _fits(key, own, theirs):
                bad.append(f"{key}: {other.flag} {own} vs {base.flag} {theirs}")
    return bad


def _combine_tensor(own: torch.Tensor, base: torch.Tensor, sign: int) -> torch.Tensor:
    # float64 for float32 weights (so make_delta followed by apply_delta gives back the same
    # values), float32 for half-precision ones; the result keeps the stored dtype.
    work = torch.float64 if own.dtype in (torch.float32, torch.float64) else torch.float32
    out = own.to(work).clone()
    rows = base.shape[0]
    out[:rows] += sign * base.to(work)
    return out.to(own.dtype)


def combine_with_base(
    base_path: str | os.PathLike,
    other_path: str | os.PathLike,
    out_path: str | os.PathLike,
    sign: int,
    base_flag: str = "--base-model-path",
    other_flag: str = "--delta-path",
) -> Path:
    """Write ``other + sign * base`` (tensors of ``other``) to ``out_path``; returns the path."""
    base = CheckpointFiles(base_path, base_flag)
    other = CheckpointFiles(other_path, other_flag)
    bad = check_shapes(base, other)
    if bad:
        listed = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ValueError(
            f"{len(bad)} tensor(s) of {other_flag} {other.folder} do not fit {base_flag} {base.folder}:\n  {listed}\n"
            f"Check that {other_flag} was made from this base model (same architecture and size)."
        )
    extra = [k for k in other.keys() if k not in base]
    if extra:
        logger.info("%d tensors not in the base are copied unchanged (e.g. %s)", len(extra), extra[0])
    missing = [k for k in base.keys() if k not in other]
    if missing:
        logger.warning(
            "%d base tensors are not in %s and are left out (e.g. %s)", len(missing), other_flag, missing[0]
        )
    with publish_dir(out_path) as tmp:
        for shard in tqdm(other.shards(), desc="combining shards"):
            tensors = {}
            for key in other.keys_in(shard):
                own = other.get(key)
                tensors[key] = _combine_tensor(own, base.get(key), sign) if key in base else own.clone()
            save_tensors(tensors, tmp / shard)
            del tensors
        if other.index_name:
            shutil.copy2(other.folder / other.index_name, tmp / other.index_name)
        copy_side_files(other, tmp)
    return Path(out_path)


def apply_delta(base_model_path, target_model_path, delta_path) -> Path:
    """Write ``delta + base`` to ``target_model_path`` (the original's function name and arguments)."""
    logger.info("Applying delta %s to base %s", delta_path, base_model_path)
    out = combine_with_base(base_model_path, delta_path, target_model_path, +1)
    logger.info("Target model written to %s", out)
    return out


def delta_parser(description: str) -> argparse.ArgumentParser:
    """The three folders both delta tools take (the original's flag names and short forms)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base-model-path", "--base", type=str, required=True)
    parser.add_argument("--target-model-path", "--target", type=str, required=True)
    parser.add_argument("--delta-path", "--delta", type=str, required=True)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return delta_parser(__doc__.split("\n\n")[0]).parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    apply_delta(args.base_model_path, args.target_model_path, args.delta_path)


if __name__ == "__main__":
    main()
