"""The controller: keeps the list of model workers and tells clients which one to use.

    python -m llava.serve.controller --port 10000 [--dispatch-method shortest_queue|lottery]

Endpoints (all POST, JSON, as the original): /register_worker, /refresh_all_workers, /list_models,
/get_worker_address, /receive_heart_beat, /worker_generate_stream (proxied to a worker as a
NUL-delimited JSON stream), /worker_get_status. Workers that send no heartbeat for
`--heart-beat-expiration` seconds (default 30, or $LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION) are dropped.
Added to the original's answers: /list_models and /worker_get_status also give `conv_templates`,
`{model name: template}` as the workers report it (when any does), so the web server and the API
render prompts in the template each model's worker serves.

With a shared secret (--secret / $LLAVA_SERVE_SECRET) every endpoint answers 401 without it, so only a
holder can register a worker; worker addresses must be http(s) URLs (400 otherwise), and the controller
sends the secret on every call it makes to a worker. Bodies over --max-body-bytes get 413. The relay
(llava.serve.relay) passes a full worker's 429 on, fails over to another worker and drops dead ones.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

import requests
from fastapi import Request

from llava.constants import CONTROLLER_HEART_BEAT_EXPIRATION
from llava.serve import protocol, trust
from llava.serve.logs import build_logger
from llava.serve.relay import DEFAULT_MAX_IN_FLIGHT

EXPIRATION_ENV = "LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION"


class DispatchMethod(Enum):
    LOTTERY = "lottery"
    SHORTEST_QUEUE = "shortest_queue"

    @classmethod
    def from_str(cls, name: str) -> DispatchMethod:
        try:
            return cls(name)
        except ValueError:
            valid = [m.value for m in cls]
            raise ValueError(f"invalid dispatch method {name!r}; valid: {valid}") from None


@dataclass
class WorkerInfo:
    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float
    conv_templates: dict[str, str] = field(default_factory=dict)


def _templates_of(status: dict) -> dict[str, str]:
    """`{model: template}` from a worker's status (`conv_template`) or a controller's (`conv_templates`)."""
    many = status.get("conv_templates")
    if isinstance(many, dict):
        return {str(m): t for m, t in many.items() if isinstance(t, str) and t}
    one = status.get("conv_template")
    return {str(m): one for m in status["model_names"]} if isinstance(one, str) and one else {}


def _valid_status(status) -> bool:
    return (
        isinstance(status, dict)
        and isinstance(status.get("model_names"), list)
        and isinstance(status.get("speed", 1), (int, float))
        and isinstance(status.get("queue_length", 0), (int, float))
    )


class Controller:
    """Worker registry and dispatch. Thread-safe; `start_expiry_thread` drops silent workers."""

    def __init__(
        self,
        dispatch_method: str = "shortest_queue",
        heart_beat_expiration: float | None = None,
        secret: str | None = None,
    ):
        self.dispatch_method = DispatchMethod.from_str(dispatch_method)
        self.secret = secret
        self.heart_beat_expiration = float(
            heart_beat_expiration or protocol.env_float(EXPIRATION_ENV, CONTROLLER_HEART_BEAT_EXPIRATION)
        )
        self.worker_info: dict[str, WorkerInfo] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.logger = build_logger("controller", "controller.log")

    # --- registry -------------------------------------------------------------------------------
    def register_worker(self, worker_name: str, check_heart_beat: bool, worker_status: dict | None) -> bool:
        """Add or update a worker (ValueError for an address that is no http(s) URL)."""
        worker_name = trust.check_worker_url(worker_name)
        if not worker_status:
            worker_status = self.get_worker_status(worker_name)
        if not _valid_status(worker_status):
            self.logger.error(f"Register failed: {worker_name} gave no usable status ({worker_status!r})")
            return False
        with self._lock:
            known = worker_name in self.worker_info
            self.worker_info[worker_name] = WorkerInfo(
                list(worker_status["model_names"]),
                float(worker_status.get("speed", 1)),
                int(worker_status.get("queue_length", 0)),
                bool(check_heart_beat),
                time.time(),
                _templates_of(worker_status),
            )
        self.logger.info(
            f"Register {'an existing' if known else 'a new'} worker: {worker_name}, {worker_status}"
        )
        return True

    def get_worker_status(self, worker_name: str) -> dict | None:
        try:
            r = requests.post(
                worker_name + "/worker_get_status", headers=trust.secret_headers(self.secret), timeout=5
            )
        except requests.exceptions.RequestException as e:
            self.logger.error(f"Get status fails: {worker_name}, {e}")
            return None
        if r.status_code != 200:
            self.logger.error(f"Get status fails: {worker_name}, HTTP {r.status_code}")
            return None
        try:
            return r.json()
        except ValueError:
            return None

    def remove_worker(self, worker_name: str) -> None:
        with self._lock:
            self.worker_info.pop(worker_name, None)

    def drop_worker(self, worker_name: str, reason: str) -> None:
        """Remove a worker that failed a request now, not at its heartbeat expiry (a live one that
        was dropped registers again with its next heartbeat)."""
        with self._lock:
            known = self.worker_info.pop(worker_name, None) is not None
        if known:
            self.logger.warning(f"Drop worker {worker_name} at once: {reason}")

    def refresh_all_workers(self) -> None:
        with self._lock:
            old_info = dict(self.worker_info)
            self.worker_info = {}
        for w_name, w_info in old_info.items():
            if not self.register_worker(w_name, w_info.check_heart_beat, None):
                self.logger.info(f"Remove stale worker: {w_name}")

    def list_models(self) -> list[str]:
        with self._lock:
            names = {m for info in self.worker_info.values() for m in info.model_names}
        return sorted(names)

    def conv_templates(self) -> dict[str, str]:
        """`{model: template}` for the models whose workers report one (the first worker's wins)."""
        out: dict[str, str] = {}
        with self._lock:
            for info in self.worker_info.values():
                for model, template in info.conv_templates.items():
                    out.setdefault(model, template)
        return dict(sorted(out.items()))

    # --- dispatch -------------------------------------------------------------------------------
    def get_worker_address(self, model_name: str, exclude=()) -> str:
        """Address of a worker serving `model_name` (not one in `exclude`), or "" when there is none
        (original contract)."""
        with self._lock:
            cands = [
                (n, i)
                for n, i in self.worker_info.items()
                if model_name in i.model_names and n not in exclude
            ]
            if not cands:
                return ""
            if self.dispatch_method == DispatchMethod.LOTTERY:
                weights = [max(i.speed, 0.0) for _, i in cands]
                if sum(weights) < 1e-4:
                    return ""
                return random.choices([n for n, _ in cands], weights=weights)[0]
            name, info = min(cands, key=lambda c: c[1].queue_length / max(c[1].speed, 1e-4))
            info.queue_length += 1
            self.logger.info(
                f"dispatch {model_name} -> {name} (queues: {[(n, i.queue_length) for n, i in cands]})"
            )
            return name

    def receive_heart_beat(self, worker_name: str, queue_length: int) -> bool:
        with self._lock:
            info = self.worker_info.get(worker_name)
            if info is None:
                self.logger.info(f"Receive unknown heart beat. {worker_name}")
                return False
            info.queue_length = int(queue_length)
            info.last_heart_beat = time.time()
        return True

    def remove_stale_workers_by_expiration(self) -> list[str]:
        expire = time.time() - self.heart_beat_expiration
        with self._lock:
            stale = [
                n for n, i in self.worker_info.items() if i.check_heart_beat and i.last_heart_beat < expire
            ]
            for name in stale:
                del self.worker_info[name]
        for name in stale:
            self.logger.info(f"Drop worker {name}: no heartbeat for {self.heart_beat_expiration:g}s")
        return stale

    def start_expiry_thread(self) -> threading.Thread:
        def loop():
            period = max(0.2, min(self.heart_beat_expiration / 3, 10.0))
            while not self._stop.wait(period):
                self.remove_stale_workers_by_expiration()

        t = threading.Thread(target=loop, name="controller-expiry", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    # --- acting as a worker (hierarchical controllers) --------------------------------------------
    def worker_api_get_status(self) -> dict:
        model_names, speed, queue_length, templates = set(), 0.0, 0, {}
        with self._lock:
            names = list(self.worker_info)
        for w_name in names:
            status = self.get_worker_status(w_name)
            if _valid_status(status):
                model_names.update(status["model_names"])
                speed += status.get("speed", 1)
                queue_length += status.get("queue_length", 0)
                for model, template in _templates_of(status).items():
                    templates.setdefault(model, template)
        out = {"model_names": sorted(model_names), "speed": speed, "queue_length": queue_length}
        if templates:
            out["conv_templates"] = dict(sorted(templates.items()))
        return out


def create_app(
    controller: Controller,
    max_body_bytes: int = trust.DEFAULT_MAX_BODY_BYTES,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
):
    """The controller's FastAPI app (the expiry thread runs while the app is served)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from llava.serve.relay import Relay, make_client

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.http = make_client(max_in_flight)
        app.state.relay = Relay(controller, app.state.http, max_in_flight)
        controller.start_expiry_thread()
        try:
            yield
        finally:
            controller.stop()
            await app.state.http.aclose()

    app = FastAPI(title="LLaVA controller", lifespan=lifespan)
    app.add_middleware(trust.SecretGuard, secret=controller.secret)

    async def body(request: Request) -> dict:
        """The JSON object of a request ({} when it is none); BodyError when too large or not JSON."""
        _, data = await trust.read_json(request, max_body_bytes)
        return data if isinstance(data, dict) else {}

    def bad(msg: str, status: int = 400):
        return JSONResponse({"error": msg}, status_code=status)

    @app.exception_handler(trust.BodyError)
    async def body_error(request: Request, exc: trust.BodyError):
        if request.url.path == "/worker_generate_stream":
            return Response(protocol.encode_chunk(str(exc), protocol.WORKER_ERROR), status_code=exc.status)
        return bad(str(exc), exc.status)

    @app.post("/register_worker")
    async def register_worker(request: Request):
        data = await body(request)
        if not isinstance(data.get("worker_name"), str):
            return bad("register_worker needs 'worker_name' (the worker's http address)")
        try:
            ok = await run_in_threadpool(
                controller.register_worker,
                data["worker_name"],
                bool(data.get("check_heart_beat", True)),
                data.get("worker_status"),
            )
        except ValueError as e:
            return bad(str(e))
        return {"registered": ok}

    @app.post("/refresh_all_workers")
    def refresh_all_workers():
        controller.refresh_all_workers()
        return {"models": controller.list_models()}

    @app.post("/list_models")
    def list_models():
        templates = controller.conv_templates()
        return {"models": controller.list_models(), **({"conv_templates": templates} if templates else {})}

    @app.post("/get_worker_address")
    async def get_worker_address(request: Request):
        data = await body(request)
        return {"address": controller.get_worker_address(str(data.get("model", "")))}

    @app.post("/receive_heart_beat")
    async def receive_heart_beat(request: Request):
        data = await body(request)
        queue_length = data.get("queue_length", 0) or 0
        if not isinstance(data.get("worker_name"), str) or not isinstance(queue_length, (int, float)):
            return bad("receive_heart_beat needs 'worker_name' (a string) and 'queue_length' (a number)")
        exist = controller.receive_heart_beat(data["worker_name"], int(queue_length))
        return {"exist": exist}

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request):
        raw, params = await trust.read_json(request, max_body_bytes)
        model = params.get("model") if isinstance(params, dict) else None
        return await request.app.state.relay(model, raw)

    @app.post("/worker_get_status")
    def worker_get_status():
        return controller.worker_api_get_status()

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LLaVA serving controller")
    trust.add_host_flag(p)
    p.add_argument("--port", type=int, default=21001)
    p.add_argument(
        "--dispatch-method", type=str, choices=["lottery", "shortest_queue"], default="shortest_queue"
    )
    p.add_argument(
        "--heart-beat-expiration",
        type=float,
        default=None,
        help=f"drop a worker after this many seconds without a heartbeat (default ${EXPIRATION_ENV} or "
        f"{CONTROLLER_HEART_BEAT_EXPIRATION})",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help="generation requests relayed at once; more are refused with HTTP 429",
    )
    trust.add_body_limit_flag(p)
    trust.add_secret_flag(p)
    return p


def main(argv=None) -> None:
    import uvicorn

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        secret = trust.resolve_secret(args.secret)
    except ValueError as e:
        parser.error(str(e))
    controller = Controller(args.dispatch_method, args.heart_beat_expiration, secret=secret)
    controller.logger.info(f"args: {trust.redacted(args)}")
    warning = trust.exposure_warning(args.host, secret, "the controller")
    if warning:
        controller.logger.warning(warning)
    app = create_app(controller, args.max_body_bytes, args.max_in_flight)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
