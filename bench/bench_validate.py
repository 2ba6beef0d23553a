"""Time `python -m llava.data.validate` per 100K samples: the text checks and token counts (image
files only checked to exist), against training's per-sample token counting as the baseline; then
the image checks (`--image_check header`, the default, and `decode`) per 100K images.

    .venv/bin/python bench/bench_validate.py [--samples 100000] [--baseline-samples 3000] [--images 2000]

The data imitate llava_v1_5_mix665k.json's mix (multi-turn LLaVA-Instruct conversations, long
single-turn descriptions and reasoning, many-question VQA / OCR / region samples, long text-only
ShareGPT chats); every image sample has its own (empty) image file, so the existence checks are
real. Tokenizer: the LLaMA-2 one in tests/fixtures; template v1; model_max_length 2048.
The image checks run on `--images` generated 640x480 JPEGs of COCO-like size (quality 90, about
120 KB: a smooth picture with sensor-like noise), one per sample, read from the page cache (just
written); --samples 0 runs only them.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = (
    "the a an of to in and is on with what where which how many there this that it its image picture shows "
    "man woman person people dog cat car bus street table plate food kitchen room window sky tree building "
    "red blue green white black yellow large small left right top bottom near behind front holding wearing "
    "sitting standing looking walking playing riding two three several some because likely suggests scene "
    "background foreground appears might could would be are was were has have doing while during"
).split()
SHORT_Q = "Answer the question using a single word or phrase."


def _vocabulary(rng: random.Random, size: int = 50_000) -> tuple[list[str], list[float]]:
    """Common words plus `size` made-up ones, with Zipf-like weights (rank r: 1 / r)."""
    made_up = {
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 11)))
        for _ in range(size)
    }
    words = COMMON + sorted(made_up)
    return words, [1.0 / (r + 1) for r in range(len(words))]


def _text(rng: random.Random, vocab, n: int) -> str:
    words = rng.choices(vocab[0], cum_weights=vocab[1], k=n)
    return " ".join(words).capitalize() + rng.choice([".", "?", "!", "."])


def _sample(i: int, rng: random.Random, vocab) -> dict:
    kind = rng.choices(["conv", "detail", "complex", "vqa", "region", "sharegpt"], [9, 4, 11, 50, 20, 6])[0]
    if kind == "conv":
        turns = [
            t
            for _ in range(rng.randint(2, 5))
            for t in (_text(rng, vocab, 10), _text(rng, vocab, rng.randint(30, 120)))
        ]
    elif kind in ("detail", "complex"):
        turns = [_text(rng, vocab, 12), _text(rng, vocab, rng.randint(80, 200))]
    elif kind == "vqa":
        turns = [
            t
            for _ in range(rng.randint(1, 10))
            for t in (_text(rng, vocab, 8) + "\n" + SHORT_Q, _text(rng, vocab, 2))
        ]
    elif kind == "region":
        box = lambda: "[" + ", ".join(f"{rng.random():.2f}" for _ in range(4)) + "]"  # noqa: E731
        turns = [
            t
            for _ in range(rng.randint(3, 12))
            for t in ("Describe region " + box() + ".", _text(rng, vocab, 8))
        ]
    else:
        turns = [
            t
            for _ in range(rng.randint(1, 4))
            for t in (_text(rng, vocab, 40), _text(rng, vocab, rng.randint(150, 400)))
        ]
    conversations = [{"from": "human" if j % 2 == 0 else "gpt", "value": v} for j, v in enumerate(turns)]
    sample = {"id": f"{i:09d}", "conversations": conversations}
    if kind != "sharegpt":
        sample["image"] = f"coco/train2017/{i:09d}.jpg"
        conversations[0]["value"] = "<image>\n" + conversations[0]["value"]
    return sample


def make_data(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    weights = _vocabulary(rng)
    vocab = (weights[0], list(itertools.accumulate(weights[1])))
    samples = [_sample(i, rng, vocab) for i in range(n)]
    images = root / "images"
    (images / "coco" / "train2017").mkdir(parents=True)
    for s in samples:
        if "image" in s:
            (images / s["image"]).touch()
    path = root / "mix.json"
    path.write_text(json.dumps(samples))
    return path, images


def make_images(root: Path, n: int, seed: int = 0) -> list[dict]:
    """`n` samples, each with its own 640x480 JPEG under `root`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480), 3)
        noisy = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 12, (480, 640, 3)).astype(np.int16)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(root / f"{i:06d}.jpg", quality=90)
        conversations = [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A picture."},
        ]
        samples.append({"id": i, "image": f"{i:06d}.jpg", "conversations": conversations})
    return samples


