"""A synthetic video task: which way does the dot move?

A dot steps one cell per frame left, right, up or down on a grid of `cells` x `cells` cells that wraps
around at the edges (a torus). Its start cell is drawn uniformly, so at every frame k its cell is
uniform over the grid whatever the direction: one frame alone says nothing about the direction, two
consecutive frames give it (the step, modulo the grid). Colour and background are drawn from the seed
too, independently of the direction.

    make_moving_dot_video(path, "left", frames=8, size=64, seed=3)    # an mp4 (mpeg4), 1 frame/s
    make_moving_dot_folder(folder, "up", ...)                         # the same frames as PNG files
    python -m llava.data.tools.synthetic_video --out playground/data/dots --n-train 400 --n-eval 40

The videos are written at 1 frame per second, so LLaVA-NeXT's default sampling (`--video_fps 1`) takes
every frame.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

from llava.images.video import write_frame_folder, write_video
from llava.utils.atomic import atomic_write_text

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
QUESTION = "Which way does the dot move?"
DOT_COLOURS = ((220, 40, 40), (40, 70, 220), (40, 170, 60), (20, 20, 20), (140, 50, 170))


def dot_track(direction: str, start: tuple[int, int], frames: int, cells: int) -> list[tuple[int, int]]:
    """The dot's (column, row) cell in each frame, stepping one cell per frame and wrapping around."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; valid: {sorted(DIRECTIONS)}")
    dx, dy = DIRECTIONS[direction]
    return [((start[0] + k * dx) % cells, (start[1] + k * dy) % cells) for k in range(frames)]


def draw_dot(cell: tuple[int, int], size: int, cells: int, colour, background) -> Image.Image:
    """One frame: a `size` x `size` picture with the dot filling most of its cell."""
    image = Image.new("RGB", (size, size), background)
    step = size / cells
    radius = step * 0.4
    cx, cy = (cell[0] + 0.5) * step, (cell[1] + 0.5) * step
    ImageDraw.Draw(image).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    return image


def moving_dot_frames(
    direction: str, frames: int = 8, size: int = 64, seed: int = 0, *, cells: int = 8
) -> list[Image.Image]:
    """The frames of one moving-dot video (start cell, colour and background drawn from `seed`)."""
    if frames < 2:
        raise ValueError(f"a moving dot needs at least 2 frames (got {frames})")
    if cells < 3 or size < 2 * cells:
        raise ValueError(f"need cells >= 3 and size >= 2 * cells (got size={size}, cells={cells})")
    rng = random.Random(seed)
    start = (rng.randrange(cells), rng.randrange(cells))
    colour = rng.choice(DOT_COLOURS)
    background = tuple(rng.randint(225, 255) for _ in range(3))
    return [draw_dot(c, size, cells, colour, background) for c in dot_track(direction, start, frames, cells)]


def make_moving_dot_video(
    path: str | os.PathLike, direction: str, frames: int = 8, size: int = 64, seed: int = 0, *, cells: int = 8
) -> Path:
    """Write a moving-dot video file (mpeg4 in the container of `path`'s suffix, 1 frame/s)."""
    return write_video(moving_dot_frames(direction, frames, size, seed, cells=cells), path, fps=1)


def make_moving_dot_folder(
    folder: str | os.PathLike,
    direction: str,
    frames: int = 8,
    size: int = 64,
    seed: int = 0,
    *,
    cells: int = 8,
) -> Path:
    """Write the same video as a frames folder (frame_00000.png, ...)."""
    return write_frame_folder(moving_dot_frames(direction, frames, size, seed, cells=cells), folder)


def _write_json(path: Path, obj) -> None:
    if path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(o) + "\n" for o in obj))
    else:
        atomic_write_text(path, json.dumps(obj, indent=1))


def generate(
    out_dir: str | os.PathLike,
    n_train: int = 400,
    n_eval: int = 40,
    frames: int = 8,
    size: int = 64,
    folder_fraction: float = 0.25,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the task under `out_dir`: videos/ (mp4 files, and frames folders for about
    `folder_fraction` of them), finetune.json (LLaVA-NeXT "video" samples, one `<image>` for the
    video) and eval.jsonl ({"question_id", "video", "text", "answer", "category"}). Directions are
    balanced (cycled); returns the paths."""
    out = Path(out_dir)
    rng = random.Random(seed)
    names = sorted(DIRECTIONS)
    finetune, evaluation = [], []
    for i in range(n_train + n_eval):
        direction = names[i % len(names)]
        split = "train" if i < n_train else "eval"
        video_seed = rng.randrange(2**31)
        if rng.random() < folder_fraction:
            name = f"videos/{split}-{i:06d}"
            make_moving_dot_folder(out / name, direction, frames, size, video_seed)
        else:
            name = f"videos/{split}-{i:06d}.mp4"
            make_moving_dot_video(out / name, direction, frames, size, video_seed)
        if split == "train":
            human = f"<image>\n{QUESTION}" if rng.random() < 0.5 else f"{QUESTION}\n<image>"
            finetune.append(
                {
                    "id": f"dot-{i}",
                    "video": name,
                    "conversations": [
                        {"from": "human", "value": human},
                        {"from": "gpt", "value": f"{direction.capitalize()}."},
                    ],
                }
            )
        else:
            evaluation.append(
                {
                    "question_id": f"dot-q-{i}",
                    "video": name,
                    "text": QUESTION,
                    "answer": direction,
                    "category": "direction",
                }
            )
    rng.shuffle(finetune)
    paths = {"finetune": out / "finetune.json", "eval": out / "eval.jsonl", "videos": out / "videos"}
    paths["videos"].mkdir(parents=True, exist_ok=True)
    _write_json(paths["finetune"], finetune)
    _write_json(paths["eval"], evaluation)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write the synthetic moving-dot video task (LLaVA-NeXT JSON).")
    ap.add_argument("--out", required=True, help="output folder (use it as --video_folder)")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-eval", type=int, default=40)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--folder-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n_train < 1 or args.n_eval < 0:
        ap.error("--n-train must be >= 1 and --n-eval >= 0")
    paths = generate(
        args.out, args.n_train, args.n_eval, args.frames, args.size, args.folder_fraction, args.seed
    )
    for k, p in paths.items():
        print(f"{k:9s} {p}")


if __name__ == "__main__":
    main()
