"""The OpenAI-compatible API in-process, in front of a fake controller: the prompt is rendered in the
template the model's worker reports, the stop string is that template's, usage totals add up."""

from __future__ import annotations

import functools
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from llava.conversation import get_conv_template
from llava.serve import protocol
from llava.serve.openai_api_server import APISettings, create_app

QUESTION = "Is it calm?"


def rendered(template: str) -> str:
    conv = get_conv_template(template)
    conv.append_message(conv.roles[0], QUESTION)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


class _Stream(httpx.AsyncByteStream):
    def __init__(self, pieces):
        self.pieces = pieces

    async def __aiter__(self):
        for piece in self.pieces:
            yield piece


@pytest.fixture
def api(monkeypatch, tmp_path):
    """(TestClient of the API, the payloads the fake controller received, its model -> template map)."""
    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    sent, templates = [], {"m-llama": "llama_2", "m-plain": "plain"}

    def controller(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/list_models":
            return httpx.Response(200, json={"models": sorted(templates), "conv_templates": templates})
        body = json.loads(request.content)
        sent.append(body)
        usage = {"prompt_tokens": 7, "completion_tokens": 2}
        chunks = protocol.encode_chunk(body["prompt"] + " Yes") + protocol.encode_chunk(
            body["prompt"] + " Yes.", finish_reason="stop", usage=usage
        )
        return httpx.Response(200, stream=_Stream([chunks[: len(chunks) // 2], chunks[len(chunks) // 2 :]]))

    real = httpx.AsyncClient
    mock = functools.partial(real, transport=httpx.MockTransport(controller))
    monkeypatch.setattr(httpx, "AsyncClient", mock)
    with TestClient(create_app(APISettings(controller_address="http://controller"))) as client:
        yield client, sent, templates


def ask(client, model, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], **extra}
    return client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("model", ["m-llama", "m-plain"])
def test_prompt_and_stop_follow_the_workers_template(api, model):
    client, sent, templates = api
    r = ask(client, model, stop=["END"])
    assert r.status_code == 200, r.text
    (pload,) = sent
    assert pload["prompt"] == rendered(templates[model])
    assert pload["stop"] == [get_conv_template(templates[model]).stop_str, "END"]
    out = r.json()
    assert out["choices"][0]["message"]["content"] == "Yes." and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_streamed_answer_with_usage(api):
    client, _, _ = api
    r = ask(client, "m-llama", stream=True, stream_options={"include_usage": True})
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    deltas = "".join(o["choices"][0]["delta"].get("content", "") for o in objs if o["choices"])
    assert deltas == "Yes."
    assert [o["choices"][0]["finish_reason"] for o in objs if o["choices"]][-1] == "stop"
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["total_tokens"] == 9


def test_unknown_model_falls_back_to_the_name_guess(api):
    client, sent, _ = api
    ask(client, "vicuna-7b")
    assert sent[0]["prompt"] == rendered("vicuna_v1") and sent[0]["stop"] == ["</s>"]
