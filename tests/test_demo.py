"""The embedded default, shortened: synthetic data -> tower -> stage 1 -> stage 2 -> eval -> CLI."""

import json

import pytest

from llava.demo import accuracy, main


@pytest.mark.slow
def test_quick_demo_learns_far_above_chance(tmp_path, capfd):
    result = main(["--quick", "--out", str(tmp_path)])
    out = capfd.readouterr().out
    # chance: 1/6 colours, 1/3 shapes, 1/4 places (about 25% over the three question kinds)
    assert result["accuracy"] >= 0.6, result
    assert result["per_category"]["colour"] >= 0.8, result
    assert (tmp_path / "checkpoints" / "tiny-pretrain" / "mm_projector.bin").is_file()
    assert (tmp_path / "checkpoints" / "tiny-finetune" / "config.json").is_file()
    answers = [json.loads(line) for line in (tmp_path / "eval_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 90 and all(a["text"].strip() for a in answers)
    assert "held-out accuracy" in out
    # Stage 2 trained with --version v1, saved as conv_template: the CLI chats (and eval answered) in it.
    assert json.loads((tmp_path / "checkpoints" / "tiny-finetune" / "config.json").read_text())["conv_template"] == "v1"
    assert "USER:" in out and "ASSISTANT:" in out and "Human:" not in out
    assert set(result["times"]) == {"data + models", "stage 1", "stage 2", "evaluation", "chat"}


def test_accuracy_ignores_case_and_punctuation(tmp_path):
    q = tmp_path / "q.jsonl"
    a = tmp_path / "a.jsonl"
    q.write_text(
        "\n".join(
            json.dumps({"question_id": i, "answer": ans, "category": cat})
            for i, (ans, cat) in enumerate([("red", "colour"), ("top left", "place"), ("circle", "shape")])
        )
    )
    a.write_text(
        "\n".join(
            json.dumps({"question_id": i, "text": t}) for i, t in enumerate(["Red.", "Top left.", "Square."])
        )
    )
    acc, per = accuracy(q, a)
    assert acc == pytest.approx(2 / 3)
    assert per == {"colour": 1.0, "place": 1.0, "shape": 0.0}
