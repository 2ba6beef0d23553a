"""Batched generation in the model worker (llava.serve.batching) and the worker's device default.

Concurrent requests to one runner are generated together: they join the running batch at the next
token step and leave it when they finish or their client goes away. Each keeps its own stop strings,
max_new_tokens and sampling parameters; greedy answers equal the answers generated one at a time and
those of a plain `model.generate` (float32 on the CPU).
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from PIL import Image

from llava.conversation import get_conv_template
from llava.serve import protocol
from llava.serve.batching import BatchEngine, row_processors
from llava.serve.images import encode_image_base64
from llava.serve.inference import DEFAULT_MAX_BATCH, ModelRunner, default_device
from tests.serve.stack import MODEL_A


@pytest.fixture(scope="module")
def checkpoint(tiny_kit, tmp_path_factory):
    """A tiny LLaVA-1.5 checkpoint whose projector is scaled up, so that images change the answers."""
    from llava.testing.tiny import save_tiny_llava

    return save_tiny_llava(tiny_kit, tmp_path_factory.mktemp("batching") / MODEL_A, projector_scale=20.0)


ATTENTION_SCALE = 8.0


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """The checkpoint loaded on the CPU, its attention sharpened: a random tiny LLM attends almost uniformly,
    so its answers hardly depend on positions or on the prompt; scaled queries and keys make them depend
    on both (a wrong position or a row's cache mixed with another's changes the answer)."""
    from llava.model.builder import load_pretrained_model

    tok, model, proc, ctx = load_pretrained_model(str(checkpoint), None, device="cpu")
    with torch.no_grad():
        for layer in model.get_model().layers:
            layer.self_attn.q_proj.weight.mul_(ATTENTION_SCALE)
            layer.self_attn.k_proj.weight.mul_(ATTENTION_SCALE)
    return tok, model, proc, ctx


@pytest.fixture
def runner(loaded):
    tok, model, proc, ctx = loaded
    r = ModelRunner(tok, model, proc, ctx, MODEL_A, conv_template="llava_v1", max_batch=8)
    r.engine.interval = 0.0  # a chunk at every token that shows more text (the tests count on them)
    yield r
    r.close()


def prompt_for(question: str, image: bool = True) -> str:
    conv = get_conv_template("llava_v1")
    conv.append_message(conv.roles[0], ("<image>\n" if image else "") + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def picture(i: int) -> str:
    img = Image.new("RGB", (40 + 9 * i, 30 + 4 * i), ((60 * i) % 256, 200 - 25 * i, 40 + 30 * i))
    img.paste((255, 255, 255), (0, 0, 10 + 3 * i, 8))
    return encode_image_base64(img)


def request(i: int, image: bool = True, **kw) -> dict:
    body = {"prompt": prompt_for(f"What is in picture {i}?", image), "images": [picture(i)] if image else [],
            "temperature": 0, "max_new_tokens": 12 + 3 * i, "stop": []}  # fmt: skip
    return {**body, **kw}


def final(runner, body: dict) -> dict:
    chunks = list(runner.stream(runner.prepare(body)))
    assert chunks and all(c["error_code"] == protocol.OK for c in chunks), chunks[-1]
    texts = [c["text"] for c in chunks]
    assert texts == sorted(texts, key=len) and all(t.startswith(body["prompt"]) for t in texts)
    return chunks[-1]


def answer_of(chunk: dict, body: dict) -> str:
    return chunk["text"][len(body["prompt"]) :]


def concurrently(runner, bodies: list[dict]) -> list[dict]:
    """The final chunks of `bodies`, all sent at once from their own threads (as the worker's threadpool)."""
    out: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def client(i):
        start.wait()
        out[i] = final(runner, bodies[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(o is not None for o in out), "a concurrent request did not finish"
    return out


def direct_greedy(runner, body: dict, **gen) -> str:
    """Plain `model.generate` for the request, alone (what the worker streamed before batching)."""
    prep = runner.prepare(body)
    tok = runner.tokenizer
    with torch.inference_mode():
        out = runner.model.generate(prep.input_ids, **prep.image_args, do_sample=False,
                                    max_new_tokens=prep.max_new_tokens, pad_token_id=tok.eos_token_id, **gen)  # fmt: skip
    return tok.decode(out[0], skip_special_tokens=False).split(tok.eos_token)[0]


def wait_until(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------- equality
def test_concurrent_greedy_answers_equal_one_by_one_answers(runner):
    bodies = [request(i, image=i % 4 != 3) for i in range(7)]  # images of several sizes, two text-only
    alone = [final(runner, b) for b in bodies]
    answers = [answer_of(c, b) for c, b in zip(alone, bodies)]
    assert len(set(answers)) == len(answers), "the prompts and images must give different answers"
    for i in (0, 3):  # the one-by-one answers are those of a plain generate
        assert answers[i] == direct_greedy(runner, bodies[i])
    steps_before = runner.engine.steps
    together = concurrently(runner, bodies)
    assert [c["text"] for c in together] == [c["text"] for c in alone]
    assert [c["usage"] for c in together] == [c["usage"] for c in alone]
    assert [c["finish_reason"] for c in together] == ["length"] * len(bodies)
    tokens = sum(c["usage"]["completion_tokens"] for c in together)
    assert runner.engine.max_rows_seen >= 2
    assert runner.engine.steps - steps_before < tokens  # rows shared their decoding steps


def test_text_only_prompts_of_different_lengths_are_left_padded_together(runner):
    questions = ["Hi?", "Name three colours.", "Describe a long walk by the river on a rainy autumn evening."]
    bodies = [
        {**request(i, image=False), "prompt": prompt_for(q, image=False)} for i, q in enumerate(questions)
    ]
    alone = [final(runner, b) for b in bodies]
    assert len({c["usage"]["prompt_tokens"] for c in alone}) == 3
    assert [c["text"] for c in concurrently(runner, bodies)] == [c["text"] for c in alone]
    assert answer_of(alone[2], bodies[2]) == direct_greedy(runner, bodies[2])


def test_a_request_joins_a_running_batch_and_leaves_it_first(runner):
    long_body, short_body = request(1, max_new_tokens=80), request(2, image=False, max_new_tokens=8)
    long_alone, short_alone = final(runner, long_body), final(runner, short_body)
    finished: list[str] = []
    long_stream = runner.stream(runner.prepare(long_body))
    running = [next(long_stream) for _ in range(15)]  # the long request is well under way
    assert all(c["error_code"] == protocol.OK for c in running)
    short = final(runner, short_body)
    finished.append("short")
    rest = list(long_stream)
    finished.append("long")
    assert short["text"] == short_alone["text"] and rest[-1]["text"] == long_alone["text"]
    assert rest[-1]["usage"]["completion_tokens"] == 80 and finished == ["short", "long"]
    assert runner.engine.max_rows_seen == 2


# ----------------------------------------------------------------------------- per-request parameters
def test_each_row_keeps_its_own_stop_length_and_sampling(runner):
    greedy = request(0, max_new_tokens=24)
    greedy_answer = answer_of(final(runner, greedy), greedy)
    stop_word = greedy_answer.split()[2]  # appears in the greedy answer: it must stop there
    penalty = request(5, max_new_tokens=16, repetition_penalty=0.05)  # < 1: repeats
    bodies = [
        greedy,
        {**greedy, "stop": [stop_word]},
        {**greedy, "max_new_tokens": 3},
        {**greedy, "temperature": 1.0, "top_k": 1},  # sampling from one candidate: the greedy token
        {**greedy, "temperature": 5.0, "top_p": 1.0, "top_k": 0},  # sampling from everything
        penalty,
    ]
    torch.manual_seed(0)
    out = concurrently(runner, bodies)
    answers = [answer_of(c, b) for c, b in zip(out, bodies)]
    assert answers[0] == greedy_answer and out[0]["finish_reason"] == "length"
    assert answers[1] == greedy_answer[: greedy_answer.index(stop_word)] and out[1]["finish_reason"] == "stop"
    assert stop_word not in answers[1]
    assert out[2]["usage"]["completion_tokens"] == 3 and out[2]["finish_reason"] == "length"
    assert greedy_answer.startswith(answers[2])
    assert answers[3] == greedy_answer
    assert answers[4] != greedy_answer  # 24 tokens drawn at temperature 5 over 32000: never all argmax
    assert answers[5] == direct_greedy(runner, penalty, repetition_penalty=0.05)
    assert answers[5] != answer_of(final(runner, {**penalty, "repetition_penalty": 1.0}), penalty)


def test_row_processors_follow_generate_order():
    assert row_processors({"do_sample": False}) is None
    procs = row_processors(
        {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "repetition_penalty": 1.2}
    )
    names = [type(p).__name__ for p in procs]
    assert names == ["RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper",
                     "TopPLogitsWarper"]  # fmt: skip
    assert len(row_processors({"do_sample": True, "temperature": 1.0, "top_p": 1.0})) == 0


def test_a_stop_string_is_never_streamed_in_part(runner):
    body = request(4, max_new_tokens=30)
    full = answer_of(final(runner, body), body)
    stop = full[5:12]  # a stop string the model writes, maybe across tokens
    prep = runner.prepare({**body, "stop": [stop]})
    chunks = list(runner.stream(prep))
    assert answer_of(chunks[-1], body) == full[:5] and chunks[-1]["finish_reason"] == "stop"
    for c in chunks:
        shown = answer_of(c, body)
        assert stop not in shown and full.startswith(shown)


def test_a_row_streams_at_most_every_interval_and_always_its_last_chunk(runner):
    body = request(3, max_new_tokens=40)
    every_token = list(runner.stream(runner.prepare(body)))
    runner.engine.interval = 60.0  # nothing after the first chunk but the last
    throttled = list(runner.stream(runner.prepare(body)))
    assert len(every_token) > 10
    assert throttled == [every_token[0], every_token[-1]]


def test_detokenizer_pieces_join_to_the_decoded_text(loaded):
    import random

    from llava.serve.batching import Detokenizer

    tok = loaded[0]
    rng = random.Random(0)
    special = [tok.eos_token_id, tok.bos_token_id]
    text_ids = tok.encode("Line one,\n  (two). Héllo 日本語 🙂\n\nend", add_special_tokens=False)
    for trial in range(300):
        ids = [rng.randrange(3, len(tok)) for _ in range(rng.randrange(1, 40))]
        ids[1:1] = text_ids if trial % 2 else special
        d = Detokenizer(tok)
        pieces = [d.add(i) for i in ids] + [d.flush()]
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=False), ids
    d = Detokenizer(tok)
    emoji = tok.encode("🙂", add_special_tokens=False)  # byte-fallback pieces of one character
    assert len(emoji) > 1 and [d.add(i) for i in emoji][:-1] == [""] * (len(emoji) - 1)


# --------------------------------------------------------------------------------------- cancellation
def test_a_client_that_goes_away_frees_its_row(runner):
    engine = runner.engine
    long_body = request(3, max_new_tokens=600)
    stream = runner.stream(runner.prepare(long_body))
    assert next(stream)["error_code"] == protocol.OK
    wait_until(lambda: len(engine._rows) == 1)
    steps = engine.steps
    stream.close()  # what the worker does when the client disconnects (prepared.cancel is set)
    wait_until(lambda: not engine._rows)
    assert engine._cache is None  # the batch's key/value cache is freed with its last row
    assert engine.steps - steps < 50  # nowhere near the 600 tokens asked for
    after = final(runner, request(1))  # and the engine serves the next request
    assert after["finish_reason"] == "length"


def test_a_request_cancelled_while_waiting_is_never_generated(loaded):
    tok, model, proc, ctx = loaded
    r = ModelRunner(tok, model, proc, ctx, MODEL_A, conv_template="llava_v1", max_batch=1)
    try:
        first = r.stream(r.prepare(request(1, max_new_tokens=200)))
        next(first)  # the only row is taken
        waiting = r.prepare(request(2))
        stream = r.stream(waiting)
        waiter = threading.Thread(target=lambda: list(stream))
        waiter.start()
        wait_until(lambda: len(r.engine._waiting) == 1)
        waiting.cancel.set()
        first.close()
        waiter.join(timeout=30)
        assert not waiter.is_alive() and r.engine.max_rows_seen == 1
    finally:
        r.close()


# ------------------------------------------------------------------------------------------- failures
def test_a_failed_prefill_fails_only_the_requests_it_admitted(runner):
    body = request(2, max_new_tokens=40)
    alone = final(runner, body)
    stream = runner.stream(runner.prepare(body))
    next(stream)
    broken = runner.prepare(request(1))
    broken.image_args["images"] = torch.zeros(1, 3, 7, 7)  # not the tower's input size
    chunks = list(runner.stream(broken))
    assert chunks[-1]["error_code"] == protocol.WORKER_ERROR
    assert chunks[-1]["text"].startswith("Generation failed:")
    assert list(stream)[-1]["text"] == alone["text"]


def test_a_failed_step_fails_the_running_requests_and_the_engine_goes_on(runner, monkeypatch):
    engine = runner.engine
    forward, calls = engine._forward, []

    def failing_third_forward(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(*args)

    monkeypatch.setattr(engine, "_forward", failing_third_forward)
    chunks = list(runner.stream(runner.prepare(request(1, max_new_tokens=20))))
    assert chunks[-1] == {
        "text": "Generation failed: RuntimeError: CUDA out of memory (simulated)",
        "error_code": protocol.WORKER_ERROR,
    }
    assert engine._cache is None and not engine._rows
    assert final(runner, request(1))["finish_reason"] == "length"  # the next request is served


def test_engine_refuses_bad_settings(loaded):
    tok, model, _, _ = loaded
    with pytest.raises(ValueError, match="max_batch"):
        BatchEngine(model, tok, max_batch=0)
    with pytest.raises(ValueError, match="join='sometimes'; valid: step, batch"):
        BatchEngine(model, tok, join="sometimes")


# ----------------------------------------------------------------------------------- worker defaults
def test_worker_without_device_runs_on_the_cpu_in_float32_and_says_so(
    checkpoint, tmp_path, monkeypatch, caplog
):
    from llava.serve.logs import build_logger
    from llava.serve.model_worker import DEVICE_LOGGER, build_parser, load_runner

    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    args = build_parser().parse_args(["--model-path", str(checkpoint)])
    assert args.device is None
    log = build_logger(DEVICE_LOGGER)  # a serving log: its own handlers, not propagated to pytest's
    log.addHandler(caplog.handler)
    try:
        runner = load_runner(args)
    finally:
        log.removeHandler(caplog.handler)
    param = next(runner.model.parameters())
    assert param.dtype == torch.float32 and param.device.type == "cpu"
    said = [r.getMessage() for r in caplog.records if "float32" in r.getMessage()]
    assert said and "cpu" in said[0] and "no --device" in said[0], caplog.text
    assert runner.max_batch == args.limit_model_concurrency == DEFAULT_MAX_BATCH


def test_default_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == "cpu"


def test_help_says_the_concurrency_limit_is_the_batch_capacity(capsys):
    from llava.serve.model_worker import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {DEFAULT_MAX_BATCH})" in text and "generated together" in text
    assert "--device" in text and "float32" in text
