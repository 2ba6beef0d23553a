"""`python -m llava.serve.cli` driven through stdin: two turns about waterview.jpg."""

import ast
import os
import subprocess
import sys

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from tests.serve.stack import REPO, WATERVIEW

pytestmark = pytest.mark.slow


def run_cli(args, stdin, timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def _debug_records(stdout: str) -> list[dict]:
    return [ast.literal_eval(line) for line in stdout.splitlines() if line.startswith("{'prompt'")]


def test_two_turns_about_waterview(tiny_llava):
    args = ["--model-path", str(tiny_llava), "--image-file", str(WATERVIEW), "--device", "cpu"]
    args += ["--temperature", "0", "--max-new-tokens", "8", "--debug"]
    r = run_cli(args, "What is in the picture?\nIs the water calm?\n")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    turns = [line for line in out.splitlines() if line.startswith("USER: ")]
    assert len(turns) == 3 and all(t.startswith("USER: ASSISTANT: ") for t in turns[:2]), out
    assert turns[2] == "USER: exit..."
    first, second = _debug_records(out)
    # Template inferred from the name (llava-v1.5-* -> llava_v1); the image only in the first turn.
    assert first["prompt"].endswith("USER: <image>\nWhat is in the picture? ASSISTANT:")
    answer1 = first["outputs"].strip()
    assert second["prompt"].endswith(
        f"<image>\nWhat is in the picture? ASSISTANT: {answer1}</s>USER: Is the water calm? ASSISTANT:"
    )
    assert second["prompt"].count("<image>") == 1

    # The streamed answer is what plain greedy `generate` gives for the same prompt and image.
    from PIL import Image

    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tok, model, proc, _ = load_pretrained_model(str(tiny_llava), None, device="cpu")
    ids = tokenizer_image_token(first["prompt"], tok, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 1
    image = Image.open(WATERVIEW).convert("RGB")
    pixels = process_images([image], proc, model.config)
    with torch.inference_mode():
        new = model.generate(ids, images=pixels, image_sizes=[image.size], do_sample=False, max_new_tokens=8)
    expected = tok.decode(new[0], skip_special_tokens=False).split("</s>")[0].strip()
    assert answer1 == expected


def test_missing_image_file_is_a_clear_error(tmp_path):
    r = run_cli(["--model-path", str(tmp_path), "--image-file", str(tmp_path / "nope.jpg")], "", timeout=60)
    assert r.returncode != 0 and "nope.jpg: cannot read it" in r.stderr
