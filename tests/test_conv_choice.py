"""The template travels with the checkpoint: the CLI, the model worker (and through it the web server
and the OpenAI API) and the eval runner serve a checkpoint in the `conv_template` its config.json
carries; an explicit --conv-mode wins with a warning naming both; a checkpoint without one falls
back to the one name-based guess."""

from __future__ import annotations

import io
import json
import sys

import pytest
from transformers import AutoTokenizer, LlamaConfig

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import choose_conv_mode, conv_templates, get_conv_template, guess_conv_mode
from tests.serve.stack import WATERVIEW

TEMPLATES = ("v1", "llama_2", "plain")
QUESTION = "What is in the picture?"


# ------------------------------------------------------------------------------------------ the rule
def test_explicit_wins_and_warns_naming_both():
    seen = []
    cfg = LlamaConfig(conv_template="v1")
    assert choose_conv_mode("llava_v0", cfg, "ckpt", warn=seen.append) == "llava_v0"
    assert len(seen) == 1 and "'v1'" in seen[0] and "'llava_v0'" in seen[0]
    assert choose_conv_mode("v1", cfg, "ckpt", warn=seen.append) == "v1" and len(seen) == 1  # same: quiet


def test_default_warning_goes_to_stderr(capsys):
    choose_conv_mode("llava_v1", {"conv_template": "plain"}, "ckpt")
    err = capsys.readouterr().err
    assert "'plain'" in err and "'llava_v1'" in err


@pytest.mark.parametrize("config", [LlamaConfig(conv_template="llama_2"), {"conv_template": "llama_2"}])
def test_saved_template_beats_the_name(config):
    assert choose_conv_mode(None, config, "llava-v1.5-7b", warn=pytest.fail) == "llama_2"


def test_without_a_saved_template_the_name_decides():
    assert choose_conv_mode(None, LlamaConfig(), "llava-v1.5-7b") == "llava_v1"
    assert guess_conv_mode("llava-v1.5-7b") == "llava_v1"
    assert choose_conv_mode(None, None, "my-model", multimodal=True) == "llava_v0"
    assert choose_conv_mode(None, {"conv_template": None}, "vicuna-7b") == "vicuna_v1"


@pytest.mark.parametrize(
    "requested, config, name, match",
    [
        (None, {"conv_template": "vicuna_v9"}, "ckpt", "'vicuna_v9'.*valid names: .*llava_v1"),
        ("vicuna_v9", None, "ckpt", "--conv-mode names.*'vicuna_v9'.*valid names"),
        (None, None, "mpt-7b-chat", "'mpt_text'.*pass --conv-mode"),
    ],
)
def test_unregistered_names_are_clear_errors(requested, config, name, match):
    with pytest.raises(ValueError, match=match):
        choose_conv_mode(requested, config, name)


