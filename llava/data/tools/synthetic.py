"""A synthetic visual-instruction dataset small enough to learn on a laptop CPU.

Each picture shows one coloured shape in one of four places on a light background. The
generator writes the two LLaVA training files in their real formats and a held-out question
file in the answer-runner format:

    <out>/images/*.png
    <out>/pretrain.json     LCS-558K style: "<image>" + an instruction -> a caption (stage 1)
    <out>/finetune.json     mix665k style: multi-turn questions about the picture, plus text-only
                            samples so the modality-grouped sampler has two modalities (stage 2)
    <out>/eval.jsonl        held-out pictures: {"question_id", "image", "text", "answer", "category"}

    python -m llava.data.synthetic --out playground/data/tiny --n-train 2000 --n-eval 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from llava.utils.atomic import atomic_write_text

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 170),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
PLACES = ("top left", "top right", "bottom left", "bottom right")

QUESTIONS = {
    "colour": ("What colour is the shape?", "{colour}"),
    "shape": ("What shape is in the picture?", "{shape}"),
    "place": ("Where is the shape?", "{place}"),
}
PRETRAIN_INSTRUCTIONS = (
    "Give a brief description of the image.",
    "Describe the image concisely.",
    "Render a clear and concise summary of the photo.",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    place: str

    def caption(self) -> str:
        return f"A {self.colour} {self.shape} in the {self.place}."

    def answer(self, kind: str) -> str:
        return QUESTIONS[kind][1].format(colour=self.colour, shape=self.shape, place=self.place)


def draw_scene(scene: Scene, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Render one scene; the shape's size and exact position jitter so pictures differ."""
    w, h = size
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    r = int(min(w, h) * rng.uniform(0.2, 0.25))
    col, row = (0 if "left" in scene.place else 1), (0 if "top" in scene.place else 1)
    cx = int(w * (0.25 + 0.5 * col) + rng.uniform(-0.05, 0.05) * w)
    cy = int(h * (0.25 + 0.5 * row) + rng.uniform(-0.05, 0.05) * h)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def _text_only_sample(i: int, rng: random.Random) -> dict:
    a, b = rng.randint(0, 5), rng.randint(0, 5)
    q = f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?"
    return {
        "id": f"text-{i}",
        "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": f"{NUMBER_WORDS[a + b]}."}],
    }


def _finetune_sample(sid: str, image: str, scene: Scene, rng: random.Random) -> dict:
    kinds = list(QUESTIONS)
    rng.shuffle(kinds)
    conv = []
    for turn, kind in enumerate(kinds[: rng.randint(1, 3)]):
        q = QUESTIONS[kind][0]
        conv.append({"from": "human", "value": f"<image>\n{q}" if turn == 0 else q})
        conv.append({"from": "gpt", "value": scene.answer(kind).capitalize() + "."})
    return {"id": sid, "image": image, "conversations": conv}


def _write_json(path: Path, obj) -> None:
    if path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(o) + "\n" for o in obj))
    else:
        atomic_write_text(path, json.dumps(obj, indent=1))


def generate(
    out_dir: str | os.PathLike,
    n_train: int = 2000,
    n_eval: int = 200,
    image_size: tuple[int, int] = (96, 72),
    text_only_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Path]:
    """Write the dataset under `out_dir` and return the paths of its files."""
    from tqdm import tqdm

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    scenes = [Scene(c, s, p) for c in COLOURS for s in SHAPES for p in PLACES]
    pretrain, finetune, evaluation = [], [], []
    for i in tqdm(range(n_train + n_eval), desc="synthetic images", disable=not progress):
        scene = rng.choice(scenes)
        split = "train" if i < n_train else "eval"
        name = f"{split}-{i:06d}.png"
        draw_scene(scene, image_size, rng).save(out / "images" / name)
        if split == "train":
            instr = rng.choice(PRETRAIN_INSTRUCTIONS)
            human = f"<image>\n{instr}" if rng.random() < 0.5 else f"{instr}\n<image>"
            pretrain.append(
                {
                    "id": f"pt-{i}",
                    "image": name,
                    "conversations": [
                        {"from": "human", "value": human},
                        {"from": "gpt", "value": scene.caption()},
                    ],
                }
            )
            finetune.append(_finetune_sample(f"ft-{i}", name, scene, rng))
        else:
            kind = list(QUESTIONS)[i % len(QUESTIONS)]
            evaluation.append(
                {
                    "question_id": f"q-{i}",
                    "image": name,
                    "text": QUESTIONS[kind][0],
                    "answer": scene.answer(kind),
                    "category": kind,
                }
            )
    n_text = int(round(len(finetune) * text_only_fraction))
    finetune += [_text_only_sample(i, rng) for i in range(n_text)]
    rng.shuffle(finetune)
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


def corpus(paths: dict[str, Path]) -> list[str]:
    """All conversation text of the generated files (to fit a small demo tokenizer on)."""
    texts = []
    for key in ("pretrain", "finetune"):
        for sample in json.loads(paths[key].read_text()):
            texts += [t["value"].replace("<image>", "") for t in sample["conversations"]]
    return texts


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write the synthetic shapes dataset (LLaVA JSON formats).")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--text-only-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n_train < 1 or args.n_eval < 0:
        ap.error("--n-train must be >= 1 and --n-eval >= 0")
    paths = generate(
        args.out, args.n_train, args.n_eval, text_only_fraction=args.text_only_fraction, seed=args.seed
    )
    for k, p in paths.items():
        print(f"{k:9s} {p}")


if __name__ == "__main__":
    main()
