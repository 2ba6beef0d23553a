"""A model worker: loads one model, registers with the controller, and streams answers.

    python -m llava.serve.model_worker --host 0.0.0.0 --controller-address http://localhost:10000 \\
        --port 40000 --worker-address http://localhost:40000 --model-path liuhaotian/llava-v1.5-7b

Endpoints (POST, as the original): /worker_generate_stream (request fields: prompt, images
[one entry per <image> in the prompt: a base64 image, or a list of base64 frames for a video],
temperature, top_p, top_k, max_new_tokens, repetition_penalty, stop; answer: a NUL-delimited JSON
stream, see llava.serve.protocol) and /worker_get_status. A bad request gets an
error chunk (HTTP 400) and the worker serves the next one. At most --limit-model-concurrency
requests generate at once; the rest wait in line (their number is the reported queue length).
The status also reports `conv_template`, the template this worker serves (--conv-mode, else the one
saved in the checkpoint's config.json, else the name-based guess); the web server and the OpenAI API
render prompts in it, and a request without `stop` stops where its assistant turns end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import uuid
import weakref

import requests
from fastapi import Request

from llava.constants import WORKER_HEART_BEAT_INTERVAL
from llava.serve import protocol
from llava.serve.logs import build_logger
from llava.serve.request_visuals import DEFAULT_MAX_REQUEST_PIXELS, MAX_FRAMES_PER_VIDEO, VisualLimits

INTERVAL_ENV = "LLAVA_WORKER_HEART_BEAT_INTERVAL"


class ModelWorker:
    """Registration, heartbeats and queue accounting around a `ModelRunner`."""

    def __init__(
        self,
        controller_addr: str,
        worker_addr: str,
        runner,
        limit_model_concurrency: int = 5,
        no_register: bool = False,
        heart_beat_interval: float | None = None,
        worker_id: str | None = None,
    ):
        if limit_model_concurrency < 1:
            raise ValueError(f"--limit-model-concurrency must be >= 1, got {limit_model_concurrency}")
        self.controller_addr = controller_addr.rstrip("/")
        self.worker_addr = worker_addr.rstrip("/")
        self.runner = runner
        self.model_name = runner.model_name
        self.limit = limit_model_concurrency
        self.no_register = no_register
        self.interval = float(
            heart_beat_interval or protocol.env_float(INTERVAL_ENV, WORKER_HEART_BEAT_INTERVAL)
        )
        self.worker_id = worker_id or uuid.uuid4().hex[:6]
        self.logger = build_logger("model_worker", f"model_worker_{self.worker_id}.log")
        self._active = 0  # requests admitted and not finished (running or waiting)
        self._count_lock = threading.Lock()
        self._stop = threading.Event()

    # --- queue accounting -----------------------------------------------------------------------
    def enter(self) -> None:
        with self._count_lock:
            self._active += 1

    def leave(self) -> None:
        with self._count_lock:
            self._active -= 1

    def get_queue_length(self) -> int:
        return self._active

    def get_status(self) -> dict:
        status = {"model_names": [self.model_name], "speed": 1, "queue_length": self.get_queue_length()}
        template = getattr(self.runner, "conv_template", None)
        if template:  # added to the original's status: the template the worker serves
            status["conv_template"] = template
        return status

    # --- controller -----------------------------------------------------------------------------
    def register_to_controller(self) -> bool:
        data = {"worker_name": self.worker_addr, "check_heart_beat": True, "worker_status": self.get_status()}
        try:
            r = requests.post(self.controller_addr + "/register_worker", json=data, timeout=5)
        except requests.exceptions.RequestException as e:
            self.logger.error(f"cannot register at {self.controller_addr}: {e}")
            return False
        if r.status_code != 200:
            self.logger.error(f"controller refused registration: HTTP {r.status_code} {r.text[:200]}")
            return False
        self.logger.info(f"registered {self.model_name!r} at {self.controller_addr} as {self.worker_addr}")
        return True

    def send_heart_beat(self) -> None:
        try:
            r = requests.post(
                self.controller_addr + "/receive_heart_beat",
                json={"worker_name": self.worker_addr, "queue_length": self.get_queue_length()},
                timeout=5,
            )
            exist = bool(r.json().get("exist"))
        except (requests.exceptions.RequestException, ValueError, AttributeError) as e:
            self.logger.error(f"heart beat error: {e}")
            return
        if not exist:  # the controller restarted or dropped us: register again
            self.register_to_controller()

    def start_heart_beat(self) -> threading.Thread:
        def loop():
            while not self._stop.wait(self.interval):
                self.send_heart_beat()

        t = threading.Thread(target=loop, name="worker-heartbeat", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    # --- generation -----------------------------------------------------------------------------
    def generate_stream_gate(self, prepared):
        """Protocol chunks (bytes) for a prepared request; never raises."""
        try:
            for chunk in self.runner.stream(prepared):
                yield protocol.encode_chunk(**chunk)
        except Exception as e:  # noqa: BLE001 - any failure becomes an error chunk, the worker lives on
            self.logger.exception("generation failed")
            yield protocol.encode_chunk(f"Generation failed: {type(e).__name__}: {e}", protocol.WORKER_ERROR)


def create_app(worker: ModelWorker):
    """The worker's FastAPI app; registration and heartbeats start with the server."""
    from fastapi import FastAPI
    from fastapi.responses import Response, StreamingResponse
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    from llava.serve.inference import RequestError

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.semaphore = asyncio.Semaphore(worker.limit)
        if not worker.no_register:
            await run_in_threadpool(worker.register_to_controller)
            worker.start_heart_beat()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title=f"LLaVA model worker ({worker.model_name})", lifespan=lifespan)

    def error(msg: str, status: int):
        return Response(protocol.encode_chunk(msg, protocol.WORKER_ERROR), status_code=status)

    @app.post("/worker_generate_stream")
    async def generate_stream(request: Request):
        try:
            params = await request.json()
        except ValueError:
            return error("the request body is not valid JSON", 400)
        worker.enter()
        released = False
        sem: asyncio.Semaphore = request.app.state.semaphore
        try:
            await sem.acquire()
        except BaseException:
            worker.leave()
            raise
        try:
            prepared = await run_in_threadpool(worker.runner.prepare, params)
        except RequestError as e:
            sem.release()
            worker.leave()
            return error(str(e), 400)
        except Exception as e:  # noqa: BLE001
            worker.logger.exception("request preparation failed")
            sem.release()
            worker.leave()
            return error(f"Request failed: {type(e).__name__}: {e}", 500)

        def release():
            nonlocal released
            prepared.cancel.set()
            if not released:
                released = True
                sem.release()
                worker.leave()

        async def body():
            try:
                async for chunk in iterate_in_threadpool(worker.generate_stream_gate(prepared)):
                    yield chunk
            finally:
                release()

        stream = body()
        # Also release if the response is dropped before its body is ever iterated.
        weakref.finalize(stream, release)
        return StreamingResponse(stream, media_type="application/octet-stream")

    @app.post("/worker_get_status")
    async def get_status():
        return worker.get_status()

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LLaVA model worker")
    p.add_argument("--host", type=str, default="localhost")
    p.add_argument("--port", type=int, default=21002)
    p.add_argument("--worker-address", type=str, default="http://localhost:21002")
    p.add_argument("--controller-address", type=str, default="http://localhost:21001")
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--model-name", type=str, default=None)
    p.add_argument("--device", type=str, default="cuda")
    p.add_argument(
        "--multi-modal", action="store_true", help="ignored: multimodality is read from the checkpoint"
    )
    p.add_argument(
        "--conv-mode",
        type=str,
        default=None,
        help="template this worker serves (default: the checkpoint's conv_template, else from its name)",
    )
    p.add_argument("--limit-model-concurrency", type=int, default=5)
    p.add_argument(
        "--stream-interval", type=int, default=1, help="kept for compatibility; every token is streamed"
    )
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--use-flash-attn", action="store_true")
    p.add_argument(
        "--heart-beat-interval",
        type=float,
        default=None,
        help=f"seconds between heartbeats (default ${INTERVAL_ENV} or {WORKER_HEART_BEAT_INTERVAL})",
    )
    p.add_argument(
        "--max-image-pixels", type=int, default=None, help="refuse larger images (default: PIL's limit)"
    )
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=DEFAULT_MAX_REQUEST_PIXELS,
        help="refuse requests whose images and kept video frames hold more pixels together",
    )
    p.add_argument(
        "--max-video-frames",
        type=int,
        default=MAX_FRAMES_PER_VIDEO,
        help="refuse videos sent with more frames (the model keeps its frames_upbound of them)",
    )
    return p


