"""Training tokens/s of a small LLaVA on the CPU, packed vs padded.

    .venv/bin/python bench/bench_train_tokens.py [--passes 3] [--threads 1]

Model (random, float32): LLaMA-shaped LLM, 4 layers, hidden 256, vocabulary 32000, and a CLIP
tower of 64 image tokens (96 px, patch 12), mlp2x_gelu projector; AdamW on the LLM and projector,
the tower frozen. Data: one global batch of 8 x 8 mix665k-like samples (bench_padding.py's
lengths with the text scaled to a 256-token window and 64 image tokens), random ids and pixels.
Each pass runs the 8 micro-batches (forward, backward, optimizer step each), padded as the
original groups them (--group_by_modality_length) or packed (--packing True) with SDPA / eager
(rows, block-diagonal mask) and torch_varlen (samples end to end; on the CPU its reference path
runs SDPA per sample). Tokens/s counts real tokens (image tokens included); best of --passes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="padded:sdpa,packed:sdpa,packed:eager,packed:torch_varlen")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bench_gpu_stage2 import (
        SHAPES,
        TOWER,
        build_model,
        computed_tokens,
        global_batch,
        make_instances,
        micro_batches,
        run_mode,
    )

    from llava.data.collator import DataCollatorForSupervisedDataset
    from llava.data.packing import collate_packed
    from llava.model.varlen_attention import register_varlen_attention

    register_varlen_attention()
    shape, tower = SHAPES["small"], TOWER["small"]
    n_img, max_len, world = (tower["image"] // tower["patch"]) ** 2, shape["max_len"], 8
    lengths = global_batch(8 * world, max_len, n_img)
    instances = make_instances(lengths, n_img, tower["image"], shape["vocab"])
    sizes = [min(abs(x), max_len) for x in lengths]
    tok = type("Tok", (), {"pad_token_id": 0, "model_max_length": max_len})()
    padded = DataCollatorForSupervisedDataset(tokenizer=tok)
    model = build_model(shape, tower, shape["layers"], torch.device("cpu"), torch.float32).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    print(
        f"{len(lengths)} samples, {sum(sizes)} real tokens, {world} micro-batches; LLM {shape['layers']} layers "
        f"hidden {shape['hidden']}, {n_img} image tokens, rows of {max_len}; torch threads {args.threads}"
    )
    rows = []
    for mode in args.modes.split(","):
        batching, attn = mode.split(":")
        model.set_attn_implementation(attn)
        packed = batching == "packed"
        groups = micro_batches(lengths, world, max_len, packed, "flat" if attn == "torch_varlen" else "rows")
        items = [[instances[i] for i in g] for g in groups]
        batches = [collate_packed(x, 0, max_len, n_img) if packed else padded(x) for x in items]
        best = min(
            run_mode(model, optimizer, batches, torch.device("cpu"), warmup=1)[0] for _ in range(args.passes)
        )
        flat = attn == "torch_varlen"
        rows.append(
            (mode, sum(sizes) / best, sum(sizes) / computed_tokens(groups, sizes, max_len, packed, flat))
        )
    base = rows[0][1]
    print(f"\n{'mode':22s} {'tokens/s':>9s} {'x padded':>9s} {'real/computed':>14s}")
    for mode, tps, eff in rows:
        print(f"{mode:22s} {tps:9.0f} {tps / base:9.2f} {eff:14.1%}")


if __name__ == "__main__":
    main()
