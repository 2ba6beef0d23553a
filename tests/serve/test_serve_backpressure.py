"""Limits checked before work and back-pressure at the worker and the controller (issue 20, parts 2-3)."""

from __future__ import annotations

import asyncio
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import requests
from fastapi.testclient import TestClient

from llava.serve import controller as controller_mod
from llava.serve import model_worker as worker_mod
from llava.serve import protocol, relay, trust
from llava.serve.controller import Controller
from llava.serve.processes import ServiceProcess, free_port, wait_until
from tests.serve.stack import REPO, STUB_MODEL, FakeRunner, serving, stub_worker


class GatedRunner(FakeRunner):
    """A FakeRunner whose answers wait until `gate` is set (requests pile up deterministically)."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()

    def stream(self, prep):
        assert self.gate.wait(30), "the test never opened the gate"
        yield from super().stream(prep)


@pytest.fixture(autouse=True)
def logdir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    monkeypatch.delenv(trust.ENV, raising=False)


def gated_worker(limit=1, max_queue=2, **kw):
    worker = stub_worker("http://127.0.0.1:8", limit=limit, max_queue=max_queue, **kw)
    worker.runner = GatedRunner()
    return worker


def post(url, body, timeout=30):
    r = requests.post(url + "/worker_generate_stream", json=body, timeout=timeout)
    return r.status_code, r.headers, list(protocol.iter_chunks([r.content]))


BODY = {"model": STUB_MODEL, "prompt": "x", "max_new_tokens": 2}


# --- reading the body ----------------------------------------------------------------------------------
class _Request:
    """What read_body needs of a Starlette request; counts the pieces it was asked for."""

    def __init__(self, pieces, headers=None):
        self.pieces, self.headers, self.consumed = pieces, headers or {}, 0

    async def stream(self):
        for piece in self.pieces:
            self.consumed += 1
            yield piece


def test_read_body_stops_as_soon_as_the_limit_is_passed():
    req = _Request([b"x" * 100] * 50)  # 5000 bytes sent without a Content-Length
    with pytest.raises(trust.BodyTooLarge, match="over 250 bytes.*--max-body-bytes"):
        asyncio.run(trust.read_body(req, 250))
    assert req.consumed == 3  # the third piece crossed 250 bytes; the other 47 were never read
    declared = _Request([b"x"], headers={"content-length": "5000"})
    with pytest.raises(trust.BodyTooLarge):
        asyncio.run(trust.read_body(declared, 250))
    assert declared.consumed == 0  # refused from the header, nothing read
    assert asyncio.run(trust.read_body(_Request([b"ab", b"cd"]), 4)) == b"abcd"


def test_worker_refuses_large_bodies_and_long_prompts_before_any_work():
    worker = stub_worker("http://127.0.0.1:8", max_body_bytes=2000, max_prompt_chars=50)
    with TestClient(worker_mod.create_app(worker)) as client:
        r = client.post("/worker_generate_stream", json={"prompt": "x" * 3000})
        assert r.status_code == 413
        chunk = list(protocol.iter_chunks([r.content]))[0]
        assert chunk["error_code"] == protocol.WORKER_ERROR
        assert "over 2000 bytes" in chunk["text"] and "--max-body-bytes" in chunk["text"]
        chunked = client.post("/worker_generate_stream", content=(b"x" * 500 for _ in range(10)))
        assert chunked.status_code == 413  # no Content-Length: counted while read
        r = client.post("/worker_generate_stream", json={"prompt": "y" * 51})
        assert r.status_code == 400
        assert "51 characters" in r.text and "at most 50 (--max-prompt-chars)" in r.text
        r = client.post("/worker_generate_stream", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.text
        assert worker.runner.prepared == 0  # nothing reached the model side
        assert worker.get_queue_length() == 0
        r = client.post("/worker_generate_stream", json={"prompt": "y" * 50, "max_new_tokens": 1})
        assert r.status_code == 200 and list(protocol.iter_chunks([r.content]))[-1]["text"] == "P: tok0"


def test_controller_refuses_large_bodies_before_parsing():
    ctl = Controller(heart_beat_expiration=30)
    with TestClient(controller_mod.create_app(ctl, max_body_bytes=1000)) as client:
        r = client.post("/worker_generate_stream", json={"model": "m", "prompt": "x" * 2000})
        assert (
            r.status_code == 413 and "--max-body-bytes" in list(protocol.iter_chunks([r.content]))[0]["text"]
        )
        r = client.post("/register_worker", json={"worker_name": "http://" + "h" * 2000})
        assert r.status_code == 413 and "over 1000 bytes" in r.json()["error"]
        assert ctl.worker_info == {}


# --- the worker's bounded queue ------------------------------------------------------------------------
def test_full_worker_answers_429_with_retry_after_and_the_cause():
    worker = gated_worker(limit=1, max_queue=2)
    with serving(worker_mod.create_app(worker)) as (url, _):
        worker.worker_addr = url
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(post, url, BODY) for _ in range(3)]
            wait_until(lambda: worker.get_queue_length() == 3, timeout=10, what="3 requests admitted")
            status, headers, chunks = post(url, BODY)
            assert status == 429 and 1 <= int(headers["Retry-After"]) <= protocol.MAX_RETRY_AFTER
            assert chunks == [
                {
                    "text": f"worker {url}: 1 requests generating, 2 waiting (limit 2, --max-queue); retry shortly",
                    "error_code": protocol.OVERLOADED,
                }
            ]
            worker.runner.gate.set()
            results = [f.result(timeout=30) for f in held]
        assert [r[0] for r in results] == [200, 200, 200]
        assert all(r[2][-1]["text"] == "P: tok0 tok1" for r in results)
        assert worker.get_queue_length() == 0 and worker.runner.max_running == 1
        assert post(url, BODY)[0] == 200  # room again


def test_max_queue_flag_and_validation():
    assert worker_mod.build_parser().parse_args([]).max_queue == worker_mod.DEFAULT_MAX_QUEUE
    assert worker_mod.build_parser().parse_args(["--max-queue", "0"]).max_queue == 0
    with pytest.raises(ValueError, match="--max-queue must be >= 0"):
        stub_worker("http://127.0.0.1:8", max_queue=-1)
    assert protocol.retry_after_seconds(0, 5) == 1
    assert protocol.retry_after_seconds(12, 4) == 3
    assert protocol.retry_after_seconds(1000, 1) == protocol.MAX_RETRY_AFTER


# --- the controller ------------------------------------------------------------------------------------
def _register(client, url, queue=0):
    status = {"model_names": [STUB_MODEL], "speed": 1, "queue_length": queue}
    r = client.post(
        "/register_worker", json={"worker_name": url, "check_heart_beat": False, "worker_status": status}
    )
    assert r.json() == {"registered": True}


def test_controller_answers_429_only_when_every_worker_is_full():
    w1, w2 = gated_worker(limit=1, max_queue=0), gated_worker(limit=1, max_queue=0)
    ctl = Controller(heart_beat_expiration=30)
    with serving(worker_mod.create_app(w1)) as (u1, _), serving(worker_mod.create_app(w2)) as (u2, _):
        w1.worker_addr, w2.worker_addr = u1, u2
        with TestClient(controller_mod.create_app(ctl)) as client, ThreadPoolExecutor(2) as pool:
            _register(client, u1, queue=0)  # dispatch tries w1 first
            _register(client, u2, queue=5)
            busy1 = pool.submit(post, u1, BODY)
            wait_until(lambda: w1.get_queue_length() == 1, timeout=10, what="w1 full")
            # w1 is full, w2 is free: the controller passes over w1's 429 to w2.
            answered = pool.submit(client.post, "/worker_generate_stream", json=BODY)
            wait_until(lambda: w2.get_queue_length() == 1, timeout=10, what="w2 took the request")
            r = client.post("/worker_generate_stream", json=BODY)  # now both are full
            assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= protocol.MAX_RETRY_AFTER
            [chunk] = list(protocol.iter_chunks([r.content]))
            assert chunk["error_code"] == protocol.OVERLOADED
            assert chunk["text"].startswith(f"every worker serving {STUB_MODEL!r} is full: worker ")
            assert f"worker {u1}: 1 requests generating, 0 waiting" in chunk["text"] and u2 in chunk["text"]
            w1.runner.gate.set()
            w2.runner.gate.set()
            assert busy1.result(timeout=30)[0] == 200
            done = answered.result(timeout=30)
            assert done.status_code == 200
            assert list(protocol.iter_chunks([done.content]))[-1]["text"] == "P: tok0 tok1"
            assert sorted(ctl.worker_info) == sorted([u1, u2])  # full is not dead: nobody dropped


def test_controller_bounds_its_relays_and_sizes_its_pool_to_match():
    client = relay.make_client(300)
    pool = client._transport._pool  # what httpx will allow at once
    assert pool._max_connections >= 300
    asyncio.run(client.aclose())
    worker = gated_worker(limit=1, max_queue=0)
    ctl = Controller(heart_beat_expiration=30)
    with serving(worker_mod.create_app(worker)) as (url, _):
        with (
            TestClient(controller_mod.create_app(ctl, max_in_flight=1)) as client,
            ThreadPoolExecutor(1) as ex,
        ):
            _register(client, url)
            held = ex.submit(client.post, "/worker_generate_stream", json=BODY)
            wait_until(lambda: worker.get_queue_length() == 1, timeout=10, what="one relay in flight")
            r = client.post("/worker_generate_stream", json=BODY)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert "controller: 1 requests in flight (limit 1, --max-in-flight)" in r.text
            worker.runner.gate.set()
            assert held.result(timeout=30).status_code == 200
            assert client.app.state.relay.in_flight == 0
            assert client.post("/worker_generate_stream", json=BODY).status_code == 200


# --- 500 requests in flight ----------------------------------------------------------------------------
async def _fire(url: str, n: int, body: dict, timeout: float):
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one():
            try:
                r = await client.post(url + "/worker_generate_stream", json=body)
            except httpx.HTTPError as e:
                return None, {}, repr(e)
            return r.status_code, r.headers, list(protocol.iter_chunks([r.content]))

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.slow
def test_500_requests_in_flight_are_each_answered_or_refused(tmp_path):
    """A controller and one stub worker (4 generating, up to 150 waiting) as processes; 500 requests at
    once through the controller (more than httpx's default pool of 100): each gets its answer or a 429
    with Retry-After, none hangs or gets a 5xx, in well under a minute."""
    env = {"LLAVA_LOGDIR": str(tmp_path / "logs"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cport, wport = free_port(), free_port()
    ctl_url = f"http://127.0.0.1:{cport}"
    t0 = time.monotonic()
    ctl = ServiceProcess.start(
        "controller", "llava.serve.controller", ["--port", str(cport)], ctl_url, tmp_path, env, REPO
    )
    worker_args = [
        "--port",
        str(wport),
        "--controller-address",
        ctl_url,
        "--limit",
        "4",
        "--max-queue",
        "150",
    ]
    worker = ServiceProcess.start(
        "worker",
        "tests.serve.stack",
        [*worker_args, "--delay", "0.02"],
        f"http://127.0.0.1:{wport}",
        tmp_path,
        env,
        REPO,
    )
    with ctl, worker:
        ctl.wait_ready("/list_models", timeout=60)
        worker.wait_ready("/worker_get_status", timeout=60)

        def registered():
            return requests.post(ctl_url + "/list_models", timeout=5).json()["models"] == [STUB_MODEL]

        wait_until(registered, timeout=30, what="the stub worker registered")
        t_fire = time.monotonic()
        results = asyncio.run(_fire(ctl_url, 500, {**BODY, "max_new_tokens": 4}, timeout=45))
        fire_s = time.monotonic() - t_fire
        statuses = [r[0] for r in results]
        failures = [r for r in results if r[0] not in (200, 429)]
        assert not failures, f"{len(failures)} neither answered nor refused, e.g. {failures[:3]}"
        answered = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 429]
        assert all(r[2][-1]["text"] == "P: tok0 tok1 tok2 tok3" for r in answered)
        assert all(1 <= int(r[1]["Retry-After"]) <= protocol.MAX_RETRY_AFTER for r in refused)
        assert all(
            r[2][0]["error_code"] == protocol.OVERLOADED and "--max-queue" in r[2][0]["text"] for r in refused
        )
        assert len(answered) >= 154, statuses.count(200)  # the worker's whole capacity was used
        assert refused, "500 at once against a capacity of 154 must refuse some"
        status = requests.post(worker.url + "/worker_get_status", timeout=5).json()
        assert status["queue_length"] == 0
        print(f"500 in flight: {len(answered)} answered, {len(refused)} refused (429) in {fire_s:.1f}s")
    assert time.monotonic() - t0 < 60


# --- memory after a burst ------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _noise_png_b64(side: int) -> str:
    """A side x side RGB PNG of noise (incompressible: the largest body such an image makes)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_worker_memory_returns_to_idle_after_a_burst_of_large_images(tmp_path, tiny_llava):
    """The real tiny model in a worker process; 8 concurrent requests with a 4-megapixel image each
    (about 15 MB of base64 per body). Freed memory used to stay in glibc's arenas (+262 MB after such
    a burst); the worker now trims it once idle, and must be within 100 MB of its idle figure."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--worker-address", url, "--model-path", str(tiny_llava), "--device", "cpu"]
    args += ["--no-register", "--limit-model-concurrency", "8"]
    image = _noise_png_b64(2000)
    prompt = "A chat. USER: <image>\nWhat is in the picture? ASSISTANT:"
    body = {"prompt": prompt, "images": [image], "max_new_tokens": 4, "temperature": 0.0}
    env = {
        "LLAVA_LOGDIR": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    with ServiceProcess.start("worker", "llava.serve.model_worker", args, url, tmp_path, env, REPO) as w:
        w.wait_ready("/worker_get_status", timeout=180)
        assert post(url, body, timeout=120)[0] == 200  # warm-up: lazy initialisation is part of idle
        time.sleep(1.5)
        idle = _rss_mb(w.popen.pid)
        peak, done = [idle], threading.Event()

        def watch():
            while not done.is_set():
                peak.append(_rss_mb(w.popen.pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                statuses = [r[0] for r in pool.map(lambda _: post(url, body, timeout=180), range(8))]
        finally:
            done.set()
            watcher.join()
        assert statuses == [200] * 8
        time.sleep(2)  # the worker trims 0.5 s after its last request
        after = _rss_mb(w.popen.pid)
        print(f"worker RSS: idle {idle:.0f} MB, peak {max(peak):.0f} MB, 2 s after the burst {after:.0f} MB")
        assert max(peak) - idle > 150, "the burst should have cost memory, else it tests nothing"
        assert after - idle < 100


def test_idle_trim_runs_only_after_the_server_stayed_idle():
    from llava.serve.processes import IdleTrim, release_freed_memory

    trims = []
    busy = {"n": 0}
    trim = IdleTrim(lambda: busy["n"] == 0, delay=0.1, release=lambda: trims.append(time.monotonic()))
    trim.went_idle()
    trim.went_idle()  # a second call while one is pending adds nothing
    time.sleep(0.3)
    assert len(trims) == 1
    busy["n"] = 1  # a request came in before the delay was over: no trim
    trim.went_idle()
    time.sleep(0.3)
    assert len(trims) == 1
    assert release_freed_memory() is (platform.libc_ver()[0] == "glibc")  # the real trim, where there is one
