"""Extract the projector weights of a LLaVA checkpoint into an `mm_projector.bin`.

    python scripts/extract_mm_projector.py --model-path ./checkpoints/llava-v1.5-7b --output mm_projector.bin

Reads a merged checkpoint (single or sharded, safetensors or .bin: only the files holding the
projector), a LoRA checkpoint (`non_lora_trainables.bin`) or a stage-1 folder (`mm_projector.bin`).
Keys are written as `model.mm_projector.*`, the form `--pretrain_mm_mlp_adapter` and
`load_pretrained_model` read; `model.embed_tokens.weight` is added when the model uses
im_start/im_end tokens (`mm_use_im_start_end`) or `--with-embed-tokens` is given.
The output is written to a temporary file and renamed into place.
"""

import argparse
import json
import logging
from pathlib import Path

from llava.model.checkpoint import load_tensor_file
from llava.model.weight_files import CheckpointFiles, resolve_folder, save_torch_file

logger = logging.getLogger("extract_mm_projector")
PROJECTOR_KEYS = ("mm_projector.", "vision_resampler.")
EMBED_KEYS = ("embed_tokens.", "embed_in.", "transformer.wte.")
LORA_PREFIX = "base_model.model."


def _wanted(key: str, with_embed: bool) -> bool:
    return any(k in key for k in PROJECTOR_KEYS) or (with_embed and any(k in key for k in EMBED_KEYS))


def extract_mm_projector(model_path, output, with_embed_tokens=None) -> dict:
    """Write and return `{model.mm_projector.*: tensor}` from the checkpoint at `model_path`."""
    folder = resolve_folder(model_path, "--model-path")
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    with_embed = bool(cfg.get("mm_use_im_start_end")) if with_embed_tokens is None else with_embed_tokens
    state = {}
    for name in ("mm_projector.bin", "non_lora_trainables.bin"):
        if (folder / name).is_file():
            tensors = load_tensor_file(folder / name)
            state = {k.removeprefix(LORA_PREFIX): v for k, v in tensors.items() if _wanted(k, with_embed)}
            source = folder / name
            break
    else:
        ckpt = CheckpointFiles(folder, "--model-path")
        state = {k: ckpt.get(k) for k in ckpt.keys() if _wanted(k, with_embed)}
        source = folder
    if not any("mm_projector." in k for k in state):
        raise ValueError(
            f"--model-path {model_path}: no mm_projector weights found in {source} "
            "(is it a LLaVA checkpoint? a plain LLM has no projector)"
        )
    save_torch_file({k: v.clone() for k, v in state.items()}, output)
    logger.info("%d tensors (%s) written to %s", len(state), ", ".join(sorted(state)), output)
    return state


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", "--model_name_or_path", dest="model_path", type=str, required=True)
    parser.add_argument("--output", type=str, required=True)
    parser.add_argument(
        "--with-embed-tokens",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write the input embeddings (default: when config.json says mm_use_im_start_end)",
    )
    args = parser.parse_args(argv)
    extract_mm_projector(args.model_path, Path(args.output), args.with_embed_tokens)
    return args.output


if __name__ == "__main__":
    main()
