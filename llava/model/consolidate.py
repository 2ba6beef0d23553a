"""Load a checkpoint and save it again in the current format (safetensors, one dtype).

    python -m llava.model.consolidate --src ~/weights/llava-7b --dst ~/weights/llava-7b_consolidate

Useful for checkpoints written by older versions or by DeepSpeed (``pytorch_model.bin``): the
model is loaded through transformers and this package's LLaVA classes and saved with
``save_pretrained``, so a checkpoint that does not load fails here, before a training or serving
run. Vision-tower weights are kept when the source has them. Written to a temporary folder and
renamed into place.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .weight_files import CheckpointFiles, publish_dir, torch_dtype

logger = logging.getLogger(__name__)


def _load(src: CheckpointFiles, dtype):
    from transformers import AutoModelForCausalLM

    from . import llava_class_for_config, register_auto_classes

    register_auto_classes()
    cfg_file = src.folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"--src {src.folder} has no config.json")
    cfg = json.loads(cfg_file.read_text())
    if not cfg.get("mm_vision_tower"):
        return AutoModelForCausalLM.from_pretrained(src.folder, dtype=dtype)
    # The tower is loaded (from mm_vision_tower) only to carry weights the checkpoint holds for it.
    has_tower = any(".vision_tower.vision_tower." in f".{k}" for k in src.keys())
    cls = llava_class_for_config(cfg)
    return cls.from_pretrained(src.folder, dtype=dtype, load_vision_tower=has_tower)


def consolidate_ckpt(src_path, dst_path, dtype: str = "float16") -> Path:
    """Re-save ``src_path`` (model + tokenizer) to ``dst_path`` in ``dtype`` (float16 as the original)."""
    from transformers import AutoTokenizer

    src = CheckpointFiles(src_path, "--src")
    logger.info("Loading model from %s", src.folder)
    model = _load(src, torch_dtype(dtype))
    tokenizer = None
    if any(
        (src.folder / n).is_file() for n in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")
    ):
        tokenizer = AutoTokenizer.from_pretrained(src.folder)
    else:
        logger.warning("%s has no tokenizer files; only the model is saved", src.folder)
    with publish_dir(dst_path) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    logger.info("Saved to %s", dst_path)
    return Path(dst_path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=str, required=True)
    parser.add_argument("--dst", type=str, required=True)
    parser.add_argument(
        "--dtype", type=str, default="float16", help="float16 (default), bfloat16, float32, auto"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    consolidate_ckpt(args.src, args.dst, args.dtype)


if __name__ == "__main__":
    main()
