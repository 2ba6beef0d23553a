"""The shared secret at the controller and the workers, forged registrations, default binds (issue 20, part 1)."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
import requests
from fastapi.testclient import TestClient

from llava.serve import controller as controller_mod
from llava.serve import model_worker as worker_mod
from llava.serve import protocol, trust
from llava.serve.controller import Controller
from llava.serve.processes import ServiceProcess, free_port, wait_until
from tests.serve.stack import REPO, STUB_MODEL, FakeRunner, stub_worker

SECRET = "s3cret-for-the-tests-0123456789"
GOOD = {trust.HEADER: SECRET}
WRONG = {trust.HEADER: "not-the-secret-but-long-enough"}
CONTROLLER_ENDPOINTS = [
    "/register_worker",
    "/refresh_all_workers",
    "/list_models",
    "/get_worker_address",
    "/receive_heart_beat",
    "/worker_generate_stream",
    "/worker_get_status",
]


def _status(models):
    return {"model_names": models, "speed": 1, "queue_length": 0}


@pytest.fixture
def logdir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_LOGDIR", str(tmp_path))
    monkeypatch.delenv(trust.ENV, raising=False)
    return tmp_path


@pytest.fixture
def recorder():
    """An HTTP server that records every request it gets (a forged 'worker' address)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"model_names": ["stolen"], "speed": 1, "queue_length": 0}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def test_controller_answers_401_without_the_secret_on_every_endpoint(logdir):
    ctl = Controller(heart_beat_expiration=30, secret=SECRET)
    with TestClient(controller_mod.create_app(ctl)) as client:
        for path in CONTROLLER_ENDPOINTS:
            for headers in ({}, WRONG):
                r = client.post(
                    path, json={"model": "m", "worker_name": "http://127.0.0.1:9"}, headers=headers
                )
                assert r.status_code == 401, (path, headers, r.text)
                if path == "/worker_generate_stream":  # read like the endpoint's other errors: a chunk
                    assert list(protocol.iter_chunks([r.content])) == [
                        {"text": trust.UNAUTHORIZED, "error_code": protocol.WORKER_ERROR}
                    ]
                else:
                    assert r.json() == {"error": trust.UNAUTHORIZED}
        assert ctl.worker_info == {}
        # With the secret the same calls are served.
        assert client.post("/list_models", headers=GOOD).json() == {"models": []}
        r = client.post("/worker_generate_stream", json={"model": "m"}, headers=GOOD)
        assert r.status_code == 404 and "No worker serves model 'm'" in r.text


def test_forged_registration_is_refused_and_the_address_never_contacted(logdir, recorder):
    url, hits = recorder
    ctl = Controller(heart_beat_expiration=30, secret=SECRET)
    with TestClient(controller_mod.create_app(ctl)) as client:
        # No worker_status: a registration the controller would complete by asking the address.
        forged = {"worker_name": url, "check_heart_beat": True}
        for headers in ({}, WRONG):
            assert client.post("/register_worker", json=forged, headers=headers).status_code == 401
        assert ctl.worker_info == {} and hits == []
        for bad in (
            "file:///etc/passwd",
            "ftp://127.0.0.1/x",
            "http://",
            "127.0.0.1:40000",
            "http://u:p@h:1",
        ):
            r = client.post("/register_worker", json={"worker_name": bad}, headers=GOOD)
            error = r.json()["error"]
            assert r.status_code == 400 and ("http(s) URL" in error or "credentials" in error), bad
        assert ctl.worker_info == {} and hits == []
        # A registration that carries the secret is completed: only now is the address contacted.
        r = client.post("/register_worker", json=forged, headers=GOOD)
        assert r.json() == {"registered": True} and hits == ["/worker_get_status"]
        assert client.post("/list_models", headers=GOOD).json()["models"] == ["stolen"]


def test_controller_contacts_workers_with_the_secret(logdir, monkeypatch):
    seen = []

    def fake_post(url, headers=None, **kw):
        seen.append((url, headers))
        raise requests.exceptions.ConnectionError("down")

    monkeypatch.setattr(controller_mod.requests, "post", fake_post)
    ctl = Controller(heart_beat_expiration=30, secret=SECRET)
    assert ctl.get_worker_status("http://127.0.0.1:9") is None
    assert seen == [("http://127.0.0.1:9/worker_get_status", GOOD)]


def test_worker_answers_401_without_the_secret(logdir):
    worker = stub_worker("http://127.0.0.1:8", secret=SECRET)
    with TestClient(worker_mod.create_app(worker)) as client:
        for path in ("/worker_generate_stream", "/worker_get_status"):
            for headers in ({}, WRONG):
                r = client.post(path, json={"prompt": "x", "max_new_tokens": 1}, headers=headers)
                assert r.status_code == 401 and trust.UNAUTHORIZED in r.text, (path, headers)
        assert worker.runner.prepared == 0 and worker.get_queue_length() == 0
        assert client.post("/worker_get_status", headers=GOOD).json()["model_names"] == [STUB_MODEL]
        r = client.post("/worker_generate_stream", json={"prompt": "x", "max_new_tokens": 2}, headers=GOOD)
        assert list(protocol.iter_chunks([r.content]))[-1]["text"] == "P: tok0 tok1"


def test_worker_registers_and_heartbeats_with_the_secret(logdir, monkeypatch):
    calls = []

    class Answer:
        status_code = 200
        text = ""

        def json(self):
            return {"exist": True}

    def fake_post(url, json=None, headers=None, timeout=None):
        calls.append((url.rsplit("/", 1)[1], headers))
        return Answer()

    monkeypatch.setattr(worker_mod.requests, "post", fake_post)
    worker = stub_worker("http://127.0.0.1:8", "http://127.0.0.1:7", secret=SECRET)
    assert worker.register_to_controller()
    worker.send_heart_beat()
    assert calls == [("register_worker", GOOD), ("receive_heart_beat", GOOD)]


