"""The embedded default: a tiny LLaVA trained end to end on the CPU, then asked about pictures.

    bash scripts/demo.sh                 # set-up, then this module with its defaults
    python -m llava.demo --quick         # a shorter run (fewer samples, one epoch per stage)
    python -m llava.demo --task multi_image | video   # what one picture cannot answer (llava/demo_tasks.py)

Steps, each through the same entry points the real recipes and users run:
  1. data     python -m llava.data.synthetic (coloured shapes; LCS-558K / mix665k JSON formats)
  2. models   a small tokenizer fitted to that text, a random tiny LLaMA, and a tiny CLIP tower given
              useful features by a brief classifier pre-training on the training pictures
              (llava/data/tools/synthetic_tower.py; real LLaVA starts from a pre-trained CLIP)
  3. stage 1  bash scripts/tiny/pretrain.sh   (projector only, plain template -> mm_projector.bin)
  4. stage 2  bash scripts/tiny/finetune.sh   (v1 template, LLM + projector + tower trained)
  5. eval     python -m llava.eval.model_vqa_loader on the held-out pictures, greedy -> accuracy
              (both eval and chat use the template stage 2 saved in config.json, conv_template)
  6. chat     python -m llava.serve.cli about waterview.jpg, question given on stdin

The other tasks (--task multi_image: two pictures compared; --task video: a moving dot's direction)
take the same steps with their data (llava/data/tools/synthetic_multi.py) and the flags of
llava/demo_tasks.py appended to the scripts; their chat is about the first held-out question's visuals.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from llava.demo_tasks import PICTURE, TASKS, expand

REPO = Path(__file__).resolve().parents[1]
__all__ = ["PICTURE", "accuracy", "build_models", "main"]


def _run(cmd: list[str], env: dict, stdin: str | None = None, capture: bool = False) -> str:
    print("$ " + " ".join(cmd), flush=True)
    res = subprocess.run(
        cmd, cwd=REPO, env=env, input=stdin, text=True, stdout=subprocess.PIPE if capture else None
    )
    if res.returncode != 0:
        raise SystemExit(f"demo step failed (exit {res.returncode}): {' '.join(cmd)}")
    return res.stdout or ""


def _norm(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower()).strip()


def accuracy(questions: Path, answers: Path) -> tuple[float, dict[str, float]]:
    """Exact-match accuracy of the answers (case and punctuation ignored), overall and per category."""
    truth = {q["question_id"]: q for q in map(json.loads, questions.read_text().splitlines())}
    hits: dict[str, list[bool]] = {}
    for a in map(json.loads, answers.read_text().splitlines()):
        q = truth[a["question_id"]]
        hits.setdefault(q["category"], []).append(_norm(a["text"]) == _norm(q["answer"]))
    per = {k: sum(v) / len(v) for k, v in sorted(hits.items())}
    flat = [h for v in hits.values() for h in v]
    return sum(flat) / max(1, len(flat)), per


def build_models(
    data_paths: dict, models: Path, tower_steps: int, tower_patch: int = 6, pretrain_tower=None
) -> None:
    """Tokenizer, tiny LLaMA and tiny CLIP tower under `models`; the tower pre-trained by `pretrain_tower`
    (default: llava.data.tools.synthetic_tower's colour / shape / place classifier)."""
    from llava.conversation import conv_templates
    from llava.data.tools.synthetic import corpus

    if pretrain_tower is None:
        from llava.data.tools.synthetic_tower import pretrain_tower
    from llava.testing.tiny import build_small_tokenizer, make_tiny_clip, make_tiny_llm

    if (models / "tiny-llama" / "config.json").exists() and (models / "tiny-clip" / "READY").exists():
        print(f"[demo] reusing the tiny models in {models}")
        return
    chat = conv_templates["v1"]
    texts = corpus(data_paths) + [f"{chat.system} {chat.roles[0]}: {chat.roles[1]}:"] * 3000
    tok = build_small_tokenizer(models / "tokenizer", vocab_size=600, texts=texts)
    make_tiny_llm(
        models / "tiny-llama", tokenizer_dir=tok, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4,
        intermediate_size=256, max_position_embeddings=512,
    )  # fmt: skip
    tower = make_tiny_clip(
        models / "tiny-clip", image_size=48, patch_size=tower_patch, hidden_size=64, num_layers=3, num_heads=4
    )
    acc = pretrain_tower(
        tower, data_paths["pretrain"], data_paths["images"], select_layer=-2, steps=tower_steps
    )
    print(f"[demo] tiny CLIP tower pre-trained ({tower_steps} steps, training accuracy {acc:.0%})")
    (tower / "READY").write_text("pre-trained\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Tiny end-to-end LLaVA demo on the CPU.")
    ap.add_argument("--task", choices=list(TASKS), default="default",
                    help="default: one picture; multi_image: two pictures compared; video: a moving dot")  # fmt: skip
    ap.add_argument(
        "--out", default=None, help="working folder (default: ./demo_out, ./demo_out/TASK for the others)"
    )
    ap.add_argument(
        "--n-train", type=int, default=None, help="training samples (default task: 2000 pictures)"
    )
    ap.add_argument("--n-eval", type=int, default=None, help="held-out questions (default task: 300)")
    ap.add_argument("--epochs", type=float, default=None, help="stage-2 epochs (default task: 3)")
    ap.add_argument(
        "--tower-steps", type=int, default=None, help="tiny CLIP pre-training steps (default task: 400)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a short run: fewer samples and steps (default task: 600 pictures)",
    )
    ap.add_argument(
        "--question",
        default=None,
        help="the closing chat's question (default task: asked about waterview.jpg)",
    )
    args = ap.parse_args(argv)
    task = TASKS[args.task]
    sizes = task.quick if args.quick else task.sizes
    for key in ("n_train", "n_eval", "epochs", "tower_steps"):
        if args.quick or getattr(args, key) is None:
            setattr(args, key, getattr(sizes, key))
    args.question = args.question or task.question
    args.out = args.out or str(REPO / "demo_out" / ("" if task.name == "default" else task.name))

    import torch

    out = Path(args.out).resolve()
    data, models, ckpt = out / "data", out / "models", out / "checkpoints"
    env = dict(os.environ, DATA=str(data), MODELS=str(models), OUT=str(ckpt), LAUNCH=sys.executable)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    # Tiny matrices: one thread per process is faster than several fighting over a laptop's cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    times: dict[str, float] = {}

    t = time.time()
    print(f"[demo] 1/6 data: {args.n_train} training and {args.n_eval} held-out {task.unit} in {data}")
    paths = task.generate(data, n_train=args.n_train, n_eval=args.n_eval)
    print(f"[demo] 2/6 tiny models in {models}")
    build_models(paths, models, args.tower_steps, task.tower_patch, task.tower_pretrain)
    times["data + models"] = time.time() - t

    t = time.time()
    print("[demo] 3/6 stage 1: projector pre-training (scripts/tiny/pretrain.sh)")
    _run(["bash", "scripts/tiny/pretrain.sh", *expand(task.stage1_flags, data)], env)
    times["stage 1"] = time.time() - t

    t = time.time()
    print("[demo] 4/6 stage 2: visual instruction tuning (scripts/tiny/finetune.sh)")
    _run(
        [
            "bash",
            "scripts/tiny/finetune.sh",
            "--num_train_epochs",
            str(args.epochs),
            *expand(task.stage2_flags, data),
            *(expand(task.quick_stage2_flags, data) if args.quick else []),
        ],
        env,
    )
    times["stage 2"] = time.time() - t
    model = ckpt / "tiny-finetune"

    t = time.time()
    print("[demo] 5/6 held-out evaluation (greedy, llava.eval.model_vqa_loader)")
    answers = out / "eval_answers.jsonl"
    _run(
        [sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", str(model),
         "--question-file", str(paths["eval"]), *task.eval_flags(paths),
         "--answers-file", str(answers), "--temperature", "0",
         "--max_new_tokens", "8", "--batch-size", "16", "--device", "cpu", "--overwrite"],
        env,
    )  # fmt: skip
    acc, per = accuracy(paths["eval"], answers)
    times["evaluation"] = time.time() - t

    t = time.time()
    visuals = task.chat_flags(paths)
    print(
        f"[demo] 6/6 chat through the CLI about {', '.join(Path(v).name for v in visuals[1::2])}: {args.question!r}"
    )
    reply = _run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", str(model), *visuals,
         "--device", "cpu", "--temperature", "0", "--max-new-tokens", "16"],
        env, stdin=args.question + "\n", capture=True,
    )  # fmt: skip
    print(reply.strip())
    times["chat"] = time.time() - t

    print("\n[demo] summary")
    for k, v in times.items():
        print(f"  {k:14s} {v:7.1f} s")
    print(f"  {'total':14s} {sum(times.values()):7.1f} s")
    print(
        f"  held-out accuracy {acc:.1%} on {args.n_eval} questions ("
        + ", ".join(f"{k} {v:.0%}" for k, v in per.items())
        + ")"
        + ("" if task.name == "default" else f", chance {task.chance:.0%}")
    )
    print(f"  stage 1 projector  {ckpt / 'tiny-pretrain' / 'mm_projector.bin'}")
    print(f"  stage 2 model      {model}")
    print(f"  answers            {answers}")
    return {"accuracy": acc, "per_category": per, "times": times, "model": str(model), "task": task.name}


if __name__ == "__main__":
    main()
