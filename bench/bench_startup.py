"""Start-up time on the CPU: launch -> first training step, launch -> first answer; this project vs the original.

    .venv/bin/python bench/bench_startup.py [--peer /tmp/peer/bin/python] [--repeats 3] [--work DIR]

Both sides run as fresh processes on the same tiny models (random LLaMA with the LLaMA-2 legacy
tokenizer, hidden 64, 2 layers; CLIP tower of 16 image tokens; mlp2x_gelu projector), one thread
(OMP_NUM_THREADS=1), offline, from a neutral working directory:
- import: `import llava.train.train` (the training module) and nothing else; its seconds inside the
  process;
- first step: the stage-2 command (`--version v1 --image_aspect_ratio pad --group_by_modality_length
  True`, batch 4, no DeepSpeed) through each side's entry point, as `python -m` runs it (this
  project's `llava.train.train_mem`, which scripts/v1_5/*.sh launch; the original's
  `llava.train.train`, since its train_mem needs flash-attn), from launch until the Trainer begins
  step 0 (`CallbackHandler.on_step_begin`, patched by an import hook, prints a marker and ends the
  process);
- first answer: `python -m llava.serve.cli --device cpu --temperature 0 --max-new-tokens 32` on a tiny
  LLaVA-1.5 checkpoint and one image, one question on stdin, from launch until the answer has been
  streamed (the next turn's prompt appears).
Seconds are wall time (median of --repeats, the two sides interleaved) and the process's CPU seconds
(user + system, read from /proc at that moment: less disturbed by other load on a shared machine),
neither counting the interpreter's shutdown. The original (llava-torch 1.2.2.post1, transformers
4.37.2) runs in its own venv (--peer; ../shared/PEER-ORIGINAL.md says how to build it), on copies of
the same models made readable to it: the LLaMA-2 tokenizer with its tokenizer.model (it loads with
use_fast=False), the tower's keys under `vision_model.`, folder names with "llava". Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEGACY_TOKENIZER = REPO / "tests" / "fixtures" / "tokenizers" / "llama2-legacy"
QUESTION = "What is in the image?"

# Run as a script by either side's python, with the training module to run as its first argument (as
# `python -m MODULE ...`): the first moment the Trainer starts a step ends the run. The patch goes in
# when transformers.trainer_callback is first imported (an import hook), not by importing it here: the
# run's imports happen where its entry point makes them.
TRAIN_ENTRY = """
import os, runpy, sys
from importlib.machinery import PathFinder

class FirstStepEnds:
    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer_callback":
            return None
        spec = PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)

            def first_step(self, args, state, control):
                sys.stdout.write("FIRST_STEP\\n")
                sys.stdout.flush()
                os._exit(0)

            module.CallbackHandler.on_step_begin = first_step

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, FirstStepEnds())
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""

IMPORT_ENTRY = """
import os, time
t = time.perf_counter()
import llava.train.train
print(f"IMPORT {time.perf_counter() - t:.6f}", flush=True)
os._exit(0)
"""


@dataclass
class Side:
    """One side's interpreter and the model folders it opens."""

    name: str
    python: str
    llm: Path
    vision: Path
    checkpoint: Path
    path: str = ""  # PYTHONPATH of its processes: packages installed with `pip --target` (the GPU run)
    train_module: str = "llava.train.train_mem"  # what scripts/v1_5/*.sh launch


@dataclass
class Inputs:
    data: Path
    images: Path
    image: Path


# ------------------------------------------------------------------------------------------ inputs
def build_inputs(work: Path) -> tuple[Inputs, Side]:
    """The tiny kit, the synthetic stage-2 data and a tiny LLaVA-1.5 checkpoint (this project's side)."""
    from llava.data.tools.synthetic import generate
    from llava.testing.tiny import make_tiny_kit, save_tiny_llava

    kit = make_tiny_kit(work / "kit", legacy=True)
    paths = generate(work / "data", n_train=16, n_eval=0, text_only_fraction=0.25, seed=0, progress=False)
    checkpoint = save_tiny_llava(kit, work / "llava-v1.5-tiny")
    images = work / "data" / "images"
    image = sorted(images.iterdir())[0]
    ours = Side("this project", sys.executable, kit.llm, kit.vision, checkpoint)
    return Inputs(paths["finetune"], images, image), ours


