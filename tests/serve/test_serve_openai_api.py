"""The OpenAI-compatible API, driven by the official `openai` client, plus prompt building in-process."""

import base64

import openai
import pytest
import requests

from llava.conversation import get_conv_template as get_template
from llava.serve import protocol
from llava.serve.openai_messages import APIError, ChatCompletionRequest, build_prompt
from tests.serve.stack import API_KEY, MODEL_A, WATERVIEW

DATA_URL = "data:image/jpeg;base64," + base64.b64encode(WATERVIEW.read_bytes()).decode()
QUESTION = "What is in the picture?"


def image_message(url=DATA_URL, text=QUESTION):
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
    }


# ----------------------------------------------------------------------------- in-process prompt building
def test_build_prompt_renders_the_template_with_images_in_place():
    req = ChatCompletionRequest.model_validate(
        {
            "model": MODEL_A,
            "messages": [
                {"role": "system", "content": "Be brief."},
                image_message(),
                {"role": "assistant", "content": "A lake."},
                {"role": "user", "content": "Is it calm?"},
            ],
        }
    )
    prompt, images = build_prompt(req, get_template("llava_v1"))
    assert prompt == f"Be brief. USER: <image>\n{QUESTION} ASSISTANT: A lake.</s>USER: Is it calm? ASSISTANT:"
    assert images == [DATA_URL.split(",", 1)[1]]


@pytest.mark.parametrize(
    "messages, match",
    [
        ([image_message(url="https://example.com/cat.jpg")], "disabled on this server"),
        ([{"role": "user", "content": "look: <image>"}], "may not contain '<image>'"),
        ([{"role": "assistant", "content": "hi"}], "must start with a user message"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            "last message must come from the user",
        ),
        ([{"role": "tool", "content": "x"}], "role 'tool' is not supported"),
        ([image_message(url="data:image/png;base64,!!!!")], "not valid base64"),
    ],
)
def test_build_prompt_rejects_bad_conversations(messages, match):
    req = ChatCompletionRequest.model_validate({"model": MODEL_A, "messages": messages})
    with pytest.raises(APIError, match=match) as e:
        build_prompt(req, get_template("llava_v1"))
    assert e.value.status == 400


# ----------------------------------------------------------------------------- real processes
@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack.api.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _direct_answer(stack, max_new_tokens):
    conv = get_template("llava_v1")
    conv.append_message(conv.roles[0], "<image>\n" + QUESTION)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    body = {
        "model": MODEL_A,
        "prompt": prompt,
        "images": [DATA_URL.split(",", 1)[1]],
        "temperature": 0.0,
        "max_new_tokens": max_new_tokens,
        "stop": ["</s>"],
    }
    r = requests.post(stack.workers["worker-a"].url + "/worker_generate_stream", json=body, timeout=60)
    return list(protocol.iter_chunks([r.content]))[-1]["text"][len(prompt) :].lstrip()


@pytest.mark.slow
def test_models_and_plain_completion_with_image(stack, client):
    assert MODEL_A in [m.id for m in client.models.list().data]
    out = client.chat.completions.create(
        model=MODEL_A, messages=[image_message()], temperature=0, max_tokens=10
    )
    choice = out.choices[0]
    assert out.object == "chat.completion" and out.model == MODEL_A
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens >= 1 and out.usage.total_tokens > out.usage.prompt_tokens
    # Same greedy answer as the worker gives for the prompt the template renders.
    assert choice.message.content and choice.message.content == _direct_answer(stack, 10)


