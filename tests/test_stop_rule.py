"""One stop rule: every registered template stops at `Conversation.stop_str` on every path that
generates (eval runner, CLI, model worker, OpenAI API, web server), through the functions those
paths call, and that string ends every assistant turn the template renders."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llava.conversation import conv_templates, get_conv_template
from tests.test_next_templates import NEXT_STOPS

CHAT_TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"
MODEL = "some-model"

# What ends an assistant turn, per template (`chat_template`: the tokenizer's EOS, `</s>` here).
EXPECTED = {
    "default": "###",
    "v0": "###",
    "llava_v0": "###",
    "v0_mmtag": "###",
    "v1": "</s>",
    "vicuna_v1": "</s>",
    "llava_v1": "</s>",
    "v1_mmtag": "</s>",
    "llama_2": "</s>",
    "llava_llama_2": "</s>",
    "mistral_instruct": "</s>",
    "plain": "\n",
    "v0_plain": "\n",
    "mpt": "<|im_end|>",
    "chatml_direct": "<|im_end|>",
    "mistral_direct": "<|im_end|>",
    "qwen_2": "<|im_end|>",
    "llama_3": "<|eot_id|>",
    "chat_template": "</s>",
}
EXPECTED.update(NEXT_STOPS)  # LLaVA-NeXT's template names (tests/test_next_templates.py)
NAMES = sorted(conv_templates)


@pytest.fixture(scope="module")
def tok(llama2_tokenizer):
    """The LLaMA-2 tokenizer with a chat template, so `chat_template` renders and binds its EOS."""
    t = copy.deepcopy(llama2_tokenizer)
    t.chat_template = (CHAT_TEMPLATES / "qwen2.jinja").read_text()
    return t


def test_every_registered_template_has_an_expected_stop():
    assert set(EXPECTED) == set(conv_templates), "a new template needs its stop string here"


@pytest.mark.parametrize("name", NAMES)
def test_stop_str_is_the_expected_one(name, tok):
    assert get_conv_template(name, tok).stop_str == EXPECTED[name]


def test_chat_template_has_no_stop_until_a_tokenizer_is_bound(tok):
    assert get_conv_template("chat_template").stop_str is None
    assert get_conv_template("chat_template", tok).stop_str == tok.eos_token


@pytest.mark.parametrize("name", [n for n in NAMES if n != "chat_template"])
def test_stop_str_ends_every_assistant_turn(name):
    conv = get_conv_template(name)
    for role, msg in ((0, "<image>\nWhat is it?"), (1, "A cat."), (0, "Its colour?"), (1, "Black.")):
        conv.append_message(conv.roles[role], msg)
    prompt, spans = conv.get_prompt_with_target_spans()
    assert spans and all(prompt[a:b].endswith(conv.stop_str) for a, b in spans)


# ------------------------------------------------------------------------------------------ the paths
def eval_stop(name, tok):
    from llava.eval.answer_runner import generation_kwargs, stop_string

    stop = stop_string(name, tok)
    args = SimpleNamespace(max_new_tokens=4, num_beams=1, temperature=0.0, top_p=None)
    (criteria,) = generation_kwargs(args, tok, stop)["stopping_criteria"]
    assert criteria.keywords == [stop]
    return stop


class _RecordingRunner:
    def __init__(self):
        self.params = []

    def prepare(self, params):
        self.params.append(params)
        return params

    def stream(self, prepared):
        yield {"text": prepared["prompt"] + " ok", "error_code": 0}


def cli_stop(name, tok):
    from llava.serve.cli import chat

    runner = _RecordingRunner()
    conv = get_conv_template(name, tok)  # as the CLI's main builds it
    chat(runner, conv, None, 0.0, 4, stdin=io.StringIO("Hello?\n"), stdout=io.StringIO())
    (params,) = runner.params
    return params["stop"]


class _StubModel:
    device = torch.device("cpu")
    config = SimpleNamespace()


def worker_stop(name, tok):
    from llava.serve.inference import ModelRunner

    runner = ModelRunner(tok, _StubModel(), None, 2048, MODEL, conv_template=name)
    stops = runner.prepare({"prompt": "Hello?"}).stop  # a request without `stop`
    assert stops[-1] == tok.eos_token  # EOS always stops too
    return stops[0]


def api_stop(name, tok):
    from llava.serve.openai_api_server import conversation_for, generation_payload
    from llava.serve.openai_messages import ChatCompletionRequest

    messages = [{"role": "user", "content": "Hi"}]
    req = ChatCompletionRequest.model_validate({"model": MODEL, "messages": messages})
    conv = conversation_for(MODEL, None, {MODEL: name}, warn=pytest.fail)  # the worker reports `name`
    (stop,) = generation_payload(req, conv, "prompt", [], [])["stop"]
    return stop


def web_stop(name, tok):
    from llava.serve.conv_mode import remote_conversation
    from llava.serve.gradio_web_server import worker_payload

    conv = remote_conversation(MODEL, None, {MODEL: name}, warn=pytest.fail)  # as http_bot picks it
    conv.append_message(conv.roles[0], "Hi")
    conv.append_message(conv.roles[1], None)
    return worker_payload(conv, MODEL, 0.2, 0.7, 64)["stop"]


@pytest.mark.parametrize("path", [eval_stop, cli_stop, worker_stop])
@pytest.mark.parametrize("name", NAMES)
def test_in_process_paths_stop_at_the_templates_stop_str(path, name, tok):
    assert path(name, tok) == EXPECTED[name] == get_conv_template(name, tok).stop_str


@pytest.mark.parametrize("path", [api_stop, web_stop])
@pytest.mark.parametrize("name", [n for n in NAMES if n != "chat_template"])
def test_remote_paths_stop_at_the_templates_stop_str(path, name, tok):
    assert path(name, tok) == EXPECTED[name] == get_conv_template(name).stop_str


def test_remote_paths_refuse_chat_template_which_needs_the_tokenizer(tok):
    # The API and the web server hold no tokenizer, so they cannot render (or stop) a chat_template
    # conversation: the error says so instead of a prompt without a stop string.
    from llava.serve.openai_messages import APIError

    with pytest.raises(APIError, match="chat_template"):
        api_stop("chat_template", tok)
    with pytest.raises(ValueError, match="chat_template"):
        web_stop("chat_template", tok)

