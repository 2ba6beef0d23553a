"""Failover at the controller's relay: retried once on another worker, dead workers dropped at once (issue 20, part 4)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import requests
from fastapi.testclient import TestClient

from llava.serve import controller as controller_mod
from llava.serve import model_worker as worker_mod
from llava.serve import protocol, trust
from llava.serve.controller import Controller
from llava.serve.processes import ServiceProcess, free_port, wait_until
from tests.serve.stack import REPO, STUB_MODEL, FakeRunner, serving, stub_worker

BODY = {"model": STUB_MODEL, "prompt": "x", "max_new_tokens": 3}


class CrashingRunner(FakeRunner):
    def prepare(self, params):
        self.prepared += 1
        raise RuntimeError("the accelerator fell off")


@pytest.fixture(autouse=True)
def logdir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    monkeypatch.delenv(trust.ENV, raising=False)


def _register(client, url, queue=0):
    status = {"model_names": [STUB_MODEL], "speed": 1, "queue_length": queue}
    r = client.post(
        "/register_worker", json={"worker_name": url, "check_heart_beat": True, "worker_status": status}
    )
    assert r.json() == {"registered": True}


def _final(response) -> dict:
    return list(protocol.iter_chunks([response.content]))[-1]


def test_unreachable_worker_is_dropped_at_once_and_the_request_retried():
    live = stub_worker("http://127.0.0.1:8")
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    ctl = Controller(heart_beat_expiration=300)
    with (
        serving(worker_mod.create_app(live)) as (url, _),
        TestClient(controller_mod.create_app(ctl)) as client,
    ):
        _register(client, dead, queue=0)  # chosen first
        _register(client, url, queue=5)
        r = client.post("/worker_generate_stream", json=BODY)
        assert r.status_code == 200 and _final(r)["text"] == "P: tok0 tok1 tok2"
        assert list(ctl.worker_info) == [url]  # dropped now, not after the 300 s expiry
        assert client.post("/worker_generate_stream", json=BODY).status_code == 200


def test_only_one_retry_and_a_clear_502_when_no_worker_answers():
    ctl = Controller(heart_beat_expiration=300)
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    with TestClient(controller_mod.create_app(ctl)) as client:
        for i, addr in enumerate(dead):
            _register(client, addr, queue=i)
        r = client.post("/worker_generate_stream", json=BODY)
        [chunk] = list(protocol.iter_chunks([r.content]))
        assert r.status_code == 502 and chunk["error_code"] == protocol.WORKER_UNREACHABLE
        assert f"{dead[0]}, {dead[1]}" in chunk["text"] and "ConnectError" in chunk["text"]
        assert list(ctl.worker_info) == [dead[2]]  # the two tried were dropped, the third never tried


def test_5xx_before_the_first_chunk_is_retried_once_and_the_worker_kept():
    broken, healthy = stub_worker("http://127.0.0.1:8"), stub_worker("http://127.0.0.1:7")
    broken.runner = CrashingRunner()
    ctl = Controller(heart_beat_expiration=300)
    with (
        serving(worker_mod.create_app(broken)) as (u_broken, _),
        serving(worker_mod.create_app(healthy)) as (u_healthy, _),
        TestClient(controller_mod.create_app(ctl)) as client,
    ):
        _register(client, u_broken, queue=0)
        _register(client, u_healthy, queue=5)
        r = client.post("/worker_generate_stream", json=BODY)
        assert r.status_code == 200 and _final(r)["text"] == "P: tok0 tok1 tok2"
        assert broken.runner.prepared == 1 and healthy.runner.prepared == 1
        assert sorted(ctl.worker_info) == sorted([u_broken, u_healthy])  # it answered: not dead
        # With the healthy worker gone, the broken one's own error comes back (not "unreachable").
        ctl.remove_worker(u_healthy)
        r = client.post("/worker_generate_stream", json=BODY)
        assert r.status_code == 500 and "the accelerator fell off" in _final(r)["text"]


async def _one(client: httpx.AsyncClient, url: str, body: dict):
    """(status, started streaming, chunks, transport error) of one streamed request."""
    chunks: list[dict] = []
    try:
        async with client.stream("POST", url + "/worker_generate_stream", json=body) as r:
            async for chunk in protocol.aiter_chunks(r.aiter_raw()):
                chunks.append(chunk)
            status = r.status_code
    except httpx.HTTPError as e:
        return None, bool(chunks), chunks, repr(e)
    started = bool(chunks) and chunks[0]["error_code"] == protocol.OK
    return status, started, chunks, None


async def _load_and_kill(ctl_url: str, victim: ServiceProcess, n: int, body: dict):
    """n requests at once through the controller; SIGKILL `victim` once it has requests waiting."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def kill_when_queued():
            def queue():
                return requests.post(victim.url + "/worker_get_status", timeout=5).json()["queue_length"]

            await asyncio.to_thread(wait_until, lambda: queue() >= 6, 20, 0.02, "the victim to hold a queue")
            waiting = await asyncio.to_thread(queue)
            await asyncio.to_thread(victim.kill)
            return waiting, time.monotonic()

        killer = asyncio.create_task(kill_when_queued())
        results = await asyncio.gather(*(_one(client, ctl_url, body) for _ in range(n)))
        return results, *(await killer)