def load_runner(args):
    """Load the model named by the worker's flags into a ModelRunner (with the template it serves)."""
    from llava.conversation import choose_conv_mode
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model
    from llava.serve.images import DEFAULT_MAX_IMAGE_PIXELS
    from llava.serve.inference import ModelRunner

    name = args.model_name or get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        args.model_path,
        args.model_base,
        name,
        args.load_8bit,
        args.load_4bit,
        device=args.device,
        use_flash_attn=args.use_flash_attn,
    )
    has_tower = hasattr(model, "get_vision_tower") and model.get_vision_tower() is not None
    multimodal = has_tower and image_processor is not None
    conv_template = choose_conv_mode(args.conv_mode, model.config, name, multimodal=multimodal)
    max_pixels = args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS
    limits = VisualLimits(
        max_frames=args.max_video_frames,
        max_image_pixels=max_pixels,
        max_request_pixels=args.max_request_pixels,
    )
    return ModelRunner(
        tokenizer,
        model,
        image_processor,
        context_len,
        name,
        max_image_pixels=max_pixels,
        conv_template=conv_template,
        limits=limits,
    )


def main(argv=None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    t0 = time.time()
    runner = load_runner(args)
    worker = ModelWorker(
        args.controller_address,
        args.worker_address,
        runner,
        limit_model_concurrency=args.limit_model_concurrency,
        no_register=args.no_register,
        heart_beat_interval=args.heart_beat_interval,
    )
    worker.logger.info(
        f"args: {args}; model {runner.model_name!r} loaded in {time.time() - t0:.1f}s, "
        f"conversation template {runner.conv_template!r}"
    )
    uvicorn.run(create_app(worker), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
