"""Training data pipeline samples/s: this project's dataset against the original's per-sample path.

    .venv/bin/python bench/bench_data_pipeline.py [--samples 600] [--workers 2]

Data: mix665k-like conversations (bench_validate.make_data: multi-turn LLaVA-Instruct, long
descriptions, many-question VQA / region samples, text-only ShareGPT chats) with 640x480 JPEGs
(a pool of 24 generated photos-like images, one file per sample), the LLaMA-2 tokenizer,
template v1, --image_aspect_ratio pad, CLIP-L/336 preprocessing (CLIPImageProcessor settings of
openai/clip-vit-large-patch14-336, built from its config), model_max_length 2048.

- baseline: what the original LLaVA's LazySupervisedDataset does per sample: deep-copy the
  conversation, move <image> to the front, PIL open, expand2square with the mean colour,
  CLIPImageProcessor.preprocess, then preprocess_v1: render the conversation, tokenise it with
  tokenizer_image_token, and tokenise every round and its instruction again to mask the targets.
- project: LazySupervisedDataset after prepare(), as the trainer sets it up: ids and labels read
  from the memory-mapped token cache, the image decoded, padded and resized in one pass
  (ImageTransform.levels) and sent as uint8; the vision tower normalises on its device (a table
  lookup, timed here on this CPU for a batch of 16 and reported on its own).
- project, float32: the same dataset normalising on the CPU (data_args.uint8_images False), for
  reference.

Both are timed in this process and through a DataLoader with --workers worker processes that also
collate batches of 16 (as the trainer loads data); best of three passes each, taken in turn. The one-off
tokenisation that fills the cache is reported on its own.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
MAX_LEN = 2048


def clip_336_processor(backend: str = "pil"):
    """CLIP-L/336's image processor. `pil`: the PIL/numpy one the original LLaVA used
    (transformers 5's CLIPImageProcessorPil); `default`: what CLIPImageProcessor gives here
    (torchvision's when torchvision is installed, else the PIL one)."""
    import transformers

    cls = transformers.CLIPImageProcessor
    if backend == "pil":
        cls = getattr(transformers, "CLIPImageProcessorPil", cls)
    return cls(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        do_center_crop=True,
        do_resize=True,
        do_normalize=True,
        resample=3,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def write_jpegs(samples: list[dict], images: Path, pool: int = 24, seed: int = 0) -> None:
    """Every sample's image file: a 640x480 JPEG (smooth colour fields plus noise, ~100 KB)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(pool):
        low = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).resize(
            (640, 480), Image.BICUBIC
        )
        noisy = np.asarray(low).astype(np.int16) + rng.integers(-12, 12, (480, 640, 3))
        path = images / f"_pool_{len(blobs)}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        blobs.append(path.read_bytes())
    for i, s in enumerate(samples):
        if "image" in s:
            (images / s["image"]).write_bytes(blobs[i % pool])


class OriginalStyleDataset:
    """The original per-sample path (see the module docstring), written for this benchmark."""

    def __init__(self, samples, image_folder, tokenizer, processor):
        self.samples, self.folder, self.tokenizer, self.processor = (
            samples,
            image_folder,
            tokenizer,
            processor,
        )

    def __len__(self):
        return len(self.samples)

    def _tokenise_v1(self, conversation):
        import torch

        from llava.constants import IGNORE_INDEX
        from llava.conversation import conv_templates
        from llava.mm_utils import tokenizer_image_token

        conv = conv_templates["v1"].copy()
        roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
        conv.messages = []
        for turn in conversation:
            conv.append_message(roles[turn["from"]], turn["value"])
        prompt = conv.get_prompt()
        input_ids = tokenizer_image_token(prompt, self.tokenizer, return_tensors="pt")[:MAX_LEN]
        targets = input_ids.clone()
        sep = conv.sep + conv.roles[1] + ": "
        cur = 1
        targets[:cur] = IGNORE_INDEX
        for rou in prompt.split(conv.sep2):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            round_len = len(tokenizer_image_token(rou, self.tokenizer))
            instruction_len = len(tokenizer_image_token(parts[0], self.tokenizer)) - 2
            targets[cur : cur + instruction_len] = IGNORE_INDEX
            cur += round_len
        targets[cur:] = IGNORE_INDEX
        return input_ids, torch.as_tensor(targets)

    def __getitem__(self, i):
        from PIL import Image

        from llava.constants import DEFAULT_IMAGE_TOKEN
        from llava.mm_utils import expand2square

        sample = self.samples[i]
        conversation = copy.deepcopy(sample["conversations"])
        item = {}
        if "image" in sample:
            for turn in conversation:
                if DEFAULT_IMAGE_TOKEN in turn["value"]:
                    turn["value"] = (
                        DEFAULT_IMAGE_TOKEN + "\n" + turn["value"].replace(DEFAULT_IMAGE_TOKEN, "")
                    ).strip()
            image = Image.open(os.path.join(self.folder, sample["image"])).convert("RGB")
            image = expand2square(image, tuple(int(x * 255) for x in self.processor.image_mean))
            item["image"] = self.processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
        else:  # the original gives text-only samples of a multimodal model a zero image
            import torch

            crop = self.processor.crop_size
            item["image"] = torch.zeros(3, crop["height"], crop["width"])
        item["input_ids"], item["labels"] = self._tokenise_v1(conversation)
        return item


def one_pass(dataset, workers: int, collate, batch_size: int = 16) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to read every sample once: here, or through a
    DataLoader whose workers also collate the batches (as the trainer's do)."""
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    if workers == 0:
        for i in range(len(dataset)):
            dataset[i]
    else:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate
        )
        for _ in loader:
            pass
    return time.perf_counter() - t0, time.process_time() - c0


def timed(datasets: dict, workers: int, collate, repeats: int = 3) -> dict:
    """{name: (samples/s, CPU ms per sample)} for each dataset, best of `repeats` passes taken in
    turn (base, project, ..., base, project, ...) so that other load on the machine hits all alike."""
    best = {name: (0.0, float("inf")) for name in datasets}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            wall, cpu = one_pass(dataset, workers, collate)
            rate, cpu_ms = best[name]
            best[name] = (max(rate, len(dataset) / wall), min(cpu_ms, cpu / len(dataset) * 1e3))
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--processor",
        choices=("pil", "default"),
        default="pil",
        help="the baseline's image processor: the original's PIL one, or transformers' default here",
    )
    args = parser.parse_args(argv)

    import torch
    from bench_validate import make_data
    from transformers import AutoTokenizer

    from llava.data.collator import DataCollatorForSupervisedDataset
    from llava.data.dataset import LazySupervisedDataset, load_samples
    from llava.train.arguments import DataArguments

    torch.set_num_threads(1)  # as in a DataLoader worker
    tokenizer = AutoTokenizer.from_pretrained(
        REPO / "tests" / "fixtures" / "tokenizers" / "llama2", model_max_length=MAX_LEN, padding_side="right"
    )
    tokenizer.pad_token = tokenizer.unk_token
    processor = clip_336_processor(args.processor)
    with tempfile.TemporaryDirectory() as tmp:
        data_path, images = make_data(Path(tmp), args.samples, seed=0)
        samples = load_samples(data_path)
        write_jpegs(samples, images)
        data_args = DataArguments(
            data_path=str(data_path), image_folder=str(images), image_aspect_ratio="pad"
        )
        data_args.is_multimodal, data_args.image_processor, data_args.num_image_tokens = True, processor, 576
        data_args.uint8_images = True  # as model_setup.setup_vision sets it for training
        ours = LazySupervisedDataset(str(data_path), tokenizer, data_args, conv_version="v1")
        t0 = time.perf_counter()
        ours.prepare()
        cache_s = time.perf_counter() - t0
        float_args = copy.copy(data_args)
        float_args.uint8_images = False
        ours_float = LazySupervisedDataset(str(data_path), tokenizer, float_args, conv_version="v1")
        ours_float.prepare()
        baseline = OriginalStyleDataset(ours.list_data_dict, str(images), tokenizer, processor)
        n_img = sum("image" in s for s in ours.list_data_dict)
        print(
            f"{len(ours)} samples ({n_img} with a 640x480 JPEG), LLaMA-2 tokenizer, v1, pad, CLIP-L/336 "
            f"({type(processor).__name__}); "
            f"token cache filled once in {cache_s:.1f}s ({len(ours) / cache_s:.0f} samples/s)"
        )
        collate = DataCollatorForSupervisedDataset(tokenizer=tokenizer)
        rows = []
        for workers in (0, args.workers):
            got = timed({"base": baseline, "mine": ours, "floats": ours_float}, workers, collate)
            rows.append((workers, got))
        device_ms = normalise_ms(ours, collate)
    print(
        f"\n{'loader':22s} {'original-style':>15s} {'this project':>13s} {'ratio':>6s} "
        f"{'project, float32':>17s} {'ratio':>6s}"
    )
    for workers, got in rows:
        where = "this process" if workers == 0 else f"{workers} DataLoader workers"
        base, mine, floats = got["base"][0], got["mine"][0], got["floats"][0]
        print(
            f"{where:22s} {base:12.1f}/s {mine:10.1f}/s {mine / base:6.2f} {floats:14.1f}/s {floats / base:6.2f}"
        )
    cpu = rows[0][1]
    print(
        f"CPU ms per sample in this process: original-style {cpu['base'][1]:.2f}, project {cpu['mine'][1]:.2f} "
        f"(ratio {cpu['base'][1] / cpu['mine'][1]:.2f}), project float32 {cpu['floats'][1]:.2f}"
    )
    print(
        f"the tower's normalisation of a uint8 batch of 16 (on the GPU in training): {device_ms:.1f} ms "
        f"on this CPU ({device_ms / 16:.2f} ms per image)"
    )


def normalise_ms(dataset, collate, repeats: int = 5) -> float:
    """Milliseconds for normalise_levels on one collated batch of 16 uint8 images, here."""
    import torch

    from llava.images.transform import normalisation_table, normalise_levels

    batch = collate([dataset[i] for i in range(16)])["images"]
    table = torch.from_numpy(normalisation_table(dataset.data_args.image_processor))
    normalise_levels(batch, table)
    t0 = time.perf_counter()
    for _ in range(repeats):
        normalise_levels(batch, table)
    return (time.perf_counter() - t0) / repeats * 1e3


if __name__ == "__main__":
    main()
