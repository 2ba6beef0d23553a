"""Constants, the tiny-checkpoint builder and stub workers shared by the serving tests (fixtures: conftest.py).

A stub worker is the real worker HTTP layer (llava.serve.model_worker: queue, limits, secret,
registration) around `FakeRunner` instead of a model, so load and failover tests start in seconds:
in this process (`serving(app)`, a uvicorn server on a thread) or as its own process, to be killed:

    python -m tests.serve.stack --port P [--controller-address URL] [--delay S] [--limit N] [--max-queue N]
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WATERVIEW = REPO / "llava" / "serve" / "examples" / "waterview.jpg"
MODEL_A = "llava-v1.5-tiny"
MODEL_B = "llava-v1.5-tiny-b"
API_KEY = "sk-test-serve-123"
EXPIRATION = 3.0  # seconds without heartbeat before the controller drops a worker (default 30)
STUB_MODEL = "fake-llava"


def build_tiny_llava_checkpoint(kit, out: Path, seed: int = 0, image_aspect_ratio: str = "pad") -> Path:
    """A tiny LLaVA-1.5-style checkpoint folder (LLaMA LM + CLIP tower + 2-layer MLP projector)."""
    from llava.testing.tiny import save_tiny_llava

    return save_tiny_llava(kit, out, image_aspect_ratio=image_aspect_ratio, seed=seed)


class _Prepared:
    def __init__(self, n):
        self.n = n
        self.cancel = threading.Event()


class FakeRunner:
    """Deterministic stand-in for ModelRunner: answers 'P: tok0 tok1 ...' (`max_new_tokens` words,
    `delay` seconds each) and records how many requests it prepared and ran at once. Prompts "bad"
    and "crash" fail in prepare; max_new_tokens 99 fails mid-answer."""

    def __init__(self, model_name: str = STUB_MODEL, delay: float = 0.01):
        self.model_name, self.delay = model_name, delay
        self.running = 0
        self.max_running = 0
        self.prepared = 0
        self.lock = threading.Lock()

    def prepare(self, params):
        from llava.serve.inference import RequestError

        self.prepared += 1
        if params.get("prompt") == "bad":
            raise RequestError("bad prompt, says the fake")
        if params.get("prompt") == "crash":
            raise RuntimeError("boom in prepare")
        return _Prepared(int(params.get("max_new_tokens", 3)))

    def stream(self, prep):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            text = "P:"
            for i in range(prep.n):
                time.sleep(self.delay)
                if prep.cancel.is_set():
                    return
                text += f" tok{i}"
                yield {"text": text, "error_code": 0}
            if prep.n == 99:
                raise RuntimeError("model exploded")
        finally:
            with self.lock:
                self.running -= 1


@contextlib.contextmanager
def serving(app):
    """Serve an ASGI app on a free loopback port from a thread; yields (url, uvicorn server)."""
    import uvicorn

    from llava.serve.processes import free_port, wait_until

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, what=f"test server on port {port}")
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def stub_worker(url: str, controller: str | None = None, limit: int = 2, max_queue: int = 4, **kw):
    """A ModelWorker around a FakeRunner at `url` (registers with `controller` when given)."""
    from llava.serve.model_worker import ModelWorker

    delay = kw.pop("delay", 0.01)
    return ModelWorker(
        controller or "http://127.0.0.1:9",
        url,
        FakeRunner(kw.pop("model_name", STUB_MODEL), delay),
        limit_model_concurrency=limit,
        no_register=controller is None,
        max_queue=max_queue,
        **kw,
    )


def main(argv=None) -> None:
    """Run a stub worker process (its secret, if any, from $LLAVA_SERVE_SECRET)."""
    import uvicorn

    from llava.serve.model_worker import create_app
    from llava.serve.trust import resolve_secret

    p = argparse.ArgumentParser(description="stub LLaVA worker for tests")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--controller-address", default=None)
    p.add_argument("--delay", type=float, default=0.01)
    p.add_argument("--limit", type=int, default=2)
    p.add_argument("--max-queue", type=int, default=4)
    p.add_argument("--heart-beat-interval", type=float, default=0.5)
    args = p.parse_args(argv)
    url = f"http://127.0.0.1:{args.port}"
    worker = stub_worker(
        url,
        args.controller_address,
        args.limit,
        args.max_queue,
        delay=args.delay,
        secret=resolve_secret(None),
        heart_beat_interval=args.heart_beat_interval,
    )
    uvicorn.run(create_app(worker), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