def test_worker_address_must_be_an_http_url(logdir):
    with pytest.raises(ValueError, match="not an http"):
        stub_worker("localhost:40000")


def test_servers_bind_loopback_by_default_and_take_the_secret_flags():
    for parser in (controller_mod.build_parser(), worker_mod.build_parser()):
        args = parser.parse_args([])
        assert args.host == trust.DEFAULT_HOST == "127.0.0.1"
        assert args.secret is None and args.max_body_bytes == trust.DEFAULT_MAX_BODY_BYTES


def test_exposed_controller_warns_without_a_secret_and_never_logs_the_secret(logdir, monkeypatch, caplog):
    started = []
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **kw: started.append(host))
    controller_mod.main(["--host", "0.0.0.0", "--port", "1"])
    assert (
        "the controller listens on 0.0.0.0 without a shared secret" in caplog.text
        and trust.ENV in caplog.text
    )
    caplog.clear()
    controller_mod.main(["--host", "0.0.0.0", "--port", "1", "--secret", SECRET])
    assert "without a shared secret" not in caplog.text and SECRET not in caplog.text
    assert "secret='***'" in caplog.text
    assert started == ["0.0.0.0", "0.0.0.0"]


def test_short_secret_is_refused(logdir, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        controller_mod.main(["--secret", "short"])
    assert "has 5 characters; use at least 16" in capsys.readouterr().err


def test_exposed_worker_warns_without_a_secret(logdir, monkeypatch, caplog):
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: None)
    monkeypatch.setattr(worker_mod, "load_runner", lambda args: _runner_with_template())
    argv = ["--host", "0.0.0.0", "--no-register", "--worker-address", "http://10.0.0.5:40000"]
    worker_mod.main(argv)
    assert "this model worker listens on 0.0.0.0 without a shared secret" in caplog.text
    caplog.clear()
    monkeypatch.setenv(trust.ENV, SECRET)
    worker_mod.main(argv)
    assert "without a shared secret" not in caplog.text and SECRET not in caplog.text


def _runner_with_template():
    runner = FakeRunner()
    runner.conv_template = "llava_v1"
    return runner


@pytest.mark.slow
def test_stack_with_a_secret_registers_heartbeats_and_relays(tmp_path):
    """A controller and a stub worker process holding the secret (passed in the environment by
    llava.serve.processes): the worker registers, stays registered past the heartbeat expiry, and
    requests through the controller are served; without the secret both refuse."""
    env = {"LLAVA_LOGDIR": str(tmp_path / "logs"), "PYTHONPATH": str(REPO)}
    cport, wport = free_port(), free_port()
    ctl_url, w_url = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{wport}"
    with ServiceProcess.start(
        "controller",
        "llava.serve.controller",
        ["--port", str(cport), "--heart-beat-expiration", "2"],
        url=ctl_url,
        log_dir=tmp_path,
        env=env,
        cwd=REPO,
        secret=SECRET,
    ) as ctl:
        ctl.wait_ready("/list_models", timeout=60)
        with ServiceProcess.start(
            "worker",
            "tests.serve.stack",
            ["--port", str(wport), "--controller-address", ctl_url],
            url=w_url,
            log_dir=tmp_path,
            env=env,
            cwd=REPO,
            secret=SECRET,
        ) as worker:
            worker.wait_ready("/worker_get_status", timeout=60)
            cmdline = open(f"/proc/{worker.popen.pid}/cmdline", "rb").read()
            assert SECRET.encode() not in cmdline  # in the environment, not visible in `ps`

            def models():
                return requests.post(ctl_url + "/list_models", headers=GOOD, timeout=5).json()["models"]

            wait_until(lambda: models() == [STUB_MODEL], timeout=30, what="the worker registered")
            time.sleep(3)  # past the 2 s expiry: the heartbeats (with the secret) keep it registered
            assert models() == [STUB_MODEL]
            body = {"model": STUB_MODEL, "prompt": "x", "max_new_tokens": 3}
            r = requests.post(ctl_url + "/worker_generate_stream", json=body, headers=GOOD, timeout=30)
            assert r.status_code == 200
            assert list(protocol.iter_chunks([r.content]))[-1]["text"] == "P: tok0 tok1 tok2"
            for url in (ctl_url, w_url):
                r = requests.post(url + "/worker_generate_stream", json=body, timeout=30)
                assert r.status_code == 401 and trust.UNAUTHORIZED in r.text
            assert "Register failed" not in ctl.log_tail() and "refused registration" not in worker.log_tail()
            _api_relays_with_the_secret(tmp_path, env, ctl_url)


def _api_relays_with_the_secret(tmp_path, env, ctl_url):
    """The OpenAI API server holding the secret answers through the controller; one without it says
    the controller refused it for the secret (502), not that the model is missing."""
    request = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
    for secret in (SECRET, None):
        port = free_port()
        with ServiceProcess.start(
            "api",
            "llava.serve.openai_api_server",
            ["--port", str(port), "--controller-address", ctl_url, "--conv-mode", "llava_v1"],
            url=f"http://127.0.0.1:{port}",
            log_dir=tmp_path,
            env=env,
            cwd=REPO,
            secret=secret,
        ) as api:
            api.wait_ready("/health", method="get", timeout=60)
            r = requests.post(api.url + "/v1/chat/completions", json=request, timeout=30)
            if secret:
                assert r.status_code == 200, r.text
                assert r.json()["object"] == "chat.completion"  # the stub worker answered through both
            else:
                assert r.status_code == 502 and "shared secret" in r.text, r.text
