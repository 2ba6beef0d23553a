"""lmms-eval's ``llava`` model class drives this package (its imports of the original's public names).

Runs only where lmms-eval is installed (skipped otherwise; see docs/Evaluation.md, "lmms-eval", for
the CPU install). lmms-eval answers a small local task on a tiny saved LLaVA checkpoint, and its
answers must be exactly what this project's own runner (``llava.eval.model_vqa``) gives.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("lmms_eval")
datasets = pytest.importorskip("datasets")

pytestmark = pytest.mark.slow

QUESTION = "What colour is it?\nAnswer the question using a single word or phrase."
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}

TASK_YAML = """\
task: tiny_vqa
dataset_path: {data}
dataset_kwargs:
  load_from_disk: True
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = f"""\
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return {QUESTION!r}
"""


def test_lmms_eval_llava_model_matches_our_runner(tiny_kit, tmp_path):
    from PIL import Image

    from llava.eval.model_vqa import main as model_vqa
    from llava.testing.tiny import save_tiny_llava

    ckpt = save_tiny_llava(tiny_kit, tmp_path / "llava-v1.5-tiny")
    (tmp_path / "images").mkdir()
    images = []
    for i, colour in enumerate(COLOURS.values()):
        images.append(Image.new("RGB", (32 + 8 * i, 24), colour))
        images[-1].save(tmp_path / "images" / f"{i}.png")
    features = datasets.Features({"answer": datasets.Value("string"), "image": datasets.Image()})
    data = datasets.Dataset.from_dict({"answer": list(COLOURS), "image": images}, features=features)
    datasets.DatasetDict({"test": data}).save_to_disk(str(tmp_path / "data"))
    task_dir = tmp_path / "tasks" / "tiny_vqa"
    task_dir.mkdir(parents=True)
    (task_dir / "tiny_vqa.yaml").write_text(TASK_YAML.format(data=tmp_path / "data"))
    (task_dir / "utils.py").write_text(textwrap.dedent(TASK_UTILS))

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "llava",
           "--model_args", f"pretrained={ckpt},device=cpu,device_map=auto,conv_template=vicuna_v1",
           "--tasks", "tiny_vqa", "--include_path", str(tmp_path / "tasks"), "--batch_size", "1",
           "--log_samples", "--output_path", str(tmp_path / "out")]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    samples = sorted((tmp_path / "out").rglob("*_samples_tiny_vqa.jsonl"))
    assert samples, f"lmms-eval wrote no samples file: {run.stderr[-3000:]}"
    theirs = {}
    for line in samples[0].read_text().splitlines():
        s = json.loads(line)
        resp = s["filtered_resps"]
        theirs[s["doc_id"]] = resp[0] if isinstance(resp, list) else resp

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": f"{i}.png", "text": QUESTION}) + "\n"
                                 for i in range(len(COLOURS))))  # fmt: skip
    answers = tmp_path / "answers.jsonl"
    model_vqa(["--model-path", str(ckpt), "--question-file", str(questions),
               "--image-folder", str(tmp_path / "images"), "--answers-file", str(answers),
               "--conv-mode", "vicuna_v1", "--temperature", "0",
               "--max_new_tokens", "8", "--device", "cpu"])  # fmt: skip
    ours = {a["question_id"]: a["text"] for a in map(json.loads, answers.read_text().splitlines())}
    assert len(theirs) == 3 and all(theirs.values())  # the tiny model says something for every image
    assert theirs == ours
    assert len(set(ours.values())) > 1  # the image reaches the model: different pictures, different answers
