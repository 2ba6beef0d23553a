"""Merge a LoRA checkpoint into its base model and save the merged LLaVA model.

    python scripts/merge_lora_weights.py --model-path ./checkpoints/llava-v1.5-13b-lora \
        --model-base lmsys/vicuna-13b-v1.5 --save-model-path ./checkpoints/llava-v1.5-13b-merged

Loads through `load_pretrained_model` (base + `non_lora_trainables.bin` + adapter, merged with
PEFT's `merge_and_unload`) in float32 on the CPU, then saves in `--dtype` (float16 by default, as
the original). `--model-base` may be left out when the adapter's `adapter_config.json` names its
base. The output is written to a temporary folder and renamed into place.
"""

import argparse
import logging

import torch

from llava.mm_utils import get_model_name_from_path
from llava.model.builder import detect_checkpoint_layout, load_pretrained_model
from llava.model.weight_files import publish_dir, torch_dtype

logger = logging.getLogger("merge_lora_weights")


def merge_lora(args):
    layout = detect_checkpoint_layout(args.model_path, args.model_base)
    if layout != "lora":
        logger.warning(
            "%s holds no adapter_config.json (layout %r): it is re-saved as loaded", args.model_path, layout
        )
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, _, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, device_map="cpu", device="cpu", dtype=torch.float32
    )
    dtype = torch_dtype(args.dtype)
    if dtype != "auto":
        model = model.to(dtype)
    with publish_dir(args.save_model_path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    logger.info("merged model saved to %s", args.save_model_path)
    return args.save_model_path


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=str, required=True)
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--save-model-path", type=str, required=True)
    parser.add_argument(
        "--dtype", type=str, default="float16", help="float16 (default), bfloat16, float32, auto"
    )
    return merge_lora(parser.parse_args(argv))


if __name__ == "__main__":
    main()
