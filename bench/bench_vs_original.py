"""Training steps side by side with the original LLaVA (issue 21): same model, same samples, both stages.

    .venv/bin/python bench/bench_vs_original.py [--peer /tmp/peer/bin/python] [--steps 6]   # CPU, tiny
    .venv/bin/python bench/bench_vs_original.py --shape small --steps 3    # CPU: the GPU run's path, small
    bash bench/gpu_vs_original.sh                                          # GPU machine: LLaMA-7B shapes

Each side runs each stage as a fresh process through its own `llava.train.train.train()`, on the same
model folders, one fixed random mlp2x_gelu projector (`--pretrain_mm_mlp_adapter`, so both start from
the same weights) and the same single-turn samples (the first question and answer: the original's
masking is exact then). Every step is one batch holding all the samples (`--per_device_train_batch_size`
= their number), so each step sees the same samples on both sides and the first step's loss does not
depend on either side's sampler: with equal weights and data it must be equal (in float32 on the CPU;
within bf16 noise on a GPU, where the two sides' attention kernels differ).
- stage 1: `--version plain --tune_mm_mlp_adapter True` on captions (the projector trains);
- stage 2: `--version v1 --image_aspect_ratio pad`, the LLM and projector train.

Shapes (--shape):
- tiny: bench_startup.py's models (random LLaMA, hidden 64, 2 layers, the LLaMA-2 legacy tokenizer; a
  CLIP tower of 16 image tokens), bench_startup's synthetic samples, 12 per step; one thread.
- small / 7b: bench_gpu_stage2.py's shapes (7b: LLaMA-7B, hidden 4096, 32 layers (--layers cuts them),
  vocab 32000, the LLaMA-2 legacy tokenizer; CLIP-L/336: 24 layers, 576 image tokens), random weights
  saved once under --work, built on --device. Samples with mix665k-like lengths (bench_padding.mix_lengths)
  for stage 2 (16 per step, as scripts/v1_5/finetune.sh) and LCS-558K-like captions for stage 1 (32 per
  step, as pretrain.sh), each with one of 8 JPEGs of mixed sizes; nothing is cut at --model_max_length.

Settings: on the CPU both sides use their defaults, this project also with `--packing True`. On a GPU
each side its best: the original `train(attn_implementation="sdpa")` (its train_mem path; flash-attn
cannot be built there), this project `train_mem`'s choice (torch_varlen without flash-attn) with
`--packing True --use_liger_kernel True`; both `--bf16 True --tf32 True --gradient_checkpointing True`,
4 DataLoader workers, the HF Trainer's default AdamW.

The original (llava-torch 1.2.2.post1, transformers 4.37.2) runs in its own venv (--peer; on the CPU
../shared/PEER-ORIGINAL.md says how to build it) or, on the GPU machine, as the machine's python with
the original's wheels installed under `--peer-path` (bench/gpu_wheels.sh fetches them).

Printed per stage and side: the first step's loss (from the Trainer's compute_loss), its difference to
the original's, the median seconds per step over steps 2.. (the first one warms up), real tokens per
second (text + image tokens of the step's samples), MFU (bench_gpu_stage2.model_flops over
--peak-tflops; stage 1 counts the frozen LLM's weights 4x, not 6x: no weight gradients), peak GPU memory,
and the speed against the original.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_stage2 import SHAPES  # noqa: E402
from bench_startup import build_inputs, child_env, peer_side, run_until  # noqa: E402

STEPS_SAMPLES = {"tiny": (12, 12), "small": (16, 8), "7b": (32, 16)}  # (stage 1, stage 2) samples per step
IMAGE_SIZES = [
    (640, 480),
    (500, 375),
    (480, 640),
    (800, 600),
    (640, 427),
    (375, 500),
    (612, 612),
    (1024, 768),
]
WORDS = (
    "the a an of in on with and is are at to from by near under over small large red blue green white black "
    "man woman child dog cat car bus street table chair window tree sky water building room picture people "
    "two three several standing sitting holding looking walking wearing next behind front side top bottom "
    "left right old new bright dark open closed wooden metal glass plate food cup book phone sign light"
).split()
QUESTIONS = (
    "What is shown in the picture? Describe the scene in detail. What are the people doing here?".split("? ")
)

# Either side's python runs it: the first compute_loss's value, the time at each step's end, peak memory.
ENTRY = """
import json, os, sys, time
import llava.train.train as entry
from transformers import Trainer
from transformers.trainer_callback import CallbackHandler