def bench_images(n: int, workers: list[int]) -> None:
    from llava.data.tools.validate import validate

    with tempfile.TemporaryDirectory() as tmp:
        (samples, wall, _) = _timed(lambda: make_images(Path(tmp), n))
        size = sum(f.stat().st_size for f in Path(tmp).iterdir()) / n / 1e3
        print(f"made {n} 640x480 JPEGs (mean {size:.0f} KB) in {wall:.1f}s")
        for check in ("exists", "header", "decode"):
            for w in workers:
                run = functools.partial(validate, samples, tmp, None, image_check=check, num_workers=w)
                report, wall, cpu = _timed(run)
                assert report.num_errors == 0
                print(
                    f"images, --image_check {check}, {w} worker(s): {wall * 100_000 / n:.1f}s wall, "
                    f"{cpu * 100_000 / n:.1f} CPU-s per 100K images ({n / wall:,.0f} images/s)"
                )


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn):
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, _cpu_seconds() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--baseline-samples", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs for the image checks (0: none)")
    args = parser.parse_args(argv)
    print(f"cpus: {os.cpu_count()}, load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.images:
        bench_images(args.images, args.workers)
    if args.samples:
        bench_text(args)
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


def bench_text(args) -> None:
    from transformers import AutoTokenizer

    from llava.data.dataset import load_samples
    from llava.data.length_cache import count_sample
    from llava.data.sample_format import SampleFormat
    from llava.data.tools.validate import validate

    tokenizer_dir = REPO / "tests" / "fixtures" / "tokenizers" / "llama2"
    per_100k = 100_000 / args.samples
    with tempfile.TemporaryDirectory() as tmp:
        (path, images), wall, _ = _timed(lambda: make_data(Path(tmp), args.samples))
        print(f"made {args.samples} samples ({path.stat().st_size / 1e6:.0f} MB) in {wall:.1f}s")
        for workers in args.workers:
            tok = AutoTokenizer.from_pretrained(tokenizer_dir)  # fresh: no warm caches between runs
            samples, load_wall, load_cpu = _timed(lambda: load_samples(path))
            run = functools.partial(
                validate, samples, str(images), tok, "v1", 2048, num_workers=workers, image_check="exists"
            )
            report, wall, cpu = _timed(run)
            wall, cpu = wall + load_wall, cpu + load_cpu
            print(
                f"validate, {workers} worker(s): {wall * per_100k:.1f}s wall, {cpu * per_100k:.1f} CPU-s per 100K "
                f"samples ({args.samples / wall:,.0f} samples/s; load {load_wall:.1f}s of it)"
            )
        tokens = sorted(report.token_counts.values())
        print(
            f"  usable {report.total - report.num_errors}/{report.total}; tokens per sample (576 per image): "
            f"median {tokens[len(tokens) // 2]}, max {tokens[-1]}; too_long {len(report.problems.get('too_long', []))}"
        )
        opts = SampleFormat("v1", 2048, is_multimodal=True, num_image_tokens=576)
        subset = samples[: args.baseline_samples]
        _, wall, cpu = _timed(lambda: [count_sample(s, tok, opts) for s in subset])
        print(
            f"baseline, training's per-sample count_sample: {wall * 100_000 / len(subset):.1f}s wall, "
            f"{cpu * 100_000 / len(subset):.1f} CPU-s per 100K samples"
        )


if __name__ == "__main__":
    main()