@pytest.mark.slow
def test_killing_a_worker_under_load_fails_no_request_that_had_not_started(tmp_path):
    env = {"LLAVA_LOGDIR": str(tmp_path / "logs"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cport = free_port()
    ctl_url = f"http://127.0.0.1:{cport}"
    procs = [
        ServiceProcess.start(
            "controller",
            "llava.serve.controller",
            ["--port", str(cport), "--heart-beat-expiration", "60"],  # expiry cannot explain a drop
            ctl_url,
            tmp_path,
            env,
            REPO,
        )
    ]
    try:
        procs[0].wait_ready("/list_models", timeout=60)
        for name in ("worker-a", "worker-b"):
            port = free_port()
            args = [
                "--port",
                str(port),
                "--controller-address",
                ctl_url,
                "--limit",
                "2",
                "--max-queue",
                "100",
            ]
            w = ServiceProcess.start(
                name,
                "tests.serve.stack",
                [*args, "--delay", "0.01"],
                f"http://127.0.0.1:{port}",
                tmp_path,
                env,
                REPO,
            )
            procs.append(w)
        ctl, live, victim = procs
        for w in (live, victim):
            w.wait_ready("/worker_get_status", timeout=60)

        def addresses():
            return {
                requests.post(ctl_url + "/get_worker_address", json={"model": STUB_MODEL}, timeout=5).json()[
                    "address"
                ]
                for _ in range(4)
            }

        wait_until(lambda: addresses() == {live.url, victim.url}, timeout=30, what="both workers registered")
        body = {**BODY, "max_new_tokens": 20}  # 0.2 s per answer, 2 at a time per worker
        results, waiting_at_kill, killed_at = asyncio.run(_load_and_kill(ctl_url, victim, 60, body))
        assert waiting_at_kill >= 6  # it died holding requests that had not started

        not_started_failed = [r for r in results if not r[1] and (r[0] != 200 or r[2][-1]["error_code"] != 0)]
        assert not not_started_failed, (
            f"{len(not_started_failed)} failed before streaming: {not_started_failed[:3]}"
        )
        complete = "P: " + " ".join(f"tok{i}" for i in range(20))
        ok = [r for r in results if r[0] == 200 and r[2][-1]["error_code"] == 0]
        broken = [r for r in results if r not in ok]
        assert all(r[2][-1]["text"] == complete for r in ok)
        # Only answers already streaming from the victim may break, each with a closing chunk.
        assert all(r[1] and r[2][-1]["error_code"] == protocol.WORKER_UNREACHABLE for r in broken)
        assert len(broken) <= 2, "at most the victim's 2 generating requests"
        # Dropped at once: well before the 60 s heartbeat expiry.
        assert addresses() == {live.url} and time.monotonic() - killed_at < 30
        assert f"Drop worker {victim.url} at once" in ctl.log_tail(20000)
        r = requests.post(ctl_url + "/worker_generate_stream", json=BODY, timeout=30)
        assert r.status_code == 200 and _final(r)["text"] == "P: tok0 tok1 tok2"
        print(
            f"kill under load: {len(ok)} answered, {len(broken)} broken mid-answer, {waiting_at_kill} queued at the kill"
        )
    finally:
        for p in reversed(procs):
            p.stop()
