"""Give the demo's random tiny CLIP tower useful features before the LLaVA stages.

Real LLaVA starts from a pre-trained CLIP; the demo's tower is random, and frozen random features do
not carry shape and place well enough for a tiny model to learn from. This trains the tower briefly
as a classifier (colour, shape and place heads on the mean of the features of the layer LLaVA reads,
`mm_vision_select_layer`) on the synthetic training pictures only, then saves the tower alone — the
heads are dropped. The LLaVA stages then use it like a pre-trained CLIP, frozen as in the real recipe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image

from llava.data.tools.synthetic import COLOURS, PLACES, SHAPES


def _labels(sample: dict) -> tuple[int, int, int]:
    caption = sample["conversations"][1]["value"].lower()  # "a red circle in the top left."
    colour = next(i for i, c in enumerate(COLOURS) if f" {c} " in f" {caption} ")
    shape = next(i for i, s in enumerate(SHAPES) if s in caption)
    place = next(i for i, p in enumerate(PLACES) if p in caption)
    return colour, shape, place


def pretrain_tower(
    tower_dir: str | os.PathLike,
    pretrain_json: str | os.PathLike,
    image_folder: str | os.PathLike,
    select_layer: int = -2,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> float:
    """Train the tower in `tower_dir` in place; returns the final training accuracy (all three heads)."""
    from tqdm import tqdm
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from llava.mm_utils import expand2square

    tower_dir = Path(tower_dir)
    samples = json.loads(Path(pretrain_json).read_text())
    proc = CLIPImageProcessor.from_pretrained(tower_dir)
    fill = tuple(int(x * 255) for x in proc.image_mean)
    images = [
        expand2square(Image.open(Path(image_folder) / s["image"]).convert("RGB"), fill) for s in samples
    ]
    pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor([_labels(s) for s in samples])

    torch.manual_seed(seed)
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    width = tower.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in (len(COLOURS), len(SHAPES), len(PLACES)))
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    tower.train()
    acc = 0.0
    for _ in tqdm(range(steps), desc="tiny CLIP tower pre-training", disable=not progress):
        idx = torch.randint(0, len(samples), (batch_size,))
        feats = tower(pixels[idx], output_hidden_states=True).hidden_states[select_layer][:, 1:].mean(1)
        logits = [h(feats) for h in heads]
        loss = sum(torch.nn.functional.cross_entropy(lg, labels[idx, i]) for i, lg in enumerate(logits))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hits = torch.stack([lg.argmax(-1) == labels[idx, i] for i, lg in enumerate(logits)])
        acc = 0.9 * acc + 0.1 * hits.float().mean().item()
    tower.save_pretrained(tower_dir)
    return acc
