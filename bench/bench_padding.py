"""Padding efficiency (real tokens / tokens computed) of three batchings at global batch 128.

    .venv/bin/python bench/bench_padding.py [--samples 20000] [--per-device 16 --world 8]
    .venv/bin/python bench/bench_padding.py --mixture [--model-max-length 32768 --per-device 4]

--mixture: a LLaVA-OneVision-like mixture instead (text-only, one anyres_max_9 image, 2-6 images,
a video of 8-32 frames), each sample's tokens counted exactly as training counts them
(`SampleFormat.visual_tokens`: SigLIP-so400m/14 at 384 px, 729 tokens per crop, spatial_unpad with
image_newline, videos pooled 2x2 bilinear with one newline token).

Lengths are the tokens the LLM sees (576 image tokens + the v1 prompt's text tokens, cut at
--model-max-length 2048) of mix665k-like samples (bench_validate.make_data: multi-turn
LLaVA-Instruct conversations, long descriptions, many-question VQA / region samples, long
text-only ShareGPT chats), counted with the project's tokenisation and the LLaMA-2 tokenizer.

- random:            a seeded permutation, per-device batches padded to their longest sample;
- modality-length:   the original's `--group_by_modality_length` sampler (padded);
- packing:           `--packing True`: rows of <= 2048 tokens per megabatch (first-fit-decreasing),
                     a micro-batch is [rows, widest row] (SDPA/eager/flex) or the rows laid end to end
                     (flash-attention varlen / torch varlen: nothing computed but real tokens).

"computed" counts every position a linear layer processes. "step" additionally charges each
optimizer step for the slowest of its `world` micro-batches (data-parallel ranks wait for it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

IMAGE_TOKENS = 576


def mix_lengths(n: int, max_len: int, seed: int = 0, image_tokens: int = IMAGE_TOKENS) -> list[int]:
    """Signed LLM lengths (> 0 with an image, < 0 text-only) of `n` mix665k-like samples."""
    from bench_validate import make_data
    from transformers import AutoTokenizer

    from llava.data.dataset import load_samples
    from llava.data.length_cache import count_all
    from llava.data.sample_format import SampleFormat

    tok = AutoTokenizer.from_pretrained(
        REPO / "tests" / "fixtures" / "tokenizers" / "llama2", model_max_length=max_len
    )
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = make_data(Path(tmp), n, seed=seed)
        samples = load_samples(path)
    # Uncut text counts (no budget here): the cut to max_len is applied to the total below.
    counted = count_all(samples, tok, SampleFormat("v1", None, is_multimodal=True))
    out = []
    for s, enc in zip(samples, counted):
        if enc.error:
            continue
        total = min(enc.count + (image_tokens if "image" in s else 0), max_len)
        out.append(total if "image" in s else -total)
    return out


def mixture_lengths(n: int, max_len: int, seed: int = 0) -> tuple[list[int], dict[str, int]]:
    """Signed LLM lengths of `n` OneVision-like samples, and how many of each modality.

    Text counts come from the mix665k-like conversations (`mix_lengths`' data); each image sample is
    given, at random, one anyres_max_9 image of a photo size, 2-6 images, or a video."""
    import random

    from llava.data.sample_format import SampleFormat
    from llava.data.visuals import IMAGE, VIDEO, VisualInfo

    fmt = SampleFormat(
        "qwen_1_5" if _has_template("qwen_1_5") else "v1", max_len, is_multimodal=True,
        image_aspect_ratio="anyres_max_9", image_grid_pinpoints="(1x1),...,(6x6)", num_image_tokens=729,
        mm_patch_merge_type="spatial_unpad", patches_per_side=27, crop_size=384,
        mm_newline_position="one_token", mm_spatial_pool_stride=2, mm_spatial_pool_mode="bilinear",
        frames_upbound=32,
    )  # fmt: skip
    rng = random.Random(seed)
    photo_sizes = [(640, 480), (480, 640), (1024, 768), (800, 600), (1280, 720), (500, 375), (336, 336)]
    text = mix_lengths(n, 10**9, seed=seed, image_tokens=0)
    out, counts = [], {"text": 0, "image": 0, "multi_image": 0, "video": 0}
    for t in text:
        if t < 0:
            kind, infos = "text", []
        else:
            kind = rng.choices(["image", "multi_image", "video"], weights=[5, 3, 2])[0]
            if kind == "image":
                infos = [VisualInfo(IMAGE, rng.choice(photo_sizes))]
            elif kind == "multi_image":
                infos = [VisualInfo(IMAGE, (640, 480))] * rng.randint(2, 6)
            else:
                infos = [VisualInfo(VIDEO, (640, 360), frames=rng.randint(8, 120) * 30, fps=30.0)]
        counts[kind] += 1
        total = min(abs(t) + sum(fmt.visual_tokens(infos)), max_len)
        out.append(-total if kind == "text" else total)
    return out, counts


def _has_template(name: str) -> bool:
    from llava.conversation import conv_templates

    return name in conv_templates


def padded_cost(batches, sizes):
    return [len(b) * max(sizes[i] for i in b) for b in batches]


def summarise(name, batches, costs, sizes, world):
    real = sum(sizes[i] for b in batches for i in b)
    computed = sum(costs)
    steps = [costs[s : s + world] for s in range(0, len(costs), world)]
    step_cost = sum(world * max(c) for c in steps)
    return name, real / computed, real / step_cost, sum(len(b) for b in batches) / len(batches)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--per-device", type=int, default=16)
    parser.add_argument("--world", type=int, default=8, help="data-parallel ranks x accumulation steps")
    parser.add_argument("--model-max-length", type=int, default=None, help="2048; 32768 with --mixture")
    parser.add_argument("--mixture", action="store_true", help="OneVision-like: images, multi-image, video")
    args = parser.parse_args(argv)
    if args.model_max_length is None:
        args.model_max_length = 32768 if args.mixture else 2048

    import torch

    from llava.data.packing import next_fit
    from llava.train.packed_sampler import PackedBatchSampler
    from llava.train.sampler import LengthGroupedSampler

    t0 = time.perf_counter()
    if args.mixture:
        signed, kinds = mixture_lengths(args.samples, args.model_max_length)
        print("mixture: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    else:
        signed = mix_lengths(args.samples, args.model_max_length)
    sizes = [abs(x) for x in signed]
    print(
        f"{len(sizes)} samples ({sum(x < 0 for x in signed)} text-only), mean {sum(sizes) / len(sizes):.0f} "
        f"tokens, counted in {time.perf_counter() - t0:.0f}s; per-device {args.per_device} x {args.world} "
        f"= global batch {args.per_device * args.world}, rows of {args.model_max_length}"
    )
    bs, world, cap = args.per_device, args.world, args.model_max_length
    perm = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [perm[i : i + bs] for i in range(0, len(perm), bs)]
    grouped = LengthGroupedSampler(
        bs, world_size=world, lengths=signed, group_by_modality=True, seed=0
    ).indices()
    grouped_batches = [grouped[i : i + bs] for i in range(0, len(grouped), bs)]
    t0 = time.perf_counter()
    plans = {
        layout: PackedBatchSampler(
            signed, bs, world, cap, group_by_modality=True, seed=0, layout=layout
        ).batches()
        for layout in ("rows", "flat")
    }
    plan_s = (time.perf_counter() - t0) / 2

    def packed_cost(batches, flat):
        costs = []
        for b in batches:
            totals = [sum(min(sizes[b[k]], cap) for k in row) for row in next_fit([sizes[i] for i in b], cap)]
            costs.append(sum(totals) if flat else len(totals) * max(totals))
        return costs

    results = [
        summarise(
            "random batching (padded)", random_batches, padded_cost(random_batches, sizes), sizes, world
        ),
        summarise(
            "modality-length grouping (padded)",
            grouped_batches,
            padded_cost(grouped_batches, sizes),
            sizes,
            world,
        ),
        summarise(
            "packing, rows [R, widest row]", plans["rows"], packed_cost(plans["rows"], False), sizes, world
        ),
        summarise(
            "packing, end to end (varlen)", plans["flat"], packed_cost(plans["flat"], True), sizes, world
        ),
    ]
    base = results[0][1]
    print(
        f"\n{'batching':36s} {'real/computed':>14s} {'x random':>9s} {'real/step':>10s} {'samples/mb':>11s}"
    )
    for name, eff, step_eff, per_mb in results:
        print(f"{name:36s} {eff:14.1%} {eff / base:9.2f} {step_eff:10.1%} {per_mb:11.1f}")
    n_rows = sum(len(next_fit([sizes[i] for i in b], cap)) for b in plans["flat"])
    fill = sum(sizes) / (n_rows * cap)
    print(f"\npacked rows: {n_rows}, mean fill of {cap} tokens {fill:.1%}; plan for the epoch {plan_s:.2f}s")


if __name__ == "__main__":
    main()