if hasattr(entry, "maybe_zero_3"):  # the original's projector saving imports deepspeed there
    entry.maybe_zero_3 = lambda param, ignore_status=False, name=None: param.detach().cpu().clone()
compute_loss, step_end, ends = Trainer.compute_loss, CallbackHandler.on_step_end, []

def first_loss(self, model, *args, **kwargs):
    out = compute_loss(self, model, *args, **kwargs)
    if not ends and not getattr(self, "_first_printed", False):
        self._first_printed = True
        loss = out[0] if isinstance(out, tuple) else out
        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", "?")
        print(f"FIRST_LOSS {float(loss.detach().float()):.8f} ATTN {attn}", flush=True)
    return out

def timed(self, args, state, control):
    ends.append(time.perf_counter())
    return step_end(self, args, state, control)

Trainer.compute_loss, CallbackHandler.on_step_end = first_loss, timed
kwargs, attn = {}, os.environ.get("BENCH_ATTN", "")
if attn == "auto":  # this project's train_mem choice
    from llava.train.train_mem import pick_attn_implementation
    kwargs["attn_implementation"] = pick_attn_implementation()
elif attn:
    kwargs["attn_implementation"] = attn
entry.train(**kwargs)
print("STEP_ENDS " + json.dumps(ends), flush=True)
import torch
if torch.cuda.is_available():
    print(f"PEAK_MEM {torch.cuda.max_memory_allocated()}", flush=True)
"""


# ------------------------------------------------------------------------------------------ inputs
def single_turn(src: Path, dst: Path, n: int) -> Path:
    """The first `n` samples of `src` with visuals, each cut to its first question and answer."""
    samples = [s for s in json.loads(src.read_text()) if "image" in s][:n]
    for s in samples:
        s["conversations"] = s["conversations"][:2]
    dst.write_text(json.dumps(samples))
    return dst


def fixed_projector(path: Path, vision_width: int, llm_width: int) -> Path:
    """A random mlp2x_gelu projector as stage 1 saves it (`model.mm_projector.{0,2}.*`), seed 0."""
    import torch

    g = torch.Generator().manual_seed(0)
    shapes = {"0.weight": (llm_width, vision_width), "0.bias": (llm_width,), "2.weight": (llm_width, llm_width),
              "2.bias": (llm_width,)}  # fmt: skip
    torch.save(
        {f"model.mm_projector.{k}": torch.randn(*v, generator=g) * 0.05 for k, v in shapes.items()}, path
    )
    return path


def build_models(work: Path, kind: str, layers: int, device: str):
    """(LLM folder, CLIP folder) of bench_gpu_stage2's `kind` shapes, random, built on `device` in bf16
    (float32 on the CPU) and saved once under `work`; the LLM with the LLaMA-2 legacy tokenizer."""
    import torch
    from bench_gpu_stage2 import TOWER
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
    )

    from llava.testing.tiny import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, save_tokenizer

    shape, tower = SHAPES[kind], TOWER[kind]
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    llm, vision = work / f"llm-{kind}-{layers}l", work / f"clip-{kind}"
    torch.manual_seed(0)
    if not (llm / "model.safetensors.index.json").exists() and not (llm / "model.safetensors").exists():
        save_tokenizer(llm, legacy=True)
        tok = AutoTokenizer.from_pretrained(llm)
        cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=shape["hidden"], intermediate_size=shape["inter"],
            num_hidden_layers=layers, num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"],
            max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        )  # fmt: skip
        with torch.device(device):
            AutoModelForCausalLM.from_config(cfg, dtype=dtype).save_pretrained(llm)
    if not (vision / "model.safetensors").exists():
        vcfg = CLIPVisionConfig(
            hidden_size=tower["hidden"], intermediate_size=tower["inter"], num_hidden_layers=tower["layers"],
            num_attention_heads=tower["heads"], image_size=tower["image"], patch_size=tower["patch"],
        )  # fmt: skip
        with torch.device(device):
            AutoModel.from_config(vcfg, dtype=dtype).save_pretrained(vision)
        side = tower["image"]
        CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side},
            image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
        ).save_pretrained(vision)  # fmt: skip
    return llm, vision


def make_images(folder: Path, seed: int = 0) -> list[str]:
    """The 8 JPEGs of IMAGE_SIZES (smooth random colour fields), written once."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for k, (w, h) in enumerate(IMAGE_SIZES):
        name = f"img{k}.jpg"
        if not (folder / name).exists():
            coarse = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(folder / name, quality=90)
        names.append(name)
    return names


