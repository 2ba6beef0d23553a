"""The demo's tasks (`python -m llava.demo --task NAME`): the data each writes, its sizes, the flags its
stages and its evaluation get, and what the closing chat asks.

  default      one picture of a coloured shape: its colour, shape or place (llava.data.tools.synthetic)
  multi_image  two pictures, "Is the shape in the second picture the same colour as in the first?"
               (Yes / No, chance 50%; llava.data.tools.synthetic_multi)
  video        a dot moving over 8 frames, "Which way does the dot move?" (4 directions, chance 25%;
               llava.data.tools.synthetic_multi with the clips of llava.data.tools.synthetic_video)

Every task trains through the same scripts (scripts/tiny/pretrain.sh, scripts/tiny/finetune.sh) with its
flags appended, and is evaluated with llava.eval.model_vqa_loader on held-out questions of its kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PICTURE = Path(__file__).resolve().parent / "serve" / "examples" / "waterview.jpg"


@dataclass(frozen=True)
class Sizes:
    n_train: int  # training samples (pictures, pairs or videos)
    n_eval: int  # held-out questions
    epochs: float  # stage-2 epochs
    tower_steps: int  # tiny CLIP pre-training steps


@dataclass(frozen=True)
class Task:
    name: str
    unit: str  # what one sample is, for the messages ("pictures", "pairs of pictures", "videos")
    chance: float  # accuracy of guessing, for the summary
    sizes: Sizes
    quick: Sizes
    generate: Callable[..., dict[str, Path]]  # (out, n_train=, n_eval=) -> paths of its files
    stage1_flags: tuple[str, ...] = ()  # appended to scripts/tiny/pretrain.sh
    stage2_flags: tuple[str, ...] = ()  # appended to scripts/tiny/finetune.sh
    quick_stage2_flags: tuple[str, ...] = ()  # appended after stage2_flags in --quick runs
    question: str = "What colour is the shape?"  # the closing chat's question
    tower_patch: int = 6  # the tiny CLIP's patch size: 48 / patch patches per side, their square per image
    tower_pretrain: Callable | None = (
        None  # (tower, pretrain_json, images, select_layer=, steps=) -> accuracy
    )

    def eval_flags(self, paths: dict[str, Path]) -> list[str]:
        """llava.eval.model_vqa_loader's folder flags for this task's question file."""
        flags = ["--image-folder", str(paths["images"])]
        if "videos" in paths:
            flags += ["--video-folder", str(paths["videos"].parent)]
        return flags

    def chat_flags(self, paths: dict[str, Path]) -> list[str]:
        """llava.serve.cli's visual flags for the closing chat: the bundled photo for the default task,
        else the visuals of the first held-out question."""
        if self.name == "default":
            return ["--image-file", str(PICTURE)]
        first = json.loads(paths["eval"].read_text().splitlines()[0])
        if "video" in first:
            return ["--video-file", str(paths["videos"].parent / first["video"])]
        return [a for name in first["image"] for a in ("--image-file", str(paths["images"] / name))]


def _default_data(out, n_train, n_eval):
    from llava.data.tools.synthetic import generate

    return generate(out, n_train=n_train, n_eval=n_eval)


def _multi_image_data(out, n_train, n_eval):
    from llava.data.tools.synthetic_multi import generate_multi_image

    return generate_multi_image(out, n_train=n_train, n_eval=n_eval)


def _video_data(out, n_train, n_eval):
    from llava.data.tools.synthetic_multi import generate_video

    return generate_video(
        out, n_train=n_train, n_eval=n_eval, frames=VIDEO_FRAMES, cells=VIDEO_CELLS, folder_fraction=0.5
    )


def pretrain_cell_tower(
    tower_dir,
    pretrain_json,
    image_folder,
    steps: int,
    select_layer: int = -2,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> float:
    """The video task's tower pre-training: like llava.data.tools.synthetic_tower's, but the heads (on the
    mean of the features of the layer LLaVA reads) name the dot's exact grid cell and its colour, taken
    from the stage-1 captions ("A red circle in the top left. Row one, column two."), so that a frame
    pooled to one token still says where the dot is. Trains `tower_dir` in place; returns the final
    training accuracy."""
    import re

    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from llava.data.tools.synthetic import COLOURS, NUMBER_WORDS

    samples = json.loads(Path(pretrain_json).read_text())
    proc = CLIPImageProcessor.from_pretrained(tower_dir)
    pixels = proc(images=[Image.open(Path(image_folder) / s["image"]).convert("RGB") for s in samples],
                  return_tensors="pt")["pixel_values"]  # fmt: skip
    labels = []
    for s in samples:
        caption = s["conversations"][1]["value"]
        row, col = re.search(r"Row (\w+), column (\w+)", caption).groups()
        colour = next(i for i, c in enumerate(COLOURS) if f" {c} " in caption)
        labels.append((NUMBER_WORDS.index(row) - 1, NUMBER_WORDS.index(col) - 1, colour))
    labels = torch.tensor(labels)
    cells = int(labels[:, :2].max()) + 1
    torch.manual_seed(seed)
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    width = tower.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in (cells, cells, len(COLOURS)))
    opt = torch.optim.AdamW(list(tower.parameters()) + list(heads.parameters()), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    tower.train()
    acc = 0.0
    for _ in range(steps):
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


VIDEO_FRAMES = 8  # frames per clip, all of them taken (--frames_upbound 8)
VIDEO_CELLS = 3  # the dot steps over a 3 x 3 wrapping grid
# Each frame's 6 x 6 patch map pooled (average) to one token: the tiny LLM then sees the clip as 8 tokens
# in a row and learns the order of the dot's cells fastest (finer maps learnt the axis, not the sign).
VIDEO_MODEL_FLAGS = ("--mm_spatial_pool_stride", "6", "--mm_spatial_pool_mode", "average")

TASKS: dict[str, Task] = {
    "default": Task(
        name="default", unit="pictures", chance=0.25,
        sizes=Sizes(2000, 300, 3, 400), quick=Sizes(600, 90, 2, 200), generate=_default_data,
    ),
    "multi_image": Task(
        name="multi_image", unit="pairs of pictures", chance=0.5,
        sizes=Sizes(2000, 200, 2, 200), quick=Sizes(800, 80, 2, 100), generate=_multi_image_data, tower_patch=12,
        question="Is the shape in the second picture the same colour as in the first?",
    ),
    "video": Task(
        name="video", unit="videos", chance=0.25,
        sizes=Sizes(4000, 200, 5, 200), quick=Sizes(2000, 80, 4, 200), generate=_video_data,
        tower_patch=8, tower_pretrain=pretrain_cell_tower, stage1_flags=VIDEO_MODEL_FLAGS,
        stage2_flags=("--video_folder", "{data}", "--frames_upbound", str(VIDEO_FRAMES), *VIDEO_MODEL_FLAGS,
                      "--learning_rate", "1e-3", "--per_device_train_batch_size", "16",
                      "--dataloader_num_workers", "1"),
        # The direction (not the axis) is learnt after about 1,000 optimizer steps: the quick run gets
        # them from half the clips with batches of 8 (79% held out, about 200 s on 2 cores).
        quick_stage2_flags=("--per_device_train_batch_size", "8"),
        question="Which way does the dot move?",
    ),
}  # fmt: skip


def expand(flags: tuple[str, ...], data: Path) -> list[str]:
    """The flags with `{data}` replaced by the task's data folder."""
    return [f.replace("{data}", str(data)) for f in flags]