@pytest.mark.slow
def test_streamed_completion_with_image(client):
    plain = client.chat.completions.create(
        model=MODEL_A, messages=[image_message()], temperature=0, max_tokens=12
    )
    stream = client.chat.completions.create(
        model=MODEL_A,
        messages=[image_message()],
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2, "the answer should arrive in several pieces"
    assert "".join(deltas) == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(model="no-such-model"), openai.NotFoundError, "No worker serves model 'no-such-model'"),
        (dict(model="no-such-model", stream=True), openai.NotFoundError, "No worker serves model"),
        (
            dict(messages=[image_message(url="http://127.0.0.1:9/x.jpg")]),
            openai.BadRequestError,
            "--allow-image-urls",
        ),
        (
            dict(messages=[image_message(url="data:image/png;base64,@@@@")]),
            openai.BadRequestError,
            "not valid base64",
        ),
        (
            dict(
                messages=[
                    image_message(url="data:image/png;base64," + base64.b64encode(b"plain text").decode())
                ]
            ),
            openai.BadRequestError,
            "not a readable image",
        ),
        (dict(messages=[image_message(text="word " * 2100)]), openai.BadRequestError, "context is 2048"),
        (dict(n=2), openai.BadRequestError, "only n=1"),
        (dict(temperature=5), openai.BadRequestError, "temperature"),
        (dict(messages=[]), openai.BadRequestError, "messages"),
    ],
)
def test_bad_requests_get_openai_errors(client, kwargs, error, match):
    args = dict(model=MODEL_A, messages=[image_message()], max_tokens=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        out = client.chat.completions.create(**args)
        if args.get("stream"):
            list(out)
    # The service keeps serving.
    assert client.chat.completions.create(model=MODEL_A, messages=[image_message()], max_tokens=2).choices


@pytest.mark.slow
def test_api_key_is_required(stack):
    bad = openai.OpenAI(base_url=stack.api.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        bad.models.list()
    assert requests.get(stack.api.url + "/v1/models", timeout=10).status_code == 401


# ----------------------------------------------------------------------------- a real controller, in-process
def test_api_through_a_stack_with_a_secret_and_a_full_worker(tmp_path, monkeypatch):
    """The real controller and worker HTTP layers (a stub model) with a shared secret: the API that holds
    the secret is served, one without it is told why it is refused (502 naming the secret, not a
    bare error), and a full worker reaches the client as 429 with Retry-After and the cause."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from llava.serve import controller as controller_mod
    from llava.serve import model_worker as worker_mod
    from llava.serve import trust
    from llava.serve.openai_api_server import APISettings, create_app
    from llava.serve.processes import wait_until
    from tests.serve.stack import STUB_MODEL, serving, stub_worker

    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    monkeypatch.delenv(trust.ENV, raising=False)
    secret = "openai-api-test-secret-42"
    worker = stub_worker("http://127.0.0.1:8", limit=1, max_queue=0, delay=0.3, secret=secret)
    ctl = controller_mod.Controller(heart_beat_expiration=30, secret=secret)
    body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    with (
        serving(worker_mod.create_app(worker)) as (wurl, _),
        serving(controller_mod.create_app(ctl)) as (curl, _),
    ):
        worker.worker_addr = wurl
        status = {"model_names": [STUB_MODEL], "speed": 1, "queue_length": 0}
        registration = {"worker_name": wurl, "check_heart_beat": False, "worker_status": status}
        r = requests.post(curl + "/register_worker", json=registration, headers=trust.secret_headers(secret))
        assert r.json() == {"registered": True}
        with TestClient(create_app(APISettings(controller_address=curl))) as outsider:
            r = outsider.post("/v1/chat/completions", json=body)
            assert r.status_code == 502 and "lack the stack's shared secret" in r.json()["error"]["message"]
        with (
            TestClient(create_app(APISettings(controller_address=curl, secret=secret))) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            busy = pool.submit(client.post, "/v1/chat/completions", json=body)
            wait_until(lambda: worker.get_queue_length() == 1, timeout=10, what="the worker to be busy")
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= protocol.MAX_RETRY_AFTER
            err = r.json()["error"]
            assert (
                err["type"] == "rate_limit_error"
                and f"worker {wurl}: 1 requests generating" in err["message"]
            )
            done = busy.result(timeout=30)
            assert done.status_code == 200, done.text
            assert done.json()["object"] == "chat.completion"  # (the stub's text is not an answer)
