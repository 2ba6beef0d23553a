"""Controller registry/dispatch/expiry and the worker's HTTP layer, in-process (no model)."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from llava.serve import protocol
from llava.serve.controller import Controller, create_app
from llava.serve.model_worker import ModelWorker
from llava.serve.model_worker import create_app as create_worker_app
from tests.serve.stack import FakeRunner


def _status(models, queue=0, speed=1):
    return {"model_names": models, "speed": speed, "queue_length": queue}


@pytest.fixture
def controller(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    return Controller("shortest_queue", heart_beat_expiration=30)


def test_register_list_and_shortest_queue_dispatch(controller):
    assert controller.register_worker("http://w1", True, _status(["m-a"], queue=3))
    assert controller.register_worker("http://w2", True, _status(["m-a", "m-b"], queue=1))
    assert controller.list_models() == ["m-a", "m-b"]
    assert controller.get_worker_address("m-b") == "http://w2"
    # w2 has queue 1 -> 2 after the dispatch above; w1 has 3: w2 again, then tie-break by queue.
    assert controller.get_worker_address("m-a") == "http://w2"
    assert controller.worker_info["http://w2"].queue_length == 3
    assert controller.get_worker_address("nope") == ""


def test_lottery_picks_by_speed(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    c = Controller("lottery", heart_beat_expiration=30)
    c.register_worker("http://fast", True, _status(["m"], speed=1))
    c.register_worker("http://stopped", True, _status(["m"], speed=0))
    assert {c.get_worker_address("m") for _ in range(50)} == {"http://fast"}


def test_invalid_dispatch_method_lists_valid_ones():
    with pytest.raises(ValueError, match="shortest_queue"):
        Controller("round_robin")


def test_heartbeat_expiry_drops_silent_workers_only(controller):
    controller.heart_beat_expiration = 0.5
    controller.register_worker("http://alive", True, _status(["m"]))
    controller.register_worker("http://silent", True, _status(["m"]))
    controller.register_worker("http://unchecked", False, _status(["m"]))
    time.sleep(0.3)
    assert controller.receive_heart_beat("http://alive", 2)
    time.sleep(0.3)
    assert controller.remove_stale_workers_by_expiration() == ["http://silent"]
    assert sorted(controller.worker_info) == ["http://alive", "http://unchecked"]
    assert not controller.receive_heart_beat("http://silent", 0)  # tells the worker to register again


def test_expiry_interval_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    monkeypatch.setenv("LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION", "2.5")
    assert Controller().heart_beat_expiration == 2.5
    monkeypatch.setenv("LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION", "soon")
    with pytest.raises(ValueError, match="LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION"):
        Controller()


def test_controller_http_endpoints(controller):
    with TestClient(create_app(controller)) as client:
        r = client.post(
            "/register_worker",
            json={
                "worker_name": "http://127.0.0.1:9",
                "check_heart_beat": True,
                "worker_status": _status(["m-a"]),
            },
        )
        assert r.status_code == 200 and r.json()["registered"] is True
        assert client.post("/list_models").json() == {"models": ["m-a"]}
        assert client.post("/get_worker_address", json={"model": "m-a"}).json() == {
            "address": "http://127.0.0.1:9"
        }
        assert client.post(
            "/receive_heart_beat", json={"worker_name": "http://x", "queue_length": 0}
        ).json() == {"exist": False}
        assert client.post("/register_worker", content=b"{broken").status_code == 400

        # Unknown model: one error chunk naming the model and the available ones, then the stream ends.
        r = client.post("/worker_generate_stream", json={"model": "ghost", "prompt": "hi"})
        chunks = list(protocol.iter_chunks([r.content]))
        assert r.status_code == 404 and len(chunks) == 1
        assert chunks[0]["error_code"] == protocol.NO_WORKER
        assert "'ghost'" in chunks[0]["text"] and "m-a" in chunks[0]["text"]

        # Known model, dead worker (port 9 is closed): error code 3, controller keeps serving.
        r = client.post("/worker_generate_stream", json={"model": "m-a", "prompt": "hi"})
        chunks = list(protocol.iter_chunks([r.content]))
        assert r.status_code == 502 and chunks[0]["error_code"] == protocol.WORKER_UNREACHABLE
        # refresh asks every worker for its status; the dead one is removed.
        assert client.post("/refresh_all_workers").json() == {"models": []}


def test_worker_http_layer_limits_concurrency_and_survives_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    runner = FakeRunner()
    worker = ModelWorker(
        "http://127.0.0.1:9", "http://127.0.0.1:8", runner, limit_model_concurrency=2, no_register=True
    )
    with TestClient(create_worker_app(worker)) as client:
        assert client.post("/worker_get_status").json() == {
            "model_names": ["fake-llava"],
            "speed": 1,
            "queue_length": 0,
        }

        def one(i):
            r = client.post("/worker_generate_stream", json={"prompt": "x", "max_new_tokens": 5})
            return list(protocol.iter_chunks([r.content]))

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert all(res[-1]["text"] == "P: tok0 tok1 tok2 tok3 tok4" for res in results)
        assert runner.max_running <= 2
        assert worker.get_queue_length() == 0

        r = client.post("/worker_generate_stream", json={"prompt": "bad"})
        assert r.status_code == 400
        assert list(protocol.iter_chunks([r.content])) == [
            {"text": "bad prompt, says the fake", "error_code": 1}
        ]
        r = client.post("/worker_generate_stream", json={"prompt": "crash"})
        assert r.status_code == 500 and "boom in prepare" in r.text
        r = client.post("/worker_generate_stream", content=b"not json")
        assert r.status_code == 400 and "not valid JSON" in r.text
        r = client.post("/worker_generate_stream", json={"prompt": "x", "max_new_tokens": 99})
        last = list(protocol.iter_chunks([r.content]))[-1]
        assert last["error_code"] == 1 and "model exploded" in last["text"]
        # Every slot was given back: the next request is served.
        assert worker.get_queue_length() == 0
        r = client.post("/worker_generate_stream", json={"prompt": "x", "max_new_tokens": 1})
        assert list(protocol.iter_chunks([r.content]))[-1]["text"] == "P: tok0"