def _with_legacy_tokenizer(src: Path, dst: Path) -> None:
    """A copy of model folder `src` whose tokenizer files are the LLaMA-2 ones, tokenizer.model included
    (its weight files linked, not copied: a 7B model's are 13 GB)."""
    shutil.copytree(src, dst, copy_function=_link_weights)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dst / name).unlink(missing_ok=True)
    for f in LEGACY_TOKENIZER.iterdir():
        shutil.copy(f, dst / f.name)


def _link_weights(src: str, dst: str) -> None:
    if src.endswith((".safetensors", ".bin")):
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copy2(src, dst)


def _rekeyed_tower(src: Path, dst: Path) -> None:
    """A copy of CLIP tower folder `src` with the `vision_model.` key prefix transformers 4.37 expects."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    save_file(
        {f"vision_model.{k}": v for k, v in weights.items()}, dst / "model.safetensors", {"format": "pt"}
    )


def peer_side(ours: Side, python: str, work: Path) -> Side:
    """The original's copies of `ours`' folders (built once under `work`)."""
    llm, vision, checkpoint = work / "peer-llm", work / "peer-clip", work / "peer-llava-v1.5-tiny"
    if not (llm / "tokenizer.model").exists():
        _with_legacy_tokenizer(ours.llm, llm)
    if not (vision / "model.safetensors").exists():
        _rekeyed_tower(ours.vision, vision)
    if not (checkpoint / "tokenizer.model").exists():
        _with_legacy_tokenizer(ours.checkpoint, checkpoint)
        config = json.loads((checkpoint / "config.json").read_text())
        config["mm_vision_tower"] = str(vision)  # its builder loads the tower from this folder
        (checkpoint / "config.json").write_text(json.dumps(config, indent=2))
    # its train_mem.py asks for flash-attention 2, which cannot be built here: its train.py's __main__
    return Side("original", python, llm, vision, checkpoint, train_module="llava.train.train")


# ------------------------------------------------------------------------------------------ runs
def child_env(path: str = "", threads: int | None = 1) -> dict[str, str]:
    """A side's environment: offline, `threads` threads (None: the machine's), `path` as PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if path:
        env["PYTHONPATH"] = path
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads is None:
            env.pop(name, None)
        else:
            env[name] = str(threads)
    env.update(
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",  # (the CLI's answer reaches the pipe as it is streamed)
    )
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far (Linux /proc; a zombie still has them)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_until(cmd: list[str], cwd: Path, seen, stdin: str = "", env=None) -> tuple[float, float, str]:
    """Runs `cmd` to its end; (seconds from launch until its stdout first satisfied `seen(text)`, the
    process's CPU seconds at that moment, its stdout). The moment, not the exit: the interpreter's
    shutdown after it is no part of start-up. `env`: the process's environment (default child_env())."""
    err = tempfile.TemporaryFile(mode="w+")
    launched = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env or child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
    )
    proc.stdin.write(stdin.encode())
    proc.stdin.close()
    out, at, cpu = b"", None, None
    while chunk := os.read(proc.stdout.fileno(), 1 << 16):
        out += chunk
        if at is None and seen(out.decode(errors="replace")):
            at, cpu = time.perf_counter() - launched, cpu_seconds(proc.pid)
    proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0 or at is None:
        err.seek(0)
        raise RuntimeError(
            f"{' '.join(map(str, cmd[:4]))} ... exited {proc.returncode}:\n{text[-2000:]}\n{err.read()[-3000:]}"
        )
    return at, cpu, text


def stage2_argv(side: Side, inputs: Inputs, out: Path) -> list[str]:
    return (
        f"--model_name_or_path {side.llm} --version v1 --data_path {inputs.data} --image_folder {inputs.images} "
        f"--vision_tower {side.vision} --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 "
        "--mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad "
        f"--group_by_modality_length True --output_dir {out} --per_device_train_batch_size 4 "
        "--learning_rate 2e-3 --max_steps 1 --logging_steps 1 --report_to none --model_max_length 256 "
        "--dataloader_num_workers 0 --lazy_preprocess True --save_strategy no"
    ).split()


