"""The validator and the trainer agree: a file the validator cleans (with --allow_too_long) trains,
and the over-long samples training cuts are named in its warning."""

import json

# ruff: noqa: F811  (kit is a pytest fixture shared with tests/test_train.py)
from tests.test_train import kit, one_thread, run, stage2_args  # noqa: F401  (kit, one_thread: fixtures)


def _sample(sid, image, question, answer):
    return {"id": sid, "image": image, "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": answer}]}  # fmt: skip


def test_a_file_cleaned_with_allow_too_long_trains(kit, tmp_path, capsys, caplog):
    from llava.data.tools.validate import main

    samples = json.loads(kit.finetune.read_text())
    image = next(s["image"] for s in samples if "image" in s)
    long = " ".join(["red circle"] * 200)  # far over the 256 tokens of stage2_args
    samples += [
        _sample("long-reply", image, "<image>\nWhat is it?", long),  # cut: its image and targets stay
        _sample("long-question", image, "<image>\n" + long, "A circle."),  # the cut leaves no target
        _sample("image-late", image, long + "\n<image>", "A circle."),
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(samples))
    clean = tmp_path / "clean.json"
    # The tiny tower gives 16 tokens per image; the flags are training's (stage2_args).
    code = main(["--data_path", str(data), "--image_folder", str(kit.images), "--model_name_or_path",
                 str(kit.llm), "--model_max_length", "256", "--num_image_tokens", "16",
                 "--image_aspect_ratio", "pad", "--allow_too_long",
                 "--output_clean_json", str(clean)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1, out
    errors, warnings = out.split("warnings:")
    assert (
        "cut_fails                     2" in errors
        and "'long-question'" in errors
        and "'image-late'" in errors
    )
    assert "no target token fits in --model_max_length 256" in errors
    assert "too_long                      1" in warnings and "'long-reply'" in warnings
    kept = [s["id"] for s in json.loads(clean.read_text())]
    assert kept == [s["id"] for s in samples[:-2]]

    args = stage2_args(kit, tmp_path / "out", extra="--max_steps 1 --save_strategy no")
    args[args.index("--data_path") + 1] = str(clean)
    with caplog.at_level("WARNING", logger="llava"):
        trainer = run(args)
    assert trainer.state.global_step == 1
    cut = [r.getMessage() for r in caplog.records if "longer than --model_max_length" in r.getMessage()]
    assert cut and "1 of 21 samples" in cut[0] and "cut: 'long-reply'" in cut[0], cut
