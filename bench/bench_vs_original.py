"""Training steps side by side with the original LLaVA (issue 21): same model, same samples, both stages.

    .venv/bin/python bench/bench_vs_original.py [--peer /tmp/peer/bin/python] [--steps 6] [--work DIR]

The CPU harness at tiny scale (the GPU run at LLaMA-7B / CLIP-L/336 shapes is bench_gpu_stage2.py's;
it needs a GPU machine). Each side runs as a fresh process, one thread, on the models of
bench_startup.py (random LLaMA, hidden 64, 2 layers, the LLaMA-2 legacy tokenizer; a CLIP tower of 16
image tokens; folders made readable to the original there) and one fixed random mlp2x_gelu projector
(`--pretrain_mm_mlp_adapter`, so both start from the same weights): the original (llava-torch
1.2.2.post1, transformers 4.37.2, its own venv: ../shared/PEER-ORIGINAL.md) with its defaults (SDPA,
padded batches), this project with `--packing True` (its best setting on the CPU; Liger and flash
attention are GPU-only). The samples are single-turn (the first question and answer of each synthetic
sample: the original's masking is exact then), every step one batch holding all of them
(`--per_device_train_batch_size` = the number of samples), so that the first step's loss does not
depend on either side's sampler: with equal weights and data it must be equal.
- stage 1: `--version plain --tune_mm_mlp_adapter True` on the captions (the projector trains);
- stage 2: `--version v1 --image_aspect_ratio pad`, the LLM and projector train.
Printed: the first step's loss on each side (to 8 decimals, taken from the Trainer's compute_loss),
their difference, and the median seconds per step over steps 2.. (the first one warms up), as a ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_startup import build_inputs, peer_side, run_until  # noqa: E402

N_SAMPLES = 12

# Either side's python runs it: the first compute_loss's value, and the time at each step's end.
ENTRY = """
import json, sys, time
import llava.train.train as entry
from transformers import Trainer
from transformers.trainer_callback import CallbackHandler

if hasattr(entry, "maybe_zero_3"):  # the original's projector saving imports deepspeed there
    entry.maybe_zero_3 = lambda param, ignore_status=False, name=None: param.detach().cpu().clone()
compute_loss, step_end, ends = Trainer.compute_loss, CallbackHandler.on_step_end, []

def first_loss(self, *args, **kwargs):
    out = compute_loss(self, *args, **kwargs)
    if not ends and not getattr(self, "_first_printed", False):
        self._first_printed = True
        loss = out[0] if isinstance(out, tuple) else out
        print(f"FIRST_LOSS {float(loss.detach().float()):.8f}", flush=True)
    return out

def timed(self, args, state, control):
    ends.append(time.perf_counter())
    return step_end(self, args, state, control)

Trainer.compute_loss, CallbackHandler.on_step_end = first_loss, timed
entry.train()
print("STEP_ENDS " + json.dumps(ends), flush=True)
"""


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
    torch.save({f"model.mm_projector.{k}": torch.randn(*v, generator=g) * 0.05 for k, v in shapes.items()}, path)
    return path


def stage_argv(stage: str, side, data: Path, images: Path, adapter: Path, out: Path, packing: bool) -> list[str]:
    common = (
        f"--model_name_or_path {side.llm} --data_path {data} --image_folder {images} --vision_tower {side.vision} "
        f"--pretrain_mm_mlp_adapter {adapter} --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 "
        f"--mm_use_im_start_end False --mm_use_im_patch_token False --output_dir {out} "
        f"--per_device_train_batch_size {N_SAMPLES} --learning_rate 1e-3 --weight_decay 0. "
        "--logging_steps 1 --report_to none --model_max_length 256 --dataloader_num_workers 0 "
        "--lazy_preprocess True --save_strategy no --seed 0"
    )
    if stage == "stage 1":
        common += " --version plain --tune_mm_mlp_adapter True"
    else:
        common += " --version v1 --image_aspect_ratio pad"
    if packing:
        common += " --packing True"
    return common.split()


def run_stage(side, argv: list[str], steps: int, cwd: Path) -> tuple[float, float]:
    """(the first step's loss, the median seconds of steps 2..`steps`)."""
    entry = cwd / "steps.py"
    entry.write_text(ENTRY)
    _, _, text = run_until(
        [side.python, str(entry), *argv, "--max_steps", str(steps)], cwd, lambda out: "STEP_ENDS" in out
    )
    loss = float(re.search(r"FIRST_LOSS ([-0-9.e]+)", text).group(1))
    ends = json.loads(re.search(r"STEP_ENDS (\[.*\])", text).group(1))
    return loss, statistics.median(b - a for a, b in zip(ends, ends[1:]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", default="/tmp/peer/bin/python", help="the original's python")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--work", type=Path, default=None, help="folder for the models (default: a temp dir)")
    args = p.parse_args(argv)
    if not Path(args.peer).exists():
        raise SystemExit(f"--peer {args.peer}: no such interpreter (see ../shared/PEER-ORIGINAL.md)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-vs-original-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs, ours = build_inputs(work)
    original = peer_side(ours, args.peer, work)
    llm_width = json.loads((ours.llm / "config.json").read_text())["hidden_size"]
    vision_width = json.loads((ours.vision / "config.json").read_text())["hidden_size"]
    adapter = fixed_projector(work / "mm_projector.bin", vision_width, llm_width)
    data = {
        "stage 1": single_turn(inputs.data.parent / "pretrain.json", work / "pretrain-1turn.json", N_SAMPLES),
        "stage 2": single_turn(inputs.data, work / "finetune-1turn.json", N_SAMPLES),
    }
    cwd = work / "run"
    cwd.mkdir(exist_ok=True)
    rows = []
    for stage in ("stage 1", "stage 2"):
        got = {}
        for side, packing in ((original, False), (ours, False), (ours, True)):
            name = f"{side.name}{' --packing True' if packing else ''}"
            out = cwd / f"out-{stage[-1]}-{len(got)}"
            got[name] = run_stage(side, stage_argv(stage, side, data[stage], inputs.images, adapter, out, packing),
                                  args.steps, cwd)  # fmt: skip
            print(f"{stage} {name:28s} first loss {got[name][0]:.8f}  {got[name][1] * 1e3:7.1f} ms/step", flush=True)
        base_loss, base_step = got[f"{original.name}"]
        for name, (loss, step) in got.items():
            rows.append(f"| {stage} | {name} | {loss:.8f} | {loss - base_loss:+.1e} | {step * 1e3:.1f} | "
                        f"{base_step / step:.2f}x |")  # fmt: skip
    print()
    print("| stage | side | first-step loss | vs original | ms per step (median of steps 2..) | speed vs original |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
