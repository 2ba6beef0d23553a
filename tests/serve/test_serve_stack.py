"""Controller + three model workers as real processes: listing, streaming, bad input, load, failover."""

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from llava.conversation import get_conv_template as get_template
from llava.serve import protocol
from llava.serve.processes import wait_until
from tests.serve.stack import EXPIRATION, MODEL_A, MODEL_B, WATERVIEW

pytestmark = pytest.mark.slow

IMAGE_B64 = base64.b64encode(WATERVIEW.read_bytes()).decode()


def prompt_for(question: str, image: bool = True) -> str:
    conv = get_template("llava_v1")
    conv.append_message(conv.roles[0], ("<image>\n" if image else "") + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def payload(question="What is in the picture?", images=1, model=MODEL_A, **kw):
    p = {
        "model": model,
        "prompt": prompt_for(question, image=images > 0),
        "images": [IMAGE_B64] * images,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_new_tokens": 12,
        "stop": "</s>",
    }
    p.update(kw)
    return p


def stream(url, body, timeout=60):
    with requests.post(url + "/worker_generate_stream", json=body, stream=True, timeout=timeout) as r:
        return r.status_code, list(protocol.iter_chunks(r.iter_content(chunk_size=None)))


def test_controller_lists_models_of_all_workers(stack):
    ctl = stack.controller.url
    assert requests.post(ctl + "/list_models", timeout=10).json()["models"] == [MODEL_A, MODEL_B]
    status = requests.post(ctl + "/worker_get_status", timeout=10).json()
    assert status["model_names"] == [MODEL_A, MODEL_B] and status["speed"] == 3
    addrs = {
        requests.post(ctl + "/get_worker_address", json={"model": MODEL_A}, timeout=10).json()["address"]
        for _ in range(6)
    }
    assert addrs == {
        stack.workers["worker-a"].url,
        stack.workers["worker-b"].url,
    }  # shortest queue alternates


def test_workers_report_the_template_they_serve(stack):
    # The tiny checkpoints carry no conv_template: the worker guesses from the name (llava-v1.5-*).
    status = requests.post(stack.workers["worker-a"].url + "/worker_get_status", timeout=10).json()
    assert status["conv_template"] == "llava_v1" and status["model_names"] == [MODEL_A]
    listing = requests.post(stack.controller.url + "/list_models", timeout=10).json()
    templates = {MODEL_A: "llava_v1", MODEL_B: "llava_v1"}
    assert listing == {"models": [MODEL_A, MODEL_B], "conv_templates": templates}


def test_stream_through_controller(stack):
    body = payload()
    status, chunks = stream(stack.controller.url, body)
    assert status == 200 and all(c["error_code"] == 0 for c in chunks)
    # the worker sends the first chunk at once, then at most one every 0.05 s (llava.serve.batching), and
    # the last: a fast answer may come in two
    assert len(chunks) >= 2, "expected the first and the last chunk at least"
    texts = [c["text"] for c in chunks]
    assert all(t.startswith(body["prompt"]) for t in texts)
    assert all(len(a) <= len(b) and b.startswith(a) for a, b in zip(texts, texts[1:])), (
        "each chunk extends the last"
    )
    final = chunks[-1]
    assert final["finish_reason"] in ("stop", "length")
    assert final["usage"]["completion_tokens"] >= 1 and final["usage"]["prompt_tokens"] > 0
    # Greedy decoding: the same answer whichever worker serves it, and from the worker directly.
    again = stream(stack.controller.url, body)[1][-1]["text"]
    direct = stream(stack.workers["worker-a"].url, body)[1][-1]["text"]
    assert again == final["text"] == direct


def _bomb_png_b64() -> str:
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


BAD_REQUESTS = {
    "invalid base64": (dict(images=1, override_images=["@@@ not base64 @@@"]), "not valid base64"),
    "not an image": (
        dict(images=1, override_images=[base64.b64encode(b"GIF? no, plain text").decode()]),
        "not a readable image",
    ),
    "decompression bomb": (dict(images=1, override_images=[_bomb_png_b64()]), "too large to decode safely"),
    "more images than <image>": (
        dict(images=1, override_images=[IMAGE_B64, IMAGE_B64]),
        "1 <image> token(s) but 2 image(s)",
    ),
    "prompt over context": (dict(images=1, question="word " * 2100), "model's context is 2048"),
    "wrong model for worker": (dict(images=1, model="some-other-model"), "not 'some-other-model'"),
    "bad temperature": (dict(images=1, temperature="hot"), "'temperature' must be a number"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_error_and_worker_survives(stack, case):
    kw, expected = BAD_REQUESTS[case]
    kw = dict(kw)
    override = kw.pop("override_images", None)
    body = payload(**kw)
    if override is not None:
        body["images"] = override
    worker = stack.workers["worker-a"]
    status, chunks = stream(worker.url, body)
    assert status == 400 and len(chunks) == 1, chunks
    assert chunks[0]["error_code"] == protocol.WORKER_ERROR
    assert expected in chunks[0]["text"]
    # The worker is alive and serves the next request.
    status, chunks = stream(worker.url, payload(max_new_tokens=2))
    assert status == 200 and chunks[-1]["error_code"] == 0 and worker.alive()


def test_unknown_model_gets_clear_error_from_controller(stack):
    status, chunks = stream(stack.controller.url, payload(model="llava-does-not-exist"))
    assert status == 404 and len(chunks) == 1
    assert chunks[0]["error_code"] == protocol.NO_WORKER
    assert "'llava-does-not-exist'" in chunks[0]["text"] and MODEL_A in chunks[0]["text"]


def test_32_concurrent_requests_with_concurrency_limit_2(stack):
    worker = stack.workers["worker-a"]  # started with --limit-model-concurrency 2
    seen_queue = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen_queue.append(
                requests.post(worker.url + "/worker_get_status", timeout=10).json()["queue_length"]
            )
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(
                pool.map(lambda i: stream(worker.url, payload(max_new_tokens=6), timeout=120), range(32))
            )
    finally:
        done.set()
        watcher.join()
    assert len(results) == 32
    finals = [chunks[-1] for status, chunks in results if status == 200]
    assert len(finals) == 32 and all(f["error_code"] == 0 and "finish_reason" in f for f in finals)
    assert len({f["text"] for f in finals}) == 1  # same greedy answer for every request
    assert max(seen_queue) > 2, f"requests should queue behind the limit of 2, saw {max(seen_queue)}"
    assert requests.post(worker.url + "/worker_get_status", timeout=10).json()["queue_length"] == 0


def test_client_that_goes_away_frees_its_slot(stack):
    worker = stack.workers["worker-a"]
    body = payload(max_new_tokens=1000, temperature=0.7)

    def queue_length():
        return requests.post(worker.url + "/worker_get_status", timeout=10).json()["queue_length"]

    # A sampled answer can end early (EOS); hang up on one that is still running.
    for _ in range(5):
        with requests.post(worker.url + "/worker_generate_stream", json=body, stream=True, timeout=30) as r:
            first = next(protocol.iter_chunks(r.iter_content(chunk_size=None)))
            assert first["error_code"] == 0
            if "finish_reason" not in first and queue_length() == 1:
                break
        wait_until(lambda: queue_length() == 0, timeout=30, what="the finished request to leave")
    else:
        pytest.fail("five sampled generations all finished before the client could hang up")
    # Closing the connection cancels generation and gives the slot back long before 1000 tokens.
    wait_until(
        lambda: queue_length() == 0,
        timeout=10,
        what="the slot to be released",
    )
    status, chunks = stream(worker.url, payload(max_new_tokens=2))
    assert status == 200 and chunks[-1]["error_code"] == 0


def test_zz_killed_workers_are_dropped_after_expiry(stack):
    """Runs last in this module: kills worker-b (same model as worker-a) and worker-c (only MODEL_B)."""
    ctl = stack.controller.url
    dead_b = stack.workers["worker-b"]
    stack.workers["worker-b"].kill()
    stack.workers["worker-c"].kill()
    t0 = time.monotonic()

    def dropped():
        models = requests.post(ctl + "/list_models", timeout=10).json()["models"]
        addrs = {
            requests.post(ctl + "/get_worker_address", json={"model": MODEL_A}, timeout=10).json()["address"]
            for _ in range(4)
        }
        return models == [MODEL_A] and addrs == {stack.workers["worker-a"].url}

    wait_until(dropped, timeout=EXPIRATION * 4 + 5, interval=0.25, what="dead workers dropped")
    assert time.monotonic() - t0 >= EXPIRATION * 0.5  # dropped by the heartbeat expiry, not at once
    for _ in range(3):  # every request now goes to the live worker
        status, chunks = stream(ctl, payload(max_new_tokens=3))
        assert status == 200 and chunks[-1]["error_code"] == 0
    status, chunks = stream(ctl, payload(model=MODEL_B))
    assert status == 404 and chunks[0]["error_code"] == protocol.NO_WORKER
    assert not dead_b.alive()


def test_zz_no_outbound_network(stack):
    assert not stack.netguard_log.exists() or stack.netguard_log.read_text() == "", (
        stack.netguard_log.read_text()
    )