# ------------------------------------------------------------------------------------------ checkpoints
def trained_checkpoint(kit, folder, template: str) -> None:
    """One step of train() with `--version template`, saving the whole model into `folder` (the plain
    template trains on the caption data, the others on the instruction data)."""
    from tests.test_train import run, stage2_args

    args = stage2_args(kit, folder, extra="--max_steps 1 --save_strategy no")
    args[args.index("--version") + 1] = template
    args[args.index("--model_max_length") + 1] = "1024"  # llama_2's system prompt is long in the tiny vocabulary
    if template == "plain":
        args[args.index("--data_path") + 1] = str(kit.pretrain)
    run(args)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{conv_template: folder} for tiny checkpoints trained (by train(), one step each) with v1, llama_2
    and plain, and {None: folder} for a copy of one without the saved template (as the original's
    checkpoints are). The folder names say nothing, so only the config can tell."""
    import shutil

    from tests.test_train import train_kit

    kit = train_kit(tmp_path_factory)
    root = tmp_path_factory.mktemp("conv-ckpts")
    out = {}
    for i, template in enumerate(TEMPLATES):
        out[template] = root / f"ckpt-{i}"
        trained_checkpoint(kit, out[template], template)
        assert json.loads((out[template] / "config.json").read_text())["conv_template"] == template
    out[None] = root / f"ckpt-{len(TEMPLATES)}"
    shutil.copytree(out["v1"], out[None])
    config = json.loads((out[None] / "config.json").read_text())
    del config["conv_template"]
    (out[None] / "config.json").write_text(json.dumps(config))
    return out


def test_stage1_projector_output_and_lora_adapters_carry_the_template(tmp_path_factory, tmp_path):
    """mm_projector.bin folders (stage 1) and LoRA adapter folders save the template too; --version v0
    trains with (and so saves) the default v1 template."""
    from tests.test_train import run, stage1_args, stage2_args, train_kit

    kit = train_kit(tmp_path_factory)
    run(stage1_args(kit, tmp_path / "s1", "--max_steps 1 --save_strategy no"))
    assert (tmp_path / "s1" / "mm_projector.bin").is_file()
    assert json.loads((tmp_path / "s1" / "config.json").read_text())["conv_template"] == "plain"
    lora = "--max_steps 1 --save_strategy no --lora_enable True --lora_r 4 --lora_alpha 8"
    args = stage2_args(kit, tmp_path / "lora", extra=lora)
    args[args.index("--version") + 1] = "v0"
    run(args)
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    saved = json.loads((tmp_path / "lora" / "config.json").read_text())["conv_template"]
    assert conv_templates[saved] is conv_templates["v1"]


def rendered(template: str, user: str) -> str:
    conv = get_conv_template(template)
    conv.append_message(conv.roles[0], user)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def cli_prompt(monkeypatch, capsys, folder, *extra) -> tuple[str, str]:
    """The prompt the CLI hands its runner for one question, and what it wrote to stderr."""
    import ast

    from llava.serve import cli

    monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTION + "\n"))
    cli.main(["--model-path", str(folder), "--image-file", str(WATERVIEW), "--device", "cpu",
              "--temperature", "0", "--max-new-tokens", "2", "--debug", *extra])  # fmt: skip
    captured = capsys.readouterr()
    (record,) = [ast.literal_eval(x) for x in captured.out.splitlines() if x.startswith("{'prompt'")]
    return record["prompt"], captured.err


@pytest.mark.parametrize("template", TEMPLATES)
def test_cli_serves_the_checkpoints_template(checkpoints, template, monkeypatch, capsys):
    prompt, err = cli_prompt(monkeypatch, capsys, checkpoints[template])
    assert prompt == rendered(template, "<image>\n" + QUESTION) and "WARNING" not in err


def test_cli_explicit_conv_mode_wins_with_a_warning(checkpoints, monkeypatch, capsys):
    prompt, err = cli_prompt(monkeypatch, capsys, checkpoints["v1"], "--conv-mode", "llava_v0")
    assert prompt == rendered("llava_v0", "<image>\n" + QUESTION)
    assert "'v1'" in err and "'llava_v0'" in err


def test_cli_falls_back_to_the_name_guess(checkpoints, monkeypatch, capsys):
    prompt, _ = cli_prompt(monkeypatch, capsys, checkpoints[None])
    assert prompt == rendered(guess_conv_mode("ckpt-3", multimodal=True), "<image>\n" + QUESTION)
    assert guess_conv_mode("ckpt-3", multimodal=True) == "llava_v0"


@pytest.mark.parametrize("template", [*TEMPLATES, None])
def test_worker_reports_its_template_and_remote_servers_use_it(checkpoints, template, tmp_path, monkeypatch):
    from llava.serve.controller import Controller
    from llava.serve.conv_mode import remote_conversation
    from llava.serve.model_worker import ModelWorker, build_parser, load_runner
    from llava.serve.openai_api_server import conversation_for

    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    folder = checkpoints[template]
    expected = template or "llava_v0"  # no saved template: the guess for a LLaVA model named ckpt-3
    runner = load_runner(build_parser().parse_args(["--model-path", str(folder), "--device", "cpu"]))
    assert runner.conv_template == expected
    assert runner.prepare({"prompt": "hi"}).stop[0] == get_conv_template(expected).stop_str
    worker = ModelWorker("http://127.0.0.1:9", "http://127.0.0.1:8", runner, no_register=True)
    status = worker.get_status()
    assert status["conv_template"] == expected and status["model_names"] == [folder.name]

    # The controller passes the template on (/list_models); the web server and the API render in it.
    controller = Controller(heart_beat_expiration=30)
    assert controller.register_worker(worker.worker_addr, False, status)
    templates = controller.conv_templates()
    assert templates == {folder.name: expected}
    for pick in (remote_conversation, conversation_for):
        conv = pick(folder.name, None, templates, pytest.fail)
        assert conv.get_prompt() == get_conv_template(expected).get_prompt()
        assert conv.stop_str == get_conv_template(expected).stop_str


def test_worker_conv_mode_flag_wins_with_a_warning(checkpoints, tmp_path, monkeypatch, capsys):
    from llava.serve.model_worker import build_parser, load_runner

    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    args = build_parser().parse_args(["--model-path", str(checkpoints["llama_2"]), "--device", "cpu",
                                      "--conv-mode", "vicuna_v1"])  # fmt: skip
    assert load_runner(args).conv_template == "vicuna_v1"
    err = capsys.readouterr().err
    assert "'llama_2'" in err and "'vicuna_v1'" in err


def test_controller_lists_templates_over_http(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from llava.serve.controller import Controller, create_app

    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    controller = Controller(heart_beat_expiration=30)
    status = {"model_names": ["m"], "speed": 1, "queue_length": 0, "conv_template": "llama_2"}
    with TestClient(create_app(controller)) as client:
        client.post("/register_worker", json={"worker_name": "http://w", "check_heart_beat": False,
                                              "worker_status": status})  # fmt: skip
        assert client.post("/list_models").json() == {"models": ["m"], "conv_templates": {"m": "llama_2"}}


def test_server_conv_mode_wins_over_the_workers_with_a_warning():
    from llava.serve.conv_mode import remote_conversation

    seen = []
    conv = remote_conversation("m", "llava_v1", {"m": "plain"}, seen.append)
    assert conv.sep == get_conv_template("llava_v1").sep and "'plain'" in seen[0] and "'llava_v1'" in seen[0]
    assert remote_conversation("llava-v1.5-7b", None, {}, pytest.fail).version == "v1"  # old worker: guess


def eval_prompts(monkeypatch, checkpoints, template, tmp_path, *extra):
    """(prompt ids the eval runner generates from, its stop string) for one image question."""
    from llava.eval import answer_runner, model_vqa
    from llava.model.builder import load_pretrained_model

    tmp_path.mkdir(parents=True, exist_ok=True)
    question = {"question_id": 1, "image": WATERVIEW.name, "text": QUESTION}
    (tmp_path / "q.jsonl").write_text(json.dumps(question) + "\n")
    seen = []

    def record(model, tokenizer, batch, gen_kwargs, stop):
        seen.extend((list(ids), stop) for _, ids, _, _ in batch)
        return ["x"] * len(batch)

    monkeypatch.setattr(answer_runner, "generate_batch", record)
    folder = checkpoints[template]
    loaded = load_pretrained_model(folder, None, None, device="cpu")
    model_vqa.main(["--model-path", str(folder), "--question-file", str(tmp_path / "q.jsonl"),
                    "--image-folder", str(WATERVIEW.parent), "--answers-file", str(tmp_path / "a.jsonl"),
                    "--max_new_tokens", "2", *extra], loaded=loaded)  # fmt: skip
    (ids_stop,) = seen
    return ids_stop, loaded[0]


@pytest.mark.parametrize("template", TEMPLATES)
def test_eval_runner_answers_in_the_checkpoints_template(checkpoints, template, tmp_path, monkeypatch):
    from llava.mm_utils import tokenizer_image_token

    (ids, stop), tok = eval_prompts(monkeypatch, checkpoints, template, tmp_path)
    assert ids == tokenizer_image_token(rendered(template, "<image>\n" + QUESTION), tok, IMAGE_TOKEN_INDEX)
    assert stop == get_conv_template(template).stop_str


def test_eval_runner_explicit_conv_mode_and_fallback(checkpoints, tmp_path, monkeypatch, capsys):
    from llava.mm_utils import tokenizer_image_token

    (ids, stop), tok = eval_prompts(monkeypatch, checkpoints, "plain", tmp_path, "--conv-mode", "vicuna_v1")
    assert ids == tokenizer_image_token(rendered("vicuna_v1", "<image>\n" + QUESTION), tok, IMAGE_TOKEN_INDEX)
    assert stop == "</s>"
    err = capsys.readouterr().err
    assert "'plain'" in err and "'vicuna_v1'" in err
    (ids, _), tok = eval_prompts(monkeypatch, checkpoints, None, tmp_path / "none")
    assert ids == tokenizer_image_token(rendered("llava_v0", "<image>\n" + QUESTION), tok, IMAGE_TOKEN_INDEX)


# ------------------------------------------------------------------------------------------ llava-hf
def test_llava_hf_export_and_import_keep_the_template(tiny_kit, tmp_path):
    from llava.model.hf_format import export_to_hf, import_from_hf, llava_from_hf
    from tests.model_helpers import build_tiny_llava

    model = build_tiny_llava(tiny_kit)
    model.config.conv_template = "llama_2"
    exported = export_to_hf(model, AutoTokenizer.from_pretrained(tiny_kit.tokenizer), tmp_path / "hf")
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["conv_template"] == "llama_2" and "conv_template" not in cfg["text_config"]
    back, _ = llava_from_hf(exported)
    assert back.config.conv_template == "llama_2"
    import_from_hf(exported, tmp_path / "orig")
    assert json.loads((tmp_path / "orig" / "config.json").read_text())["conv_template"] == "llama_2"


def test_every_saved_name_the_trainer_may_write_is_servable():
    # Training writes its --version; every registered name is accepted back as conv_template.
    assert all(choose_conv_mode(None, {"conv_template": n}, "ckpt") == n for n in conv_templates)
