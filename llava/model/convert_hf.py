"""Convert between the original LLaVA format and transformers' llava-hf formats (what vLLM serves).

    python -m llava.model.convert_hf --to-hf --model-path ./checkpoints/llava-v1.5-7b --output ./llava-1.5-7b-hf
    python -m llava.model.convert_hf --to-hf --model-path ./llava-onevision-qwen2-7b-ov --output ./ov-hf
    python -m llava.model.convert_hf --from-hf --model-path ./llava-1.5-7b-hf --output ./llava-v1.5-7b

``--to-hf`` loads any checkpoint ``load_pretrained_model`` understands (merged, LoRA with
``--model-base``, projector-only with ``--model-base``) and writes weights, config, tokenizer and
processor of the transformers class that reproduces it: ``--hf-format auto`` (the default) picks
``llava`` (``LlavaForConditionalGeneration``, LLaVA-1.5: merge type flat), ``llava_onevision``
(``LlavaOnevisionForConditionalGeneration``: image_aspect_ratio anyres_max_N) or ``llava_next``
(``LlavaNextForConditionalGeneration``: anyres + spatial_unpad) from the checkpoint's config;
``--hf-format llava_onevision`` also exports a plain anyres model as OneVision (several images per
sample, video); OneVision export refuses models whose video settings differ from transformers' fixed
pooling unless ``--any-video-pooling`` (for image-only models). ``--from-hf`` reads a llava-hf folder of
any of the three (its ``model_type``) and writes an original-format folder; the vision tower goes to
``<output>/vision_tower`` unless ``--vision-tower`` names one to point to. Both write to a temporary
folder and rename it into place. The conversions live in ``llava.model.hf_format`` (LLaVA-1.5) and
``llava.model.hf_next_format``.
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


HF_FORMAT_CHOICES = ("auto", "llava", "llava_next", "llava_onevision")


def _exporter(hf_format: str):
    from .hf_format import export_to_hf
    from .hf_next_format import export_to_llava_next, export_to_onevision

    return {
        "llava": export_to_hf,
        "llava_next": export_to_llava_next,
        "llava_onevision": export_to_onevision,
    }[hf_format]


def to_hf(
    model_path,
    output,
    model_base=None,
    dtype="auto",
    chat_template: str | None = None,
    hf_format: str = "auto",
    any_video_pooling: bool = False,
) -> Path:
    """Write the LLaVA checkpoint at ``model_path`` as a llava-hf folder at ``output``; ``hf_format``:
    auto (from the checkpoint's config), llava, llava_next or llava_onevision. ``any_video_pooling``:
    export as OneVision even where the model's video settings differ from transformers' fixed ones."""
    from .builder import load_pretrained_model
    from .hf_next_format import hf_format_for

    if hf_format not in HF_FORMAT_CHOICES:
        raise ValueError(f"--hf-format {hf_format!r}; valid: {', '.join(HF_FORMAT_CHOICES)}")

    resolve_folder(model_path, "--model-path")
    tokenizer, model, _, _ = load_pretrained_model(
        model_path, model_base, None, device_map="cpu", device="cpu", dtype=torch_dtype(dtype)
    )
    if not hasattr(model, "get_vision_tower") or model.get_vision_tower() is None:
        raise ValueError(
            f"--model-path {model_path} is not a LLaVA model (its config has no mm_vision_tower)"
        )
    if hf_format == "auto":
        hf_format = hf_format_for(model.config)
    export = _exporter(hf_format)
    extra = {"any_video": True} if any_video_pooling and hf_format == "llava_onevision" else {}
    with publish_dir(output) as tmp:
        export(model, tokenizer, tmp, chat_template=chat_template, **extra)
    logger.info("llava-hf model (%s) written to %s", hf_format, output)
    return Path(output)


def _repoint_tower(folder: Path, old: Path, new: Path) -> None:
    """Rewrite ``mm_vision_tower`` in ``folder/config.json`` from ``old`` to ``new`` (temp file + rename)."""
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("mm_vision_tower") == str(old):
        cfg["mm_vision_tower"] = str(new)
        atomic_write_text(cfg_file, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def from_hf(model_path, output, vision_tower: str | None = None, dtype="auto") -> Path:
    """Write the llava-hf folder at ``model_path`` (model_type llava, llava_next or llava_onevision) as an
    original-format LLaVA folder at ``output``."""
    from .hf_format import import_from_hf
    from .hf_next_format import import_from_hf_next, read_hf_format

    src = resolve_folder(model_path, "--model-path")
    try:
        kind = read_hf_format(src)
    except ValueError as err:
        raise ValueError(
            f"--model-path {err}; to convert an original-format checkpoint use --to-hf"
        ) from None
    convert = import_from_hf if kind == "llava" else import_from_hf_next
    final = Path(os.path.expanduser(str(output))).resolve()
    with publish_dir(final) as tmp:
        convert(src, tmp, vision_tower_name=vision_tower, dtype=torch_dtype(dtype))
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
        "--hf-format",
        choices=HF_FORMAT_CHOICES,
        default=None,
        help="--to-hf: the transformers class to write (default auto: llava for LLaVA-1.5, llava_onevision "
        "for anyres_max_N, llava_next for other anyres + spatial_unpad models)",
    )
    parser.add_argument(
        "--any-video-pooling",
        action="store_true",
        help="--to-hf as llava_onevision: export even where mm_newline_position / mm_spatial_pool_* differ "
        "from transformers' fixed video pooling (bilinear, stride 2, one newline); for image-only models",
    )
    parser.add_argument(
        "--dtype", type=str, default="auto", help="auto (as stored), float16, bfloat16, float32"
    )
    args = parser.parse_args(argv)
    if args.from_hf and (args.model_base or args.chat_template or args.hf_format or args.any_video_pooling):
        parser.error(
            "--model-base, --chat-template, --hf-format and --any-video-pooling apply to --to-hf only "
            "(--from-hf reads the folder's model_type)"
        )
    if args.to_hf and args.vision_tower:
        parser.error("--vision-tower applies to --from-hf only")
    return args


def main(argv=None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.to_hf:
        template = Path(args.chat_template).read_text() if args.chat_template else None
        return to_hf(
            args.model_path,
            args.output,
            args.model_base,
            args.dtype,
            template,
            args.hf_format or "auto",
            args.any_video_pooling,
        )
    return from_hf(args.model_path, args.output, args.vision_tower, args.dtype)


if __name__ == "__main__":
    main()
