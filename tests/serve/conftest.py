"""Fixtures for the serving tests: tiny LLaVA checkpoints and one local serving stack per session.

The stack is real processes on 127.0.0.1 (random free ports): a controller with a short heartbeat
expiry, three model workers (two serve the same model, one another model), the OpenAI-compatible
API (with an API key) and the Gradio web server. Each runs under tests/serve/netguard.py, which
refuses and records any attempt to reach outside the machine. All are killed at teardown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from llava.serve.processes import ServiceProcess, free_port
from tests.serve.stack import API_KEY, EXPIRATION, MODEL_A, MODEL_B, REPO, build_tiny_llava_checkpoint


@pytest.fixture(scope="session")
def tiny_llava(tiny_kit, tmp_path_factory) -> Path:
    return build_tiny_llava_checkpoint(tiny_kit, tmp_path_factory.mktemp("serve-models") / MODEL_A)


@pytest.fixture(scope="session")
def tiny_llava_b(tiny_kit, tiny_llava) -> Path:
    return build_tiny_llava_checkpoint(tiny_kit, tiny_llava.parent / MODEL_B, seed=1)


def child_env(tmp: Path) -> dict:
    return {
        "LLAVA_LOGDIR": str(tmp / "logs"),
        "NETGUARD_LOG": str(tmp / "netguard.log"),
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "NO_PROXY": "*",
    }


@dataclass
class Stack:
    tmp: Path
    controller: ServiceProcess
    workers: dict[str, ServiceProcess]
    api: ServiceProcess
    web: ServiceProcess
    model_a: Path

    @property
    def netguard_log(self) -> Path:
        return self.tmp / "netguard.log"


def _start(tmp: Path, name: str, module: str, args: list[str], port: int) -> ServiceProcess:
    return ServiceProcess.start(
        name,
        "tests.serve.netguard",
        [module, *args],
        url=f"http://127.0.0.1:{port}",
        log_dir=tmp / "logs",
        env=child_env(tmp),
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_llava, tiny_llava_b):
    tmp = tmp_path_factory.mktemp("serve-stack")
    procs: list[ServiceProcess] = []
    try:
        cport = free_port()
        ctl_url = f"http://127.0.0.1:{cport}"
        controller = _start(
            tmp,
            "controller",
            "llava.serve.controller",
            ["--host", "127.0.0.1", "--port", str(cport), "--heart-beat-expiration", str(EXPIRATION)],
            cport,
        )
        procs.append(controller)
        controller.wait_ready("/list_models", timeout=60)
        workers = {}
        for name, path, limit in (
            ("worker-a", tiny_llava, 2),
            ("worker-b", tiny_llava, 5),
            ("worker-c", tiny_llava_b, 5),
        ):
            port = free_port()
            # worker-a and worker-b serve the same model name; worker-c serves another model.
            w = _start(
                tmp,
                name,
                "llava.serve.model_worker",
                [
                    "--host", "127.0.0.1", "--port", str(port),
                    "--worker-address", f"http://127.0.0.1:{port}",
                    "--controller-address", ctl_url,
                    "--model-path", str(path), "--device", "cpu",
                    "--limit-model-concurrency", str(limit), "--max-queue", "64",
                    "--heart-beat-interval", "0.5",
                ],
                port,
            )  # fmt: skip
            procs.append(w)
            workers[name] = w
        aport, wport = free_port(), free_port()
        api = _start(
            tmp,
            "api",
            "llava.serve.openai_api_server",
            [
                "--host",
                "127.0.0.1",
                "--port",
                str(aport),
                "--controller-address",
                ctl_url,
                "--api-keys",
                API_KEY,
            ],
            aport,
        )
        procs.append(api)
        web = _start(
            tmp,
            "web",
            "llava.serve.gradio_web_server",
            [
                "--host",
                "127.0.0.1",
                "--port",
                str(wport),
                "--controller-url",
                ctl_url,
                "--model-list-mode",
                "reload",
            ],
            wport,
        )
        procs.append(web)
        for w in workers.values():
            w.wait_ready("/worker_get_status", timeout=180)
        api.wait_ready("/health", method="get", timeout=60)
        web.wait_ready("/", method="get", timeout=120)
        yield Stack(tmp, controller, workers, api, web, tiny_llava)
    finally:
        for p in reversed(procs):
            p.stop()
    guard_log = tmp / "netguard.log"
    if guard_log.exists() and guard_log.read_text():
        pytest.fail(f"a serving process tried to reach outside the machine:\n{guard_log.read_text()}")
