"""Synthetic tasks that one picture cannot answer: compare two pictures, tell which way a dot moves.

Both write the LLaVA-NeXT / OneVision formats (a sample's `image` a list with one `<image>` each, in
order; or a `video` with one `<image>`), a stage-1 caption file of single pictures (LCS-558K style)
and a held-out question file in the answer-runner format:

    <out>/images/*.png        single pictures (multi_image: the shapes; video: single frames)
    <out>/videos/*            video: mp4 files and frames folders (llava.data.tools.synthetic_video)
    <out>/pretrain.json       stage 1: "<image>" + an instruction -> a caption of that one picture
    <out>/finetune.json       stage 2: the task's samples (multi-image or video), a few text-only ones
    <out>/eval.jsonl          held-out questions of the task's kind only:
                              {"question_id", "image": [a, b] | "video": v, "text", "answer", "category"}

multi_image: "Is the shape in the second picture the same colour as in the first?" -> Yes / No, half
of each, the second colour drawn so that either picture alone says nothing (chance 50%).
video: a dot steps one cell per frame left, right, up or down on a wrapping grid from a random start
cell, so no single frame tells the direction (chance 25%).

    python -m llava.data.tools.synthetic_multi --task multi_image --out playground/data/pairs
    python -m llava.data.tools.synthetic_multi --task video --out playground/data/dots
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from llava.data.tools.synthetic import (
    COLOURS,
    NUMBER_WORDS,
    PLACES,
    PRETRAIN_INSTRUCTIONS,
    SHAPES,
    Scene,
    _text_only_sample,
    _write_json,
    draw_scene,
)
from llava.data.tools.synthetic_video import (
    DIRECTIONS,
    DOT_COLOURS,
    make_moving_dot_folder,
    make_moving_dot_video,
    moving_dot_frames,
)
from llava.data.tools.synthetic_video import (
    QUESTION as VIDEO_QUESTION,
)

SAME_COLOUR = "Is the shape in the second picture the same colour as in the first?"
FIRST_COLOUR = "What colour is the shape in the first picture?"
SECOND_COLOUR = "What colour is the shape in the second picture?"
START_QUESTION = "Where is the dot in the first frame?"
END_QUESTION = "Where is the dot in the last frame?"
DOT_COLOUR_NAMES = {rgb: name for name, rgb in COLOURS.items() if rgb in DOT_COLOURS}  # the same colours


def _caption_sample(sid: str, image: str, caption: str, rng: random.Random) -> dict:
    instr = rng.choice(PRETRAIN_INSTRUCTIONS)
    human = f"<image>\n{instr}" if rng.random() < 0.5 else f"{instr}\n<image>"
    return {
        "id": sid,
        "image": image,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": caption}],
    }


def _pair_prompt(rng: random.Random) -> str:
    """The two `<image>` markers, interleaved with text in one of a few layouts."""
    return rng.choice(
        (
            "First picture: <image>\nSecond picture: <image>\n",
            "<image>\n<image>\n",
            "Here are two pictures. <image> and <image>\n",
        )
    )


def _pair(rng: random.Random, scenes: list[Scene], same: bool) -> tuple[Scene, Scene]:
    first = rng.choice(scenes)
    pool = [s for s in scenes if (s.colour == first.colour) == same]
    return first, rng.choice(pool)


def generate_multi_image(
    out_dir: str | os.PathLike,
    n_train: int = 2000,
    n_eval: int = 200,
    image_size: tuple[int, int] = (48, 48),
    colour_turn_fraction: float = 0.5,
    captions_per_pair: int = 1,
    text_only_fraction: float = 0.05,
    seed: int = 0,
) -> dict[str, Path]:
    """Pairs of shape pictures: `n_train` training pairs, `n_eval` held-out pairs. Stage 1 captions
    `captions_per_pair` (1 or 2) pictures of each training pair, alone. Answers alternate Yes/No. In `colour_turn_fraction` of the training
    samples the conversation first asks each picture's colour (a multi-turn sample), then the comparison;
    held-out questions ask only the comparison."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    scenes = [Scene(c, s, p) for c in COLOURS for s in SHAPES for p in PLACES]
    pretrain, finetune, evaluation = [], [], []
    for i in range(n_train + n_eval):
        split = "train" if i < n_train else "eval"
        same = i % 2 == 0
        pair = _pair(rng, scenes, same)
        names = []
        for k, scene in enumerate(pair):
            name = f"{split}-{i:06d}-{k}.png"
            draw_scene(scene, image_size, rng).save(out / "images" / name)
            names.append(name)
            if split == "train" and (k - i) % 2 < captions_per_pair:
                pretrain.append(_caption_sample(f"pt-{i}-{k}", name, scene.caption(), rng))
        answer = "Yes" if same else "No"
        prompt = _pair_prompt(rng)
        if split == "eval":
            evaluation.append(
                {"question_id": f"pair-q-{i}", "image": names, "text": prompt + SAME_COLOUR,
                 "answer": answer, "category": "same colour"}
            )  # fmt: skip
            continue
        turns = [(SAME_COLOUR, answer + ".")]
        if rng.random() < colour_turn_fraction:
            turns = [(FIRST_COLOUR, pair[0].colour.capitalize() + "."),
                     (SECOND_COLOUR, pair[1].colour.capitalize() + ".")] + turns  # fmt: skip
        conv = []
        for t, (q, a) in enumerate(turns):
            conv += [{"from": "human", "value": prompt + q if t == 0 else q}, {"from": "gpt", "value": a}]
        finetune.append({"id": f"pair-{i}", "image": names, "conversations": conv})
    finetune += [_text_only_sample(i, rng) for i in range(int(round(n_train * text_only_fraction)))]
    rng.shuffle(finetune)
    return _write_all(out, pretrain, finetune, evaluation)


