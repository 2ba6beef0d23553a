"""Make a delta of a model against its base: delta = target - base, tensor by tensor.

    python -m llava.model.make_delta --base-model-path ~/weights/llama-7b \\
        --target-model-path ~/weights/llava-7b --delta-path ~/weights/llava-7b-delta [--hub-repo-id org/name]

The inverse of ``llava.model.apply_delta``: tensors the base lacks are stored unchanged, the
rows of the vocabulary tensors shared with the base are differenced. The delta is written to a
temporary folder and renamed into place; with ``--hub-repo-id`` it is then uploaded.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .apply_delta import combine_with_base, delta_parser

logger = logging.getLogger(__name__)


def make_delta(base_model_path, target_model_path, delta_path, hub_repo_id=None) -> Path:
    """Write ``target - base`` to ``delta_path`` (the original's function name and arguments)."""
    logger.info("Computing delta of %s against %s", target_model_path, base_model_path)
    out = combine_with_base(
        base_model_path, target_model_path, delta_path, -1, other_flag="--target-model-path"
    )
    logger.info("Delta written to %s", out)
    if hub_repo_id:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(hub_repo_id, exist_ok=True)
        api.upload_folder(repo_id=hub_repo_id, folder_path=str(out))
        logger.info("Delta uploaded to %s", hub_repo_id)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = delta_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--hub-repo-id", type=str, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    make_delta(args.base_model_path, args.target_model_path, args.delta_path, args.hub_repo_id)


if __name__ == "__main__":
    main()
