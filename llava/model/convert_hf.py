"""Convert between the original LLaVA format and transformers' llava-hf format (what vLLM serves).

    python -m llava.model.convert_hf --to-hf --model-path ./checkpoints/llava-v1.5-7b --output ./llava-1.5-7b-hf
    python -m llava.model.convert_hf --from-hf --model-path ./llava-1.5-7b-hf --output ./llava-v1.5-7b

``--to-hf`` loads any checkpoint ``load_pretrained_model`` understands (merged, LoRA with
``--model-base``, projector-only with ``--model-base``) and writes ``LlavaForConditionalGeneration``
weights, config, tokenizer and processor. ``--from-hf`` writes an original-format folder; the
vision tower goes to ``<output>/vision_tower`` unless ``--vision-tower`` names one to point to.
Both write to a temporary folder and rename it into place. The conversion itself lives in
``llava.model.hf_format``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from llava.utils.atomic import atomic_write_text

from .weight_files import publish_dir, resolve_folder, torch_dtype

logger = logging.getLogger(__name__)


def to_hf(model_path, output, model_base=None, dtype="auto", chat_template: str | None = None) -> Path:
    """Write the LLaVA checkpoint at ``model_path`` as a llava-hf folder at ``output``."""
    from .builder import load_pretrained_model
    from .hf_format import export_to_hf

    resolve_folder(model_path, "--model-path")
    tokenizer, model, _, _ = load_pretrained_model(
        model_path, model_base, None, device_map="cpu", device="cpu", dtype=torch_dtype(dtype)
    )
    if not hasattr(model, "get_vision_tower") or model.get_vision_tower() is None:
        raise ValueError(
            f"--model-path {model_path} is not a LLaVA model (its config has no mm_vision_tower)"
        )
    with publish_dir(output) as tmp:
        export_to_hf(model, tokenizer, tmp, chat_template=chat_template)
    logger.info("llava-hf model written to %s", output)
    return Path(output)


def _repoint_tower(folder: Path, old: Path, new: Path) -> None:
    """Rewrite ``mm_vision_tower`` in ``folder/config.json`` from ``old`` to ``new`` (temp file + rename)."""
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("mm_vision_tower") == str(old):
        cfg["mm_vision_tower"] = str(new)
        atomic_write_text(cfg_file, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def from_hf(model_path, output, vision_tower: str | None = None, dtype="auto") -> Path:
    """Write the llava-hf folder at ``model_path`` as an original-format LLaVA folder at ``output``."""
    from .hf_format import import_from_hf

    src = resolve_folder(model_path, "--model-path")
    cfg_file = src / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    if cfg.get("model_type") != "llava" or "text_config" not in cfg:
        raise ValueError(
            f"--model-path {model_path} is not a llava-hf folder (config.json needs model_type 'llava' and a "
            "text_config); to convert an original-format checkpoint use --to-hf"
        )
    final = Path(os.path.expanduser(str(output))).resolve()
    with publish_dir(final) as tmp:
        import_from_hf(src, tmp, vision_tower_name=vision_tower, dtype=torch_dtype(dtype))
        if vision_tower is None:  # import_from_hf points the config at the temporary folder
            _repoint_tower(tmp, (tmp / "vision_tower").resolve(), final / "vision_tower")
    logger.info("original-format LLaVA model written to %s", final)
    return final


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to-hf", action="store_true", help="original LLaVA format -> llava-hf")
    direction.add_argument("--from-hf", action="store_true", help="llava-hf -> original LLaVA format")
    parser.add_argument("--model-path", type=str, required=True)
    parser.add_argument(
        "--model-base", type=str, default=None, help="--to-hf: base of a LoRA/projector checkpoint"
    )
    parser.add_argument("--output", type=str, required=True)
    parser.add_argument("--vision-tower", type=str, default=None, help="--from-hf: mm_vision_tower to write")
    parser.add_argument(
        "--chat-template", type=str, default=None, help="--to-hf: a Jinja file for the processor"
    )
    parser.add_argument(
        "--dtype", type=str, default="auto", help="auto (as stored), float16, bfloat16, float32"
    )
    args = parser.parse_args(argv)
    if args.from_hf and (args.model_base or args.chat_template):
        parser.error("--model-base and --chat-template apply to --to-hf only")
    if args.to_hf and args.vision_tower:
        parser.error("--vision-tower applies to --from-hf only")
    return args


def main(argv=None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.to_hf:
        template = Path(args.chat_template).read_text() if args.chat_template else None
        return to_hf(args.model_path, args.output, args.model_base, args.dtype, template)
    return from_hf(args.model_path, args.output, args.vision_tower, args.dtype)


if __name__ == "__main__":
    main()
