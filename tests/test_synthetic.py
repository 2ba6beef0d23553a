"""The synthetic shapes dataset: real LLaVA formats, answers that match the pictures."""

import json

import numpy as np
import pytest
from PIL import Image

from llava.data.tools.synthetic import COLOURS, QUESTIONS, corpus, generate, main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), n_train=40, n_eval=12, seed=3, progress=False)


def test_formats(data):
    pretrain = json.loads(data["pretrain"].read_text())
    finetune = json.loads(data["finetune"].read_text())
    evaluation = [json.loads(line) for line in data["eval"].read_text().splitlines()]
    assert len(pretrain) == 40 and len(evaluation) == 12
    assert len(finetune) == 40 + 4  # 10% text-only samples
    for s in pretrain:
        human, gpt = s["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].count("<image>") == 1
        assert (data["images"] / s["image"]).is_file()
    text_only = [s for s in finetune if "image" not in s]
    assert len(text_only) == 4
    assert all("<image>" not in t["value"] for s in text_only for t in s["conversations"])
    for s in finetune:
        roles = [t["from"] for t in s["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2)
        n_img = sum(t["value"].count("<image>") for t in s["conversations"])
        assert n_img == (1 if "image" in s else 0)
        if "image" in s:
            assert s["conversations"][0]["value"].startswith("<image>\n")
    assert {q["category"] for q in evaluation} == set(QUESTIONS)
    assert not {q["image"] for q in evaluation} & {s["image"] for s in pretrain}


def test_colour_answer_matches_pixels(data):
    for q in map(json.loads, data["eval"].read_text().splitlines()):
        if q["category"] != "colour":
            continue
        px = np.asarray(Image.open(data["images"] / q["image"]).convert("RGB")).reshape(-1, 3).astype(int)
        dists = {name: np.abs(px - np.array(rgb)).sum(1).min() for name, rgb in COLOURS.items()}
        assert min(dists, key=dists.get) == q["answer"], q


def test_deterministic_and_corpus(tmp_path, data):
    again = generate(tmp_path, n_train=40, n_eval=12, seed=3, progress=False)
    assert again["finetune"].read_text() == data["finetune"].read_text()
    texts = corpus(data)
    assert any("What colour is the shape?" in t for t in texts)
    assert not any("<image>" in t for t in texts)


def test_cli_rejects_bad_counts(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--n-train", "0"])