def _dot_place(cell: tuple[int, int], cells: int) -> str:
    return PLACES[(2 if cell[1] >= cells / 2 else 0) + (1 if cell[0] >= cells / 2 else 0)]


def generate_video(
    out_dir: str | os.PathLike,
    n_train: int = 800,
    n_eval: int = 200,
    frames: int = 8,
    size: int = 48,
    cells: int = 3,
    folder_fraction: float = 0.5,
    frame_captions: int = 1,
    place_turn_fraction: float = 0.0,
    text_only_fraction: float = 0.05,
    seed: int = 0,
) -> dict[str, Path]:
    """Moving-dot videos: `n_train` training and `n_eval` held-out ones, directions cycled (balanced);
    about `folder_fraction` written as frames folders, the rest as mp4 files. Stage 1 captions
    `frame_captions` single frames per training video ("A red circle in the top left. Row one, column two."). In
    `place_turn_fraction` of the training samples the conversation first asks where the dot is in the
    first and in the last frame ("Row one, column three."), then the direction; held-out questions ask
    only the direction."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    directions = sorted(DIRECTIONS)
    pretrain, finetune, evaluation = [], [], []
    for i in range(n_train + n_eval):
        direction = directions[i % len(directions)]
        split = "train" if i < n_train else "eval"
        vseed = rng.randrange(2**31)
        if rng.random() < folder_fraction:
            name = f"videos/{split}-{i:06d}"
            make_moving_dot_folder(out / name, direction, frames, size, vseed, cells=cells)
        else:
            name = f"videos/{split}-{i:06d}.mp4"
            make_moving_dot_video(out / name, direction, frames, size, vseed, cells=cells)
        if split == "eval":
            evaluation.append(
                {"question_id": f"dot-q-{i}", "video": name, "text": VIDEO_QUESTION,
                 "answer": direction, "category": "direction"}
            )  # fmt: skip
            continue
        pictures = moving_dot_frames(direction, frames, size, vseed, cells=cells)
        turns = [(VIDEO_QUESTION, f"{direction.capitalize()}.")]
        if rng.random() < place_turn_fraction:
            start, end = _dot_cell(pictures[0], cells), _dot_cell(pictures[-1], cells)
            turns = [(START_QUESTION, _cell_words(start)), (END_QUESTION, _cell_words(end))] + turns
        first = rng.choice((f"<image>\n{turns[0][0]}", f"{turns[0][0]}\n<image>"))
        conv = []
        for t, (q, a) in enumerate(turns):
            conv += [{"from": "human", "value": first if t == 0 else q}, {"from": "gpt", "value": a}]
        finetune.append({"id": f"dot-{i}", "video": name, "conversations": conv})
        if frame_captions:
            colour = DOT_COLOUR_NAMES[_frame_colour(pictures[0])]
            for k in rng.sample(range(frames), min(frame_captions, frames)):
                cell = _dot_cell(pictures[k], cells)
                fname = f"frame-{i:06d}-{k}.png"
                pictures[k].save(out / "images" / fname)
                caption = f"A {colour} circle in the {_dot_place(cell, cells)}. {_cell_words(cell)}"
                pretrain.append(_caption_sample(f"pt-{i}-{k}", fname, caption, rng))
    finetune += [_text_only_sample(i, rng) for i in range(int(round(n_train * text_only_fraction)))]
    rng.shuffle(finetune)
    paths = _write_all(out, pretrain, finetune, evaluation)
    paths["videos"] = out / "videos"
    return paths


def _cell_words(cell: tuple[int, int]) -> str:
    return f"Row {NUMBER_WORDS[cell[1] + 1]}, column {NUMBER_WORDS[cell[0] + 1]}."


def _frame_colour(picture) -> tuple[int, int, int]:
    """The dot's colour: the frame's one colour that is one of DOT_COLOURS."""
    for _, colour in picture.getcolors(maxcolors=1 << 16):
        if colour in DOT_COLOURS:
            return colour
    raise ValueError("moving-dot frame without a dot colour")


def _dot_cell(picture, cells: int) -> tuple[int, int]:
    """The (column, row) cell the dot is in (the cell whose centre pixel is a dot colour)."""
    step = picture.width / cells
    for row in range(cells):
        for col in range(cells):
            if picture.getpixel((int((col + 0.5) * step), int((row + 0.5) * step))) in DOT_COLOURS:
                return col, row
    raise ValueError("moving-dot frame without a dot")


def _write_all(out: Path, pretrain: list, finetune: list, evaluation: list) -> dict[str, Path]:
    paths = {
        "pretrain": out / "pretrain.json",
        "finetune": out / "finetune.json",
        "eval": out / "eval.jsonl",
        "images": out / "images",
    }
    _write_json(paths["pretrain"], pretrain)
    _write_json(paths["finetune"], finetune)
    _write_json(paths["eval"], evaluation)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a synthetic multi-image or video task (LLaVA-NeXT JSON).")
    ap.add_argument("--task", choices=("multi_image", "video"), required=True)
    ap.add_argument("--out", required=True, help="output folder (image and video folder of the samples)")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if (args.n_train is not None and args.n_train < 1) or args.n_eval < 0:
        ap.error("--n-train must be >= 1 and --n-eval >= 0")
    make = generate_multi_image if args.task == "multi_image" else generate_video
    kwargs = {} if args.n_train is None else {"n_train": args.n_train}
    paths = make(args.out, n_eval=args.n_eval, seed=args.seed, **kwargs)
    for k, p in paths.items():
        print(f"{k:9s} {p}")


if __name__ == "__main__":
    main()