def run_import(side: Side, cwd: Path) -> tuple[float, float]:
    """(seconds `import llava.train.train` took inside the process, the process's CPU seconds then)."""
    _, cpu, text = run_until([side.python, "-c", IMPORT_ENTRY], cwd, lambda out: "IMPORT " in out)
    return float(re.search(r"IMPORT ([0-9.]+)", text).group(1)), cpu


def run_first_step(side: Side, inputs: Inputs, cwd: Path) -> tuple[float, float]:
    """(launch -> the Trainer begins its first step, CPU seconds then)."""
    entry = cwd / "first_step.py"
    entry.write_text(TRAIN_ENTRY)
    out = cwd / f"out-{side.name.replace(' ', '-')}"
    cmd = [side.python, str(entry), side.train_module, *stage2_argv(side, inputs, out)]
    at, cpu, _ = run_until(cmd, cwd, lambda text: "FIRST_STEP" in text)
    return at, cpu


def answered(text: str) -> bool:
    """The CLI has streamed its first answer: the prompt for the next turn follows it."""
    return "USER:" in text.split("ASSISTANT:", 1)[1] if "ASSISTANT:" in text else False


def run_first_answer(side: Side, inputs: Inputs, cwd: Path) -> tuple[float, float, str]:
    """(launch -> the CLI has streamed its answer to one question, CPU seconds then, the answer)."""
    cmd = [side.python, "-m", "llava.serve.cli", "--model-path", str(side.checkpoint), "--image-file"]
    cmd += [str(inputs.image), *"--device cpu --temperature 0 --max-new-tokens 32".split()]
    at, cpu, text = run_until(cmd, cwd, answered, stdin=QUESTION + "\n")
    return at, cpu, text.split("ASSISTANT:", 1)[1].split("USER:", 1)[0].strip()


# ------------------------------------------------------------------------------------------ report
def summary(samples: list[tuple[float, ...]]) -> tuple[float, float]:
    """Median wall and median CPU seconds of `samples` (wall, cpu, ...)."""
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def table(results: dict[str, dict[str, list]], sides: list[Side]) -> str:
    """Markdown: per measure, each side's median wall and CPU seconds (and ours / the original's)."""
    names = [s.name for s in sides]
    head = "| measure | " + " | ".join(f"{n} wall s | {n} CPU s" for n in names) + " |"
    if len(names) == 2:
        head += " wall ratio | CPU ratio |"
    rows = [head, "|" + " --- |" * (head.count("|") - 1)]
    for measure, per_side in results.items():
        medians = {n: summary(per_side[n]) for n in names}
        row = (
            f"| {measure} | " + " | ".join(f"{medians[n][0]:.2f} | {medians[n][1]:.2f}" for n in names) + " |"
        )
        if len(names) == 2:
            ours, original = medians[names[0]], medians[names[1]]
            row += f" {ours[0] / original[0]:.2f}x | {ours[1] / original[1]:.2f}x |"
        rows.append(row)
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", default="/tmp/peer/bin/python", help="the original's python ('' to skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="folder for the models (default: a temp dir)")
    parser.add_argument("--measures", default="import,first step,first answer")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs, ours = build_inputs(work)
    sides = [ours]
    if args.peer:
        if not Path(args.peer).exists():
            raise SystemExit(f"--peer {args.peer}: no such interpreter (see ../shared/PEER-ORIGINAL.md)")
        sides.append(peer_side(ours, args.peer, work))
    cwd = work / "run"
    cwd.mkdir(exist_ok=True)
    measures = [m.strip() for m in args.measures.split(",")]
    runners = {
        "import": lambda side: run_import(side, cwd),
        "first step": lambda side: run_first_step(side, inputs, cwd),
        "first answer": lambda side: run_first_answer(side, inputs, cwd),
    }
    results = {m: {s.name: [] for s in sides} for m in measures}
    for rep in range(args.repeats):
        for measure in measures:
            for side in sides:
                sample = runners[measure](side)
                results[measure][side.name].append(sample)
                extra = f" answer {sample[2][:60]!r}" if len(sample) > 2 else ""
                print(
                    f"[{rep + 1}/{args.repeats}] {measure:12s} {side.name:13s} wall {sample[0]:6.2f} s  "
                    f"CPU {sample[1]:6.2f} s{extra}",
                    flush=True,
                )
    print()
    print(table(results, sides))


if __name__ == "__main__":
    main()