def long_samples(stage: str, n: int, kind: str, images: list[str], tokenizer, seed: int = 0) -> list[dict]:
    """`n` single-turn samples with an image: captions (stage 1) or mix665k-like lengths (stage 2)."""
    from bench_gpu_stage2 import TOWER, global_batch

    rng = random.Random(seed)
    tower, max_len = TOWER[kind], SHAPES[kind]["max_len"]
    n_img = (tower["image"] // tower["patch"]) ** 2
    per_word = len(tokenizer(" ".join(WORDS), add_special_tokens=False).input_ids) / len(WORDS)
    targets = [abs(x) for x in global_batch(n, max_len, n_img, seed=seed)]
    out = []
    for i in range(n):
        if stage == "stage 1":
            question, words = (
                "<image>\nWrite a terse but informative summary of the picture.",
                rng.randint(8, 40),
            )
        else:
            question = "<image>\n" + rng.choice(QUESTIONS).rstrip("?") + "?"
            text = max(targets[i] - n_img - 48, 16)  # 48: the v1 template's system prompt and roles
            words = max(min(int(text / per_word), int((max_len - n_img - 96) / per_word)), 4)
        answer = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."
        out.append({"id": f"{stage[-1]}-{i}", "image": images[i % len(images)], "conversations": [
            {"from": "human", "value": question}, {"from": "gpt", "value": answer}]})  # fmt: skip
    return out


def real_tokens(samples: list[dict], stage: str, tokenizer, n_img: int) -> list[int]:
    """Tokens the LLM sees per sample: the rendered prompt's text tokens plus the image's `n_img`."""
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    out = []
    for s in samples:
        human, gpt = (t["value"] for t in s["conversations"])
        if stage == "stage 1":  # plain: the image, the caption, the separator
            prompt = "<image>" + gpt + "\n"
        else:
            conv = conv_templates["v1"].copy()
            conv.append_message(conv.roles[0], human)
            conv.append_message(conv.roles[1], gpt)
            prompt = conv.get_prompt()
        out.append(len(tokenizer_image_token(prompt, tokenizer)) - 1 + n_img)
    return out


def param_counts(llm: Path, vision: Path) -> tuple[int, int]:
    """(LLM parameters without the input embedding, tower parameters), counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llm))
        tower = AutoModel.from_config(AutoConfig.from_pretrained(vision))
    n_llm = sum(p.numel() for p in lm.parameters()) - lm.get_input_embeddings().weight.numel()
    return n_llm, sum(p.numel() for p in tower.parameters())


# ------------------------------------------------------------------------------------------ runs
def stage_argv(stage: str, side, data: Path, images: Path, adapter: Path, out: Path, n: int, gpu: bool,
               max_len: int) -> list[str]:  # fmt: skip
    common = (
        f"--model_name_or_path {side.llm} --data_path {data} --image_folder {images} --vision_tower {side.vision} "
        f"--pretrain_mm_mlp_adapter {adapter} --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 "
        f"--mm_use_im_start_end False --mm_use_im_patch_token False --output_dir {out} "
        f"--per_device_train_batch_size {n} --weight_decay 0. --logging_steps 1 --report_to none "
        f"--model_max_length {max_len} --lazy_preprocess True --save_strategy no --seed 0"
    )
    if stage == "stage 1":
        common += " --version plain --tune_mm_mlp_adapter True --learning_rate 1e-3"
    else:
        common += " --version v1 --image_aspect_ratio pad --learning_rate 2e-5"
    if gpu:
        common += " --bf16 True --tf32 True --gradient_checkpointing True --dataloader_num_workers 4"
    else:
        common += " --dataloader_num_workers 0"
    return common.split()


def run_stage(side, argv: list[str], steps: int, cwd: Path, attn: str, threads) -> dict:
    """The first step's loss, the median seconds of steps 2..`steps`, the attention, peak memory."""
    entry = cwd / "steps.py"
    entry.write_text(ENTRY)
    env = {**child_env(side.path, threads), "BENCH_ATTN": attn}
    _, _, text = run_until(
        [side.python, str(entry), *argv, "--max_steps", str(steps)],
        cwd,
        lambda out: "STEP_ENDS" in out,
        env=env,
    )
    first = re.search(r"FIRST_LOSS ([-0-9.e]+) ATTN (\S+)", text)
    ends = json.loads(re.search(r"STEP_ENDS (\[.*\])", text).group(1))
    peak = re.search(r"PEAK_MEM (\d+)", text)
    return dict(
        loss=float(first.group(1)),
        attn=first.group(2),
        step=statistics.median(b - a for a, b in zip(ends, ends[1:])),
        peak=int(peak.group(1)) / 2**30 if peak else None,
    )


def stage_flops(stage: str, sizes: list[int], kind: str, layers: int, n_llm: int, n_vis: int, n_proj: int):
    """Useful FLOPs of one step (bench_gpu_stage2.model_flops; stage 1: no weight gradients in the LLM)."""
    from bench_gpu_stage2 import TOWER, model_flops

    flops = model_flops(sizes, len(sizes), SHAPES[kind], TOWER[kind], layers, n_llm, n_vis, n_proj)
    return flops - (2 * n_llm * sum(sizes) if stage == "stage 1" else 0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", default="/tmp/peer/bin/python", help="the original's python")
    p.add_argument(
        "--peer-path", default="", help="PYTHONPATH of the original's processes (its wheels' --target)"
    )
    p.add_argument("--ours-path", default="", help="PYTHONPATH prefix of this project's processes")
    p.add_argument("--shape", choices=("tiny", "small", "7b"), default="tiny")
    p.add_argument("--layers", type=int, default=None, help="LLM layers for small / 7b (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--stages", default="stage 1,stage 2")
    p.add_argument("--ours", default=None,
                   help="this project's runs, ';'-separated extra flags (default: CPU '' and '--packing True'; "
                        "GPU '--packing True --use_liger_kernel True')")  # fmt: skip
    p.add_argument("--peak-tflops", type=float, default=790.0)
    p.add_argument("--work", type=Path, default=None, help="folder for the models (default: a temp dir)")
    args = p.parse_args(argv)
    if not Path(args.peer).exists() and not args.peer_path:
        raise SystemExit(f"--peer {args.peer}: no such interpreter (see ../shared/PEER-ORIGINAL.md)")
    gpu = args.device == "cuda"
    variants = args.ours.split(";") if args.ours is not None else (
        ["--packing True --use_liger_kernel True"] if gpu else ["", "--packing True"])  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-vs-original-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = str(Path(__file__).resolve().parents[1])
    inputs, ours = build_inputs(work)  # the tiny kit and samples
    max_len = SHAPES[args.shape]["max_len"]
    if args.shape != "tiny":
        layers = args.layers or SHAPES[args.shape]["layers"]
        llm, vision = build_models(work, args.shape, layers, args.device)
        ours = replace(ours, llm=llm, vision=vision)
    ours = replace(ours, path=":".join(x for x in (args.ours_path, repo) if x))
    original = replace(peer_side(ours, args.peer, work / f"peer-{args.shape}"), path=args.peer_path)
    llm_width = json.loads((ours.llm / "config.json").read_text())["hidden_size"]
    vision_width = json.loads((ours.vision / "config.json").read_text())["hidden_size"]
    adapter = fixed_projector(work / f"mm_projector-{args.shape}.bin", vision_width, llm_width)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ours.llm)
    vcfg = json.loads((ours.vision / "config.json").read_text())
    n_img = (vcfg["image_size"] // vcfg["patch_size"]) ** 2
    stages = [s.strip() for s in args.stages.split(",")]
    data, images, sizes = {}, {}, {}
    for k, stage in enumerate(stages):
        n = STEPS_SAMPLES[args.shape][stage == "stage 2"]
        if args.shape == "tiny":
            src = inputs.data.parent / "pretrain.json" if stage == "stage 1" else inputs.data
            data[stage], images[stage] = single_turn(src, work / f"{stage[-1]}-1turn.json", n), inputs.images
            samples = json.loads(data[stage].read_text())
        else:
            images[stage] = work / "images-mixed"
            samples = long_samples(stage, n, args.shape, make_images(images[stage]), tok, seed=k)
            data[stage] = work / f"{args.shape}-{stage[-1]}.json"
            data[stage].write_text(json.dumps(samples))
        sizes[stage] = real_tokens(samples, stage, tok, n_img)
    n_llm, n_vis = param_counts(ours.llm, ours.vision)
    n_proj = vision_width * llm_width + llm_width * llm_width + 2 * llm_width
    layers = json.loads((ours.llm / "config.json").read_text())["num_hidden_layers"]
    print(f"{args.shape} shapes: LLM {layers} layers, {n_llm / 1e9:.2f}B params without the input embedding; "
          f"tower {n_vis / 1e6:.1f}M, {n_img} image tokens; {args.device}", flush=True)  # fmt: skip

    cwd = work / "run"
    cwd.mkdir(exist_ok=True)
    threads = None if gpu else 1
    rows = []
    for stage in stages:
        n = STEPS_SAMPLES[args.shape][stage == "stage 2"]
        tokens = sum(sizes[stage])
        flops = stage_flops(stage, sizes[stage], args.shape, layers, n_llm, n_vis, n_proj)
        print(f"{stage}: {n} samples per step, {tokens} real tokens", flush=True)
        got = {}
        runs = [(original, "", "sdpa" if gpu else "")] + [(ours, v, "auto" if gpu else "") for v in variants]
        for side, extra, attn in runs:
            name = f"{side.name}{' ' + extra if extra else ''}"
            out = cwd / f"out-{stage[-1]}-{len(got)}"
            argv_ = stage_argv(stage, side, data[stage], images[stage], adapter, out, n, gpu, max_len)
            r = got[name] = run_stage(side, argv_ + extra.split(), args.steps, cwd, attn, threads)
            peak = f", peak {r['peak']:.1f} GiB" if r["peak"] else ""
            print(f"{stage} {name:45s} first loss {r['loss']:.8f}  {r['step'] * 1e3:8.1f} ms/step "
                  f"({r['attn']}{peak})", flush=True)  # fmt: skip
        base = got[original.name]
        for name, r in got.items():
            mfu = f"{flops / r['step'] / (args.peak_tflops * 1e12):.1%}" if flops and gpu else "-"
            peak = f"{r['peak']:.1f}" if r["peak"] else "-"
            rows.append(f"| {stage} | {name} | {r['attn']} | {r['loss']:.8f} | {r['loss'] - base['loss']:+.1e} | "
                        f"{r['step'] * 1e3:.1f} | {tokens / r['step']:.0f} | {mfu} | {peak} | "
                        f"{base['step'] / r['step']:.2f}x |")  # fmt: skip
    print()
    print("| stage | side | attention | first-step loss | vs original | ms per step (median of steps 2..) | "
          "tokens/s | MFU | peak GiB | speed vs original |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
